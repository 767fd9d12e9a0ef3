"""Slow end-to-end checks of the video modality (``-m slow``): the video demo's margins (2 seeds), a
2-process ZeRO-2 run with exact resume, and exact resume after SIGTERM.

Seeds: demo data ``--seed 0`` (``jepa demo-data --modality video``); training and probes seed 0 and 1.
"""

from __future__ import annotations

import dataclasses
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

#: What the objectives issue asks of the video demo, and what it is pinned to: the pretrained video encoder's
#: top-1 minus the same architecture's at random init (same seed), per probe; every probe must also beat the
#: middle-frame encoder.
MIN_MARGIN_OVER_RANDOM = {"linear": 0.10, "knn": 0.10, "attentive": -0.02}
PROBES = tuple(MIN_MARGIN_OVER_RANDOM)

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


@pytest.fixture(scope="module")
def demo_clips(tmp_path_factory) -> Path:
    """`jepa demo-data DIR --modality video` (the demo's clips, seed 0) and their middle frames."""
    from jepa.modalities.video.baseline import write_middle_frame_shards

    data = tmp_path_factory.mktemp("video-demo-data")
    registry.get("video")().write_demo_data(data, dataclasses.replace(registry.get("video").demo_defaults, workers=2))
    view = load_recipe(ROOT / "recipes/video_demo_lejepa.yaml").modality.input
    for split in ("train", "val"):
        write_middle_frame_shards(data / split, data / "middle_frames" / split, view, show_progress=False)
    return data


def _demo_top1(data: Path, folder: Path, seed: int) -> dict[str, dict[str, float]]:
    """Train the LeJEPA video demo and its single-frame baseline with ``seed``; top-1 per encoder and probe."""
    frames = data / "middle_frames"
    folder.mkdir(parents=True, exist_ok=True)
    video = load_recipe(_demo_recipe(folder, "recipes/video_demo_lejepa.yaml", data / "train", seed))
    image = load_recipe(_demo_recipe(folder, "recipes/video_demo_image_baseline_lejepa.yaml", frames / "train", seed))
    train(video)
    train(image)
    settings = EvalSettings(protocols=PROBES, seed=seed)
    top1 = {}
    for what, src, split in (("video", str(video.resolved_run_dir), data),
                             ("video_random", f"random:{folder / 'video_demo_lejepa.yaml'}", data),
                             ("middle_frame", str(image.resolved_run_dir), frames)):
        report = evaluate_shards(load_source(src), str(split / "train"), str(split / "val"), settings)
        top1[what] = {r.protocol: r.top1 for r in report.results}
    print(f"seed {seed} top-1:", top1)
    return top1


def test_video_demo_margins(demo_clips, tmp_path):
    """The video demo as ``tools/demo.sh video`` runs it (recipes/video_demo_lejepa.yaml and its single-frame
    baseline recipes/video_demo_image_baseline_lejepa.yaml; about 25 minutes on 2 cores per seed), seeds 0 and 1.

    Pinned, per seed, the objectives issue's margins (measured, README "Video", seed 0 / seed 1): the pooled
    linear probe and k-NN at least 10 points above the same architecture at random init (linear +18.0 / +15.0,
    k-NN +14.4 / +10.4), the attentive probe no more than 2 points below it (+2.6 / +0.4), and every probe above
    the image encoder pretrained on the clips' middle frames (by 9.0 points or more)."""
    runs = {seed: _demo_top1(demo_clips, tmp_path / f"seed{seed}", seed) for seed in (0, 1)}
    for seed, top1 in runs.items():
        video, random_init, frame = top1["video"], top1["video_random"], top1["middle_frame"]
        for probe in PROBES:
            assert video[probe] >= random_init[probe] + MIN_MARGIN_OVER_RANDOM[probe], (seed, probe, top1)
            assert video[probe] > frame[probe], (seed, probe, top1)


def _demo_recipe(folder: Path, recipe: str, train_shards: Path, seed: int) -> Path:
    raw = yaml.safe_load((ROOT / recipe).read_text())
    raw["data"]["train_shards"] = str(train_shards)
    raw["seed"] = seed
    raw["run_dir"] = str(folder / raw["name"])
    path = folder / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path
