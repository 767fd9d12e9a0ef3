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

#: What the issue asks of the motion demo: the pretrained video encoder's top-1 minus the best of (the same
#: architecture at random init, the image encoder on the middle frame), per probe.
MIN_MARGIN = {"attentive": 0.10}
PROBES = tuple(MIN_MARGIN)

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
    deadline = time.monotonic() + 900  # generous: a loaded 2-core machine is slow to start
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


@pytest.mark.xfail(strict=True, reason="measured (README, Video): attentive top-1 87.2 % pretrained vs 94.6 % at "
                   "random init (middle frame: 25.0 %); the demo's pretraining does not yet beat random init "
                   "(EMA start 0.996: 92.4 %; tubelet 1: 31.8 vs 41.0 %; 8 classes with rotation sense: 33.2 "
                   "vs 47.4 %; all seed 0; open in the video issue)")
def test_motion_demo_margins(tmp_path):
    """The full motion demo as ``tools/demo.sh video`` runs it (data/video_demo, recipes/video_demo.yaml and
    recipes/video_demo_image_baseline.yaml; about 10 minutes on 2 cores): the pretrained video encoder should
    beat the same architecture at random init and the image encoder pretrained on the clips' middle frames."""
    from jepa.modalities.video.baseline import write_middle_frame_shards

    data = ROOT / "data/video_demo"
    if not (data / "val/manifest.json").is_file():
        registry.get("video")().write_demo_data(data, registry.get("video").demo_defaults)
    video = load_recipe(_demo_recipe(tmp_path, "recipes/video_demo.yaml", data / "train"))
    frames = tmp_path / "frames"
    for split in ("train", "val"):
        write_middle_frame_shards(data / split, frames / split, video.modality.input, show_progress=False)
    image = load_recipe(_demo_recipe(tmp_path, "recipes/video_demo_image_baseline.yaml", frames / "train"))
    train(video)
    train(image)
    settings = EvalSettings(protocols=PROBES, seed=0)
    top1 = {}
    for what, src, split in (("video", str(video.resolved_run_dir), data),
                             ("video_random", "random:" + str(ROOT / "recipes/video_demo.yaml"), data),
                             ("middle_frame", str(image.resolved_run_dir), frames)):
        report = evaluate_shards(load_source(src), str(split / "train"), str(split / "val"), settings)
        top1[what] = {r.protocol: r.top1 for r in report.results}
    for probe, margin in MIN_MARGIN.items():
        best_other = max(top1["video_random"][probe], top1["middle_frame"][probe])
        assert top1["video"][probe] - best_other >= margin, (probe, top1)


def _demo_recipe(folder: Path, recipe: str, train_shards: Path) -> Path:
    raw = yaml.safe_load((ROOT / recipe).read_text())
    raw["data"]["train_shards"] = str(train_shards)
    raw["run_dir"] = str(folder / raw["name"])
    path = folder / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path
