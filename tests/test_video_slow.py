"""Slow end-to-end checks of the video modality (``-m slow``): the motion demo's margins, a 2-process
ZeRO-2 run with exact resume, and exact resume after SIGTERM.

Seeds: demo data ``--seed 0`` (``jepa demo-data --modality video``), training ``seed: 0``, probes seed 0.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from jepa import registry
from jepa.checkpoint import complete_checkpoints
from jepa.eval.evaluate import EvalSettings, evaluate_shards
from jepa.interfaces import DemoDataSpec
from jepa.monitor import read_metrics
from jepa.recipe import load_recipe
from jepa.sources import load_source
from jepa.train import train

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

#: Measured on the full demo (see README, "Video (V-JEPA)"); the pinned bounds leave room for noise.
MIN_MARGIN = 0.15  # attentive top-1: pretrained minus max(random init, middle frame)

TINY = ["modality.encoder.depth=2", "modality.encoder.embed_dim=96", "modality.encoder.num_heads=3",
        "modality.predictor.embed_dim=48", "modality.predictor.depth=1", "data.global_batch_size=8",
        "data.num_workers=0", "data.shuffle_buffer=16", "log.every_steps=1", "checkpoint.every_steps=1000"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("video-demo")
    registry.get("video")().write_demo_data(out, DemoDataSpec(num_train=64, num_val=16, num_classes=4, max_count=32))
    return out


def _recipe_file(folder: Path, clips: Path, *overrides: str) -> Path:
    from jepa.recipe import apply_overrides

    raw = yaml.safe_load((ROOT / "recipes/video_demo.yaml").read_text())
    raw = apply_overrides(raw, [*TINY, f"data.train_shards={clips / 'train'}", f"run_dir={folder / 'run'}",
                                "optim.epochs=20", "optim.warmup_epochs=0.1", *overrides])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir)]


def test_zero2_over_two_processes_resumes_exactly(clips, tmp_path):
    def torchrun(recipe_file: Path) -> None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "jepa.cli", "train", str(recipe_file)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    common = ("engine.zero_stage=2", "checkpoint.every_steps=2")
    torchrun(_recipe_file(tmp_path / "straight", clips, *common, "max_steps=4"))
    torchrun(_recipe_file(tmp_path / "stopped", clips, *common, "max_steps=2"))
    torchrun(_recipe_file(tmp_path / "stopped", clips, *common, "max_steps=4"))
    straight = _losses(tmp_path / "straight" / "run")
    assert len(straight) == 4 and _losses(tmp_path / "stopped" / "run") == straight


def test_sigterm_resume_is_bitwise_exact(clips, tmp_path):
    reference = train(load_recipe(_recipe_file(tmp_path / "ref", clips, "max_steps=8")))
    ref = _losses(reference.run_dir)
    recipe_file = _recipe_file(tmp_path / "stopped", clips, "max_steps=1000")
    run_dir = tmp_path / "stopped" / "run"
    proc = subprocess.Popen([sys.executable, "-m", "jepa.cli", "train", str(recipe_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not ((run_dir / "metrics.jsonl").is_file() and len(read_metrics(run_dir)) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, "training ended before step 2"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "preempted (SIGTERM)" in output, output[-3000:]
    [(k, _)] = complete_checkpoints(run_dir)
    assert 2 <= k <= 5, k
    train(load_recipe(_recipe_file(tmp_path / "stopped", clips, "max_steps=8")), resume="auto")
    assert _losses(run_dir) == ref


def test_motion_demo_margins(tmp_path):
    """The full demo (data/video_demo, recipes/video_demo.yaml; tens of minutes on 2 cores)."""
    data = ROOT / "data/video_demo"
    if not (data / "val/manifest.json").is_file():
        registry.get("video")().write_demo_data(data, registry.get("video").demo_defaults)
    recipe = load_recipe(_recipe_file_demo(tmp_path))
    train(recipe)
    settings = EvalSettings(protocols=("attentive",), seed=0)
    top1 = {}
    for what, src in (("pretrained", load_source(str(recipe.resolved_run_dir))),
                      ("random", load_source("random:" + str(ROOT / "recipes/video_demo.yaml"))),
                      ("middle", __import__("jepa.modalities.video.baseline", fromlist=["x"]).middle_frame_source(load_source(str(recipe.resolved_run_dir))))):
        report = evaluate_shards(src, str(data / "train"), str(data / "val"), settings)
        top1[what] = report.results[0].top1
    assert top1["pretrained"] - max(top1["random"], top1["middle"]) >= MIN_MARGIN, top1


def _recipe_file_demo(folder: Path) -> Path:
    raw = yaml.safe_load((ROOT / "recipes/video_demo.yaml").read_text())
    raw["data"]["train_shards"] = str(ROOT / "data/video_demo/train")
    raw["run_dir"] = str(folder / "run")
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path
