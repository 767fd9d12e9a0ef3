"""Checkpoints and exact resume: SIGTERM and kill -9 mid-run, crashes mid-checkpoint, pruning,
checkpoints that do not fit, and the weights loader used by export / eval.

Exactness: single process, fp32, CPU; losses read from metrics.jsonl (logged every step) must be
bitwise equal to an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from jepa import checkpoint
from jepa.checkpoint import complete_checkpoints, load_model_weights, newest_checkpoint
from jepa.engine import Engine
from jepa.monitor import read_metrics
from jepa.train import train

# Schedules span 2000 steps (5 of warm-up), so a long subprocess run is stopped by the test, not by its end.
LONG = ("optim.epochs=20", "optim.warmup_epochs=0.05")
REFERENCE_STEPS = 16


@pytest.fixture(scope="module")
def reference_losses(tmp_path_factory, toy_recipe_at) -> list[float]:
    """Losses of an uninterrupted run, steps 1..REFERENCE_STEPS."""
    result = train(toy_recipe_at(tmp_path_factory.mktemp("ref") / "run", *LONG, f"max_steps={REFERENCE_STEPS}"))
    records = read_metrics(result.run_dir)
    assert [r["step"] for r in records] == list(range(1, REFERENCE_STEPS + 1))
    return [r["loss"] for r in records]


def _losses(run_dir: Path) -> list[float]:
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, len(records) + 1)), "metrics.jsonl has gaps or repeats"
    return [r["loss"] for r in records]


def _start(recipe_file: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jepa.cli", "train", str(recipe_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(proc: subprocess.Popen, condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"training exited (rc {proc.returncode}) before {what}:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_sigterm_checkpoints_and_resume_is_bitwise_exact(toy_recipe_file, toy_recipe_at, reference_losses):
    recipe_file = toy_recipe_file("run", *LONG, "max_steps=1000")
    run_dir = recipe_file.parent / "run"
    proc = _start(recipe_file)
    _wait_for(proc, lambda: len(read_metrics(run_dir)) >= 3, "step 3")
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output[-3000:]
    assert "preempted (SIGTERM): checkpoint saved at step" in output
    [(k, path)] = complete_checkpoints(run_dir)  # only the preemption checkpoint (every_steps is 1000)
    assert 3 <= k <= REFERENCE_STEPS - 3, k
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == path.name

    result = train(toy_recipe_at(run_dir, *LONG, f"max_steps={k + 3}"), resume="auto")
    assert result.step == k + 3
    assert _losses(run_dir) == reference_losses[: k + 3]  # bitwise, before and after the interruption


def test_kill9_resume_ignores_partial_checkpoints_and_is_bitwise_exact(toy_recipe_file, toy_recipe_at, reference_losses):
    recipe_file = toy_recipe_file("run", *LONG, "max_steps=1000", "checkpoint.every_steps=3", "checkpoint.keep_last=10")
    run_dir = recipe_file.parent / "run"
    proc = _start(recipe_file)
    _wait_for(proc, lambda: newest_checkpoint(run_dir) is not None and len(read_metrics(run_dir)) >= 5,
              "a checkpoint and two more steps")
    proc.kill()
    proc.communicate(timeout=60)
    k = complete_checkpoints(run_dir)[-1][0]
    assert k % 3 == 0 and k + 3 <= REFERENCE_STEPS, k
    assert len(read_metrics(run_dir)) > k  # steps after the checkpoint that the resumed run must redo
    # a save that crashed mid-write, at a later step: must be ignored, then cleaned up
    partial = run_dir / "checkpoints" / "step_000999.tmp"
    (partial / "deepspeed").mkdir(parents=True)
    (partial / "models.pt").write_bytes(b"truncated")

    result = train(toy_recipe_at(run_dir, *LONG, f"max_steps={k + 3}", "checkpoint.every_steps=3",
                                 "checkpoint.keep_last=10"), resume="auto")
    assert result.step == k + 3
    assert _losses(run_dir) == reference_losses[: k + 3]
    assert not partial.exists(), "the next save removes leftovers of crashed saves"


def test_crash_mid_checkpoint_keeps_the_previous_one(toy_recipe, reference_losses, monkeypatch):
    saves = {"n": 0}
    original = Engine.full_state_dicts

    def crash_on_second_save(self):
        saves["n"] += 1
        if saves["n"] == 2:
            raise RuntimeError("simulated crash while writing a checkpoint")
        return original(self)

    monkeypatch.setattr(Engine, "full_state_dicts", crash_on_second_save)
    recipe = toy_recipe("run", *LONG, "max_steps=6", "checkpoint.every_steps=2")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(recipe)
    ckpts = recipe.resolved_run_dir / "checkpoints"
    assert (ckpts / "step_000004.tmp").is_dir() and not (ckpts / "step_000004").exists()
    assert (ckpts / "latest").read_text().strip() == "step_000002"
    assert newest_checkpoint(recipe.resolved_run_dir).name == "step_000002"

    monkeypatch.setattr(Engine, "full_state_dicts", original)
    assert train(recipe, resume="auto").step == 6
    assert _losses(recipe.resolved_run_dir) == reference_losses[:6]


def test_keep_last_latest_pointer_and_checkpoint_contents(toy_recipe):
    recipe = toy_recipe("run", "max_steps=5", "checkpoint.every_steps=1", "checkpoint.keep_last=2")
    train(recipe)
    root = recipe.resolved_run_dir / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000004", "step_000005"]
    assert (root / "latest").read_text() == "step_000005\n"
    step5 = root / "step_000005"
    assert {p.name for p in step5.iterdir()} == {"models.pt", "meta.json", "rank_00000.pt", "deepspeed", "digests.json"}
    digests = json.loads((step5 / "digests.json").read_text())
    assert digests["algorithm"] == "sha256" and {"models.pt", "meta.json", "rank_00000.pt"} <= set(digests["files"])
    assert checkpoint.verify_checkpoint(step5) == []
    models = torch.load(step5 / "models.pt", weights_only=True)
    assert set(models) == {"format_version", "encoder", "predictor", "target_encoder", "step", "recipe"}
    assert models["format_version"] == 1 and models["step"] == 5 and models["recipe"]["modality"]["name"] == "toy"
    assert all(v.dtype == torch.float32 for part in ("encoder", "predictor", "target_encoder") for v in models[part].values())
    meta = json.loads((step5 / "meta.json").read_text())
    assert meta == {"format_version": 1, "step": 5, "world_size": 1, "micro_batch_size": 8, "grad_accum_steps": 1,
                    "zero_stage": 0, "precision": "fp32"}
    assert (recipe.resolved_run_dir / "recipe.yaml").read_text() == recipe.to_yaml()


def test_checkpoint_of_another_architecture_fails_naming_keys(toy_recipe):
    small = toy_recipe("small", "max_steps=1")
    train(small)
    deeper = toy_recipe("deeper", "max_steps=2", "modality.depth=3", "modality.embed_dim=48")
    with pytest.raises(ValueError) as info:
        train(deeper, resume=str(small.resolved_run_dir))
    message = str(info.value)
    assert "does not fit the model" in message
    assert "encoder: missing keys [blocks.2.norm1.weight" in message
    assert "pos_embed: file [1, 32, 32] vs model [1, 32, 48]" in message
    assert "modality.depth: 2 -> 3" in message and "modality.embed_dim: 32 -> 48" in message
    assert not (deeper.resolved_run_dir / "checkpoints").exists(), "nothing may be trained after a failed load"


def test_changed_recipe_fields_are_refused_by_name(toy_recipe):
    train(toy_recipe("run", "max_steps=2"))
    with pytest.raises(ValueError, match=r"optim\.lr: 0\.001 -> 0\.002.*seed: 0 -> 1"):
        train(toy_recipe("run", "max_steps=4", "optim.lr=0.002", "seed=1"), resume="auto")
    # fields that do not change the run may differ
    assert train(toy_recipe("run", "max_steps=3", "log.every_steps=3", "checkpoint.keep_last=5"), resume="auto").step == 3


def test_resume_none_refuses_to_overwrite_a_run(toy_recipe):
    recipe = toy_recipe("run", "max_steps=1")
    train(recipe)
    with pytest.raises(ValueError, match=r"already holds checkpoints \(newest: step_000001\).*--resume auto"):
        train(recipe, resume="none")


def test_load_model_weights_from_run_checkpoint_or_file(toy_recipe, tmp_path):
    recipe = toy_recipe("run", "max_steps=3", "checkpoint.every_steps=2")
    train(recipe)
    run_dir = recipe.resolved_run_dir
    from_run = load_model_weights(run_dir)
    from_dir = load_model_weights(run_dir / "checkpoints" / "step_000002")
    from_file = load_model_weights(run_dir / "checkpoints" / "step_000003" / "models.pt")
    assert from_run.step == from_file.step == 3 and from_dir.step == 2
    assert from_run.recipe == recipe
    for k, v in from_run.target_encoder.items():
        assert torch.equal(v, from_file.target_encoder[k])
    assert not torch.equal(from_run.encoder["pos_embed"], from_dir.encoder["pos_embed"])

    with pytest.raises(ValueError, match="no such file or directory"):
        load_model_weights(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no complete checkpoint in this directory"):
        load_model_weights(tmp_path / "empty")
    with pytest.raises(ValueError, match="incomplete checkpoint"):
        os.replace(run_dir / "checkpoints" / "step_000002", run_dir / "checkpoints" / "step_000002.tmp")
        load_model_weights(run_dir / "checkpoints" / "step_000002.tmp")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read as a jepa weights file"):
        load_model_weights(tmp_path / "junk.pt")


def test_resolve_resume_modes(tmp_path):
    assert checkpoint.resolve_resume("auto", tmp_path / "fresh") is None
    assert checkpoint.resolve_resume("none", tmp_path / "fresh") is None
    with pytest.raises(ValueError, match="no complete checkpoint"):
        checkpoint.resolve_resume(str(tmp_path), tmp_path / "fresh")


def test_image_modality_on_shards_with_workers_resumes_bitwise(tmp_path):
    """The real modality and loader: tiny ViT on JPEG shards read by 2 loader workers (prefetching)."""
    from jepa.modalities.image.demo_data import write_demo_dataset
    from jepa.recipe import parse_recipe

    write_demo_dataset(tmp_path / "data", num_images=160, num_val=0, size=32, max_count=40, show_progress=False)
    shards = sorted((tmp_path / "data" / "train").glob("*.tar"))
    assert len(shards) == 4

    def recipe(run: str, max_steps: int):
        return parse_recipe({
            "name": "image_tiny", "run_dir": str(tmp_path / run), "max_steps": max_steps,
            "modality": {"name": "image", "encoder": {"arch": "vit_tiny", "patch_size": 8, "embed_dim": 64, "depth": 2,
                                                      "num_heads": 2},
                         "predictor": {"embed_dim": 32, "depth": 1, "num_heads": 2},
                         "mask": {"mode": "fixed", "min_keep": 2}, "input": {"crop_size": 32}},
            "data": {"train_shards": "::".join(str(s) for s in shards), "samples_per_epoch": 160,
                     "global_batch_size": 8, "num_workers": 2, "shuffle_buffer": 16},
            "optim": {"epochs": 2, "warmup_epochs": 0.5}, "engine": {"precision": "fp32"},
            "log": {"every_steps": 1}, "checkpoint": {"every_steps": 3},
        })

    train(recipe("straight", 6))
    train(recipe("stopped", 3))
    assert train(recipe("stopped", 6), resume="auto").step == 6
    assert _losses(tmp_path / "stopped") == _losses(tmp_path / "straight")
    assert set(load_model_weights(tmp_path / "stopped").encoder) >= {"patch_embed.proj.weight", "blocks.1.mlp.fc2.bias"}


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_resume_over_two_processes_is_bitwise_exact(stage, toy_recipe_file, toy_recipe_at):
    """ZeRO shards written by 2 ranks and read back by 2 ranks (width 192: ZeRO-3 partitions qkv/fc1/fc2)."""
    common = ("modality.embed_dim=192", f"engine.zero_stage={stage}", "checkpoint.every_steps=3", "max_steps=5")

    def torchrun(recipe_file: Path) -> None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "jepa.cli", "train", str(recipe_file)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    torchrun(toy_recipe_file("straight", *common))
    torchrun(toy_recipe_file("stopped", *common, "max_steps=3"))
    torchrun(toy_recipe_file("stopped", *common))
    run_dir = toy_recipe_file("stopped", *common).parent / "stopped"
    assert _losses(run_dir) == _losses(run_dir.parent / "straight")
    # on 1 process: the micro batch (4) is kept, 2 accumulation steps; the ZeRO shards are resharded
    assert train(toy_recipe_at(run_dir, *common, "max_steps=7"), resume="auto").step == 7
    assert json.loads((run_dir / "checkpoints" / "step_000007" / "meta.json").read_text())["grad_accum_steps"] == 2


def test_fields_added_since_a_checkpoint_count_as_their_defaults():
    from jepa.checkpoint import recipe_differences
    from jepa.recipe import parse_recipe
    from tiny_recipes import tiny_image_recipe

    current = parse_recipe(tiny_image_recipe(0), "test").model_dump(mode="json")
    older = json.loads(json.dumps(current))  # as an older jepa wrote it: no eval section, no micro batch field
    del older["eval"], older["data"]["micro_batch_size"], older["log"]["collapse_rankme"]
    assert recipe_differences(older, current) == []
    older["modality"]["encoder"]["depth"] = 3
    assert [key for key, _, _ in recipe_differences(older, current)] == ["modality.encoder.depth"]
