"""V-JEPA 2's two phases: warmup-constant pretraining, then a linear cooldown from its checkpoint.

* The schedules of ``recipes/video_vjepa2_vitl16_{pretrain,cooldown}.yaml`` at the steps that matter,
  against the authors' configs (facebookresearch/vjepa2 ``configs/train/vitl16/``; docs/method/vjepa.md,
  "V-JEPA 2 schedules"); the default ``optim.lr_schedule`` is today's cosine, bitwise.
* Both phases on tiny clips (``jepa demo-data``): pretraining, then the cooldown at twice the frames
  from its checkpoint (``init_from`` with the optimiser moments), each stopped by SIGTERM and resumed
  with losses bitwise equal to an uninterrupted run of the same phase; the cooldown resumes from its
  own checkpoints.
* ``jepa bench train`` of the ViT-L pretraining recipe on CPU (1-2 frames' worth of tokens) prints MFU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from jepa.checkpoint import complete_checkpoints, load_model_weights, newest_checkpoint
from jepa.cli import app
from jepa.engine import Engine
from jepa.init_from import RESHARD_DIR
from jepa.monitor import read_metrics
from jepa.nn.pos_embed import sincos_3d
from jepa.recipe import apply_overrides, load_recipe, parse_recipe
from jepa.schedules import cosine, learning_rate, warmup_cosine
from jepa.target import EMATargetUpdater
from jepa.train import train

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "recipes" / "video_vjepa2_vitl16_pretrain.yaml"
COOLDOWN = ROOT / "recipes" / "video_vjepa2_vitl16_cooldown.yaml"
IPE = 300  # the authors' iterations per "epoch"


def _lr(recipe, step: int) -> float:
    o = recipe.optim
    return learning_rate(step, o.lr_schedule, warmup_steps=recipe.warmup_steps, total_steps=recipe.total_steps,
                         start=o.start_lr, peak=o.lr, final=o.final_lr)


def _wd(recipe, step: int) -> float:
    o = recipe.optim
    return cosine(step, total_steps=recipe.total_steps, start=o.weight_decay, final=o.final_weight_decay)


def _ema(recipe, step: int) -> float:
    ema = recipe.objective.ema
    return EMATargetUpdater(ema.momentum, ema.final_momentum, recipe.total_steps).momentum(step)


# ------------------------------------------------------------------------------ schedules against the facts


def test_pretraining_schedule_warms_up_then_stays():
    r = load_recipe(PRETRAIN)
    assert (r.data.global_batch_size, r.data.micro_batch_size, r.steps_per_epoch) == (3072, 24, IPE)
    assert r.warmup_steps == 40 * IPE == 12_000
    assert _lr(r, 0) == 1e-4
    assert _lr(r, 6_000) == pytest.approx(1e-4 + 0.5 * (5.25e-4 - 1e-4), rel=1e-12)  # half way through the warmup
    for step in (12_000, 12_001, 100_000, r.total_steps - 1, r.total_steps, 10 * r.total_steps):  # warmup end, then flat
        assert _lr(r, step) == 5.25e-4
    for step in (0, 12_000, 100_000, r.total_steps):
        assert _wd(r, step) == 0.04 and _ema(r, step) == 0.99925  # constant, bitwise


def test_cooldown_schedule_decays_linearly_from_the_peak_with_no_warmup():
    r = load_recipe(COOLDOWN)
    assert (r.data.global_batch_size, r.data.micro_batch_size, r.modality.input.num_frames) == (3072, 12, 64)
    assert r.init_from is not None and r.init_from.optimizer and set(r.init_from.parts) == {"encoder", "predictor", "target"}
    assert r.warmup_steps == 0 and r.max_steps == 40 * IPE and r.total_steps == 50 * IPE  # the 1.25 schedule scale
    assert _lr(r, 0) == 5.25e-4
    assert _lr(r, 7_500) == pytest.approx((5.25e-4 + 1e-6) / 2, rel=1e-12)
    # the run's end: the authors' LinearDecaySchedule after 12,000 of its T_max = int(1.25 x 40 x 300) steps
    assert _lr(r, r.max_steps) == pytest.approx(5.25e-4 + 12_000 / 15_000 * (1e-6 - 5.25e-4), rel=1e-12)
    assert _lr(r, r.max_steps) == pytest.approx(1.058e-4, rel=1e-12)
    assert _lr(r, 15_000) == 1e-6 and _lr(r, 10**6) == 1e-6  # the schedule's end, exact, and past it
    values = [_lr(r, s) for s in range(0, 15_001, 500)]
    assert all(a > b for a, b in zip(values, values[1:]))
    for step in (0, 6_000, r.max_steps):
        assert _wd(r, step) == 0.04 and _ema(r, step) == 0.99925


def test_the_phases_hand_over_at_the_same_learning_rate():
    pretrain, cooldown = load_recipe(PRETRAIN), load_recipe(COOLDOWN)
    assert _lr(pretrain, pretrain.total_steps - 1) == _lr(cooldown, 0) == 5.25e-4
    assert (pretrain.modality.encoder, pretrain.modality.predictor, pretrain.modality.mask, pretrain.objective) == \
        (cooldown.modality.encoder, cooldown.modality.predictor, cooldown.modality.mask, cooldown.objective)


def test_default_lr_schedule_is_the_cosine_bitwise():
    raw = yaml.safe_load(PRETRAIN.read_text())
    del raw["optim"]["lr_schedule"]
    r = parse_recipe(raw)
    assert r.optim.lr_schedule == "cosine"
    o = r.optim
    for step in (0, 1, 5_000, 12_000, 12_001, 150_000, r.total_steps):
        assert _lr(r, step) == warmup_cosine(step, warmup_steps=r.warmup_steps, total_steps=r.total_steps,
                                             start=o.start_lr, peak=o.lr, final=o.final_lr)


def test_unknown_lr_schedule_lists_the_known_ones():
    raw = yaml.safe_load(PRETRAIN.read_text())
    with pytest.raises(ValueError) as info:
        parse_recipe(apply_overrides(raw, ["optim.lr_schedule=step"]), "r.yaml")
    msg = str(info.value)
    assert "optim.lr_schedule" in msg and all(name in msg for name in ("'cosine'", "'constant'", "'linear'"))


# ------------------------------------------------------------------------------ two phases on tiny clips

#: The V-JEPA 2 recipes cut down to a model that trains a step in well under a second on tiny clips:
#: 4 frames in pretraining, 8 in the cooldown (both at frame step 2 of 32 px demo clips, 8 px patches).
TINY = ["modality.encoder.patch_size=8", "modality.encoder.embed_dim=48", "modality.encoder.depth=2",
        "modality.encoder.num_heads=4", "modality.predictor.embed_dim=24", "modality.predictor.depth=1",
        "modality.predictor.num_heads=4", "modality.input.crop_size=32", "modality.input.frame_step=2",
        "modality.mask.mode=fixed", "data.global_batch_size=4", "data.micro_batch_size=4", "data.samples_per_epoch=16",
        "data.num_workers=0", "data.shuffle_buffer=8", "engine.precision=fp32", "engine.zero_stage=0",
        "engine.activation_checkpointing=false", "log.every_steps=1", "checkpoint.every_steps=1000"]
PRETRAIN_STEPS, COOLDOWN_STEPS = 8, 6


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clips")
    result = CliRunner().invoke(app, ["demo-data", str(out), "--modality", "video", "--num-train", "16", "--num-val",
                                      "4", "--size", "32", "--max-count", "8", "--workers", "1"])
    assert result.exit_code == 0, result.output
    return out / "train"


def _pretrain(run_dir: Path, clips: Path, *extra: str):
    # 4 steps per epoch: 1 warmup epoch (4 steps), then constant; the schedules span 5 epochs
    return load_recipe(PRETRAIN, [*TINY, f"data.train_shards={clips}", f"run_dir={run_dir}", "optim.epochs=5",
                                  "optim.warmup_epochs=1", "modality.input.num_frames=4",
                                  f"max_steps={PRETRAIN_STEPS}", *extra])


def _cooldown(run_dir: Path, clips: Path, parent: Path, *extra: str):
    # the decay spans 2 epochs (8 steps) and the run stops after 6, as the authors' 1.25 scale has it
    return load_recipe(COOLDOWN, [*TINY, f"data.train_shards={clips}", f"run_dir={run_dir}", "optim.epochs=2",
                                  "modality.input.num_frames=8", f"init_from.path={parent}",
                                  f"max_steps={COOLDOWN_STEPS}", *extra])


def _sigterm_after(step: int):
    def hook(done: int) -> None:
        if done == step:
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler does: checkpoint at the end of the step, stop
    return hook


def _losses(run_dir: Path) -> list[float]:
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, len(records) + 1)), "metrics.jsonl has gaps or repeats"
    return [r["loss"] for r in records]


def _interrupted(recipe, stop_after: int) -> list[float]:
    stopped = train(recipe, step_hook=_sigterm_after(stop_after))
    assert stopped.stopped_by == "preempted" and stopped.step == stop_after
    assert [k for k, _ in complete_checkpoints(recipe.resolved_run_dir)] == [stop_after]
    finished = train(recipe, resume="auto")
    assert finished.stopped_by == "finished" and finished.step == recipe.max_steps
    return _losses(recipe.resolved_run_dir)


def test_pretraining_then_cooldown_each_resumes_exactly(clips, tmp_path):
    # phase 1: uninterrupted, and stopped by SIGTERM after step 3 then resumed
    pretrain = _pretrain(tmp_path / "pretrain", clips)
    reference = train(pretrain)
    assert reference.step == PRETRAIN_STEPS
    pretrain_losses = _losses(pretrain.resolved_run_dir)
    assert _interrupted(_pretrain(tmp_path / "pretrain_stopped", clips), 3) == pretrain_losses  # bitwise
    lrs = [r["lr"] for r in read_metrics(pretrain.resolved_run_dir)]
    assert lrs[4:] == [5.25e-4] * (PRETRAIN_STEPS - 4) and lrs[0] == 1e-4  # warmup, then constant
    parent_files = sorted(p.relative_to(tmp_path) for p in (tmp_path / "pretrain").rglob("*"))

    # phase 2: twice the frames, from the pretraining run's checkpoint (weights and AdamW moments)
    cooldown = _cooldown(tmp_path / "cooldown", clips, tmp_path / "pretrain")
    assert cooldown.modality.input.num_frames == 2 * pretrain.modality.input.num_frames
    train(cooldown)
    cooldown_losses = _losses(cooldown.resolved_run_dir)
    stopped = _cooldown(tmp_path / "cooldown_stopped", clips, tmp_path / "pretrain")
    assert _interrupted(stopped, 2) == cooldown_losses  # bitwise, resumed from its own checkpoint
    records = read_metrics(cooldown.resolved_run_dir)
    expected_lrs = [_lr(cooldown, s) for s in range(COOLDOWN_STEPS)]
    assert [r["lr"] for r in records] == expected_lrs and expected_lrs[0] == 5.25e-4
    assert all(a > b for a, b in zip(expected_lrs, expected_lrs[1:]))
    assert {r["ema_momentum"] for r in records} == {0.99925} and {r["weight_decay"] for r in records} == {0.04}
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "pretrain").rglob("*")) == parent_files  # untouched

    # the cooldown started from the parent's weights, not random ones
    fresh = train(_cooldown(tmp_path / "cooldown_fresh", clips, tmp_path / "pretrain", "init_from=null", "max_steps=1"))
    assert fresh.last_record["loss"] != cooldown_losses[0]
    saved = yaml.safe_load((cooldown.resolved_run_dir / "recipe.yaml").read_text())
    assert saved["init_from"]["path"] == str(tmp_path / "pretrain") and saved["optim"]["lr_schedule"] == "linear"
    assert saved["modality"]["encoder"]["pos_embed"] == "rope"


def test_a_sincos_cooldown_at_more_frames_keeps_its_own_position_tables(clips, tmp_path):
    """V-JEPA's sin-cos tables are sized by the clip: the 8-frame cooldown of a 4-frame run computes its own
    (also while the engine restores the parent's modules and AdamW moments)."""
    sincos = ("modality.encoder.pos_embed=sincos", "max_steps=1")
    train(_pretrain(tmp_path / "pretrain", clips, *sincos))
    result = train(_cooldown(tmp_path / "cooldown", clips, tmp_path / "pretrain", *sincos))
    assert result.stopped_by == "finished"
    parent, child = load_model_weights(tmp_path / "pretrain"), load_model_weights(tmp_path / "cooldown")
    grid_t, side, width = 8 // 2, 32 // 8, 48
    own = sincos_3d(width, grid_t, side, side, True).unsqueeze(0)
    for weights in (child.encoder, child.target_encoder):
        assert weights["pos_embed"].shape == (1, grid_t * side * side, width)
        torch.testing.assert_close(weights["pos_embed"], own, rtol=0, atol=0)
    assert parent.encoder["pos_embed"].shape == (1, 2 * side * side, width)
    assert child.predictor["predictor_pos_embed"].shape[1] == grid_t * side * side


# ------------------------------------------------------------------------------ bench


@pytest.mark.slow
def test_bench_train_of_the_vitl_pretraining_recipe_prints_mfu(tmp_path):
    """ViT-L/16 (300 M parameters) at batch 2 of 2-frame 64 px clips on the synthetic source: tens of seconds a step on CPU."""
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, [
        "bench", "train", str(PRETRAIN), "--steps", "1", "--warmup", "1", "--json", str(out),
        "--set", "data.source=synthetic", "--set", "data.global_batch_size=2", "--set", "data.micro_batch_size=2",
        "--set", "data.samples_per_epoch=600", "--set", "data.num_workers=0", "--set", "modality.input.num_frames=2",
        "--set", "modality.input.crop_size=64", "--set", "engine.precision=fp32", "--set", "engine.zero_stage=0",
        "--set", f"run_dir={tmp_path / 'run'}"])
    assert result.exit_code == 0, result.output
    assert "MFU" in result.output
    report = json.loads(out.read_text())
    print(f"ViT-L/16 pretrain bench on CPU: {json.dumps(report)}")
    assert 0 < report["mfu"] < 1


@pytest.mark.slow
def test_cooldown_on_another_number_of_processes_converts_the_parents_moments(toy_recipe_file, toy_recipe_at,
                                                                               tmp_path, monkeypatch):
    """V-JEPA 2's cooldown runs on twice the GPUs of its pretraining: ZeRO-2 AdamW moments written by 2
    processes are converted for 1 through a scratch folder in the new run's directory, removed afterwards."""
    zero = ("engine.zero_stage=2", "max_steps=2")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "jepa.cli",
           "train", str(toy_recipe_file("pretrain", *zero))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    parent = tmp_path / "pretrain"
    assert json.loads((newest_checkpoint(parent) / "meta.json").read_text())["world_size"] == 2

    scratch = []
    original = Engine.load_state

    def spy(self, directory, frozen_states, *, reshard_dir=None):
        scratch.append(reshard_dir)
        return original(self, directory, frozen_states, reshard_dir=reshard_dir)

    monkeypatch.setattr(Engine, "load_state", spy)
    cooldown = toy_recipe_at(tmp_path / "cooldown", *zero, f"init_from.path={parent}", "init_from.optimizer=true",
                             "optim.lr_schedule=linear", "optim.warmup_epochs=0")
    assert train(cooldown).stopped_by == "finished"
    assert scratch == [tmp_path / "cooldown" / RESHARD_DIR] and not scratch[0].exists()
