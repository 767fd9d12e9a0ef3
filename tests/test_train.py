"""The training loop end to end: ZeRO stages across processes against one process, run health
checks (non-finite loss, collapse), and the train / info / bench commands."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from jepa.checkpoint import load_model_weights
from jepa.cli import app
from jepa.loss import latent_loss
from jepa.monitor import read_metrics
from jepa.run_stopped import NonFiniteLossError, RepresentationCollapseError
from jepa.train import train

from toy_modality import ToyConfig, ToyModality

# fp32, 5 steps, clipping active (the toy's gradient norm is ~0.35), a fast EMA so the target moves.
# Width 192 makes qkv / fc1 / fc2 larger than ZeRO-3's persistence threshold (1e5 elements), so
# they really are partitioned (smaller tensors stay whole on every rank).
# Micro batch 4 of the global 8: one process accumulates 2 micro batches, two processes run one each
# (the same micro batches and masks, see jepa/data/synthetic.py).
ZERO_RUN = ("max_steps=5", "optim.grad_clip=0.1", "optim.lr=3e-3", "ema.momentum=0.5", "modality.embed_dim=192",
            "data.micro_batch_size=4")
# Tolerance of ZeRO over 2 processes vs 1 process (same global batch, fp32): reductions are
# summed in another order, so equality is up to float32 rounding. Measured: <= 1e-7.
ATOL = 1e-6


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory, toy_recipe_at):
    """The reference: ZeRO stage 0 in this process, same global batch (2 accumulated micro batches)."""
    result = train(toy_recipe_at(tmp_path_factory.mktemp("zero") / "stage0", *ZERO_RUN))
    return read_metrics(result.run_dir), load_model_weights(result.run_dir)


def _torchrun(recipe_file, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "jepa.cli", "train", str(recipe_file), "--resume", "none"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_over_two_processes_matches_one_process(stage, single_process_run, toy_recipe_file):
    ref_metrics, ref = single_process_run
    recipe_file = toy_recipe_file(f"zero{stage}", *ZERO_RUN, f"engine.zero_stage={stage}")
    _torchrun(recipe_file)
    run_dir = recipe_file.parent / f"zero{stage}"
    metrics = read_metrics(run_dir)
    assert [r["step"] for r in metrics] == [r["step"] for r in ref_metrics] == [1, 2, 3, 4, 5]
    for a, b in zip(metrics, ref_metrics):
        assert abs(a["loss"] - b["loss"]) <= ATOL, (a["step"], a["loss"], b["loss"])
    assert ref_metrics[0]["loss"] - ref_metrics[-1]["loss"] > 10 * ATOL, "the loss did not move; the comparison is vacuous"

    got = load_model_weights(run_dir)
    assert got.step == ref.step == 5
    for part in ("encoder", "predictor", "target_encoder"):
        a, b = getattr(got, part), getattr(ref, part)
        assert a.keys() == b.keys()
        diff = max((a[k] - b[k]).abs().max().item() for k in a)
        assert diff <= ATOL, f"{part} differs from stage 0 by {diff}"
    torch.manual_seed(0)  # the initial weights train() built
    initial = ToyModality(ToyConfig(embed_dim=192)).build_encoder().state_dict()
    moved = max((ref.target_encoder[k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 1000 * ATOL, "the target encoder did not move; its comparison is vacuous"


def test_non_finite_loss_stops_the_run_naming_the_step(toy_recipe, monkeypatch):
    calls = {"n": 0}

    def poisoned_loss(pred, target, kind="l2"):
        calls["n"] += 1
        loss = latent_loss(pred, target, kind)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr("jepa.objectives.ijepa.latent_loss", poisoned_loss)
    recipe = toy_recipe("run", "max_steps=8", "log.every_steps=2", "checkpoint.every_steps=2")
    with pytest.raises(NonFiniteLossError, match=r"non-finite at step 3\b"):
        train(recipe)
    records = read_metrics(recipe.resolved_run_dir)
    assert [r["step"] for r in records] == [2, 4]  # detected at the next log step, step 3 named
    assert records[-1]["loss"] != records[-1]["loss"]  # NaN written before stopping
    assert sorted(p.name for p in (recipe.resolved_run_dir / "checkpoints").iterdir()) == ["latest", "step_000002"]


def test_collapse_threshold_stops_the_run(toy_recipe):
    recipe = toy_recipe("run", "max_steps=4", "log.collapse_threshold=100")
    with pytest.raises(RepresentationCollapseError, match=r"collapse at step 1: target spread .* < log.collapse_threshold=100"):
        train(recipe)


def test_train_cli_reports_user_errors(toy_recipe_file, tmp_path):
    recipe_file = toy_recipe_file("run", "max_steps=2")
    out = CliRunner().invoke(app, ["train", str(recipe_file), "--resume", str(tmp_path / "nowhere")])
    assert out.exit_code == 2
    assert "nowhere: no such file or directory" in " ".join(out.output.split())
    out = CliRunner().invoke(app, ["train", str(recipe_file)])
    assert out.exit_code == 0, out.output
    assert "finished at step 2" in out.output


def test_info_counts_parameters_and_flops(toy_recipe_file):
    out = CliRunner().invoke(app, ["info", str(toy_recipe_file("run")), "--set", "modality.depth=3"])
    assert out.exit_code == 0, out.output
    torch.manual_seed(0)
    cfg = ToyConfig(depth=3)
    n_enc = sum(p.numel() for p in ToyModality(cfg).build_encoder().parameters())
    n_pred = sum(p.numel() for p in ToyModality(cfg).build_predictor().parameters())
    text = " ".join(out.output.split())
    assert f"encoder parameters │ {n_enc:,}" in text
    assert f"target_encoder parameters (EMA copy, not trained) │ {n_enc:,}" in text
    assert f"predictor parameters │ {n_pred:,}" in text
    assert f"total trainable parameters │ {n_enc + n_pred:,}" in text
    assert "training FLOPs per sample" in text


def test_bench_train_times_steps(toy_recipe_file):
    out = CliRunner().invoke(app, ["bench", "train", str(toy_recipe_file("run")), "--steps", "3", "--warmup", "1"])
    assert out.exit_code == 0, out.output
    assert "median step time" in out.output and "samples/s" in out.output and "achieved FLOP/s" in out.output
    bench_dir = toy_recipe_file("run").parent / "run-bench"
    assert "3 timed steps after 1 warm-up" in out.output
    # steps are timed by the bench itself: the run logs (RankMe, ...) once, at its end, and saves nothing
    assert [r["step"] for r in read_metrics(bench_dir)] == [4] and not (bench_dir / "checkpoints").exists()


def test_tensorboard_logging_or_a_clear_error(toy_recipe):
    recipe = toy_recipe("run", "max_steps=2", "log.tensorboard=true")
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match=r"'tensorboard' package is not installed; pip install 'jepa-forge\[tensorboard\]'"):
            train(recipe)
        assert not (recipe.resolved_run_dir / "checkpoints").exists()
    else:
        train(recipe)
        assert list((recipe.resolved_run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_metrics_reader_skips_a_torn_last_line_and_rejects_corruption(tmp_path):
    from jepa.monitor import _truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.9}\n{"step": 3, "lo')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    _truncate_metrics(path, last_step=1)
    assert path.read_text() == '{"step": 1, "loss": 1.0}\n'
    path.write_text('{"step": 1}\ngarbage\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON record"):
        read_metrics(tmp_path)
