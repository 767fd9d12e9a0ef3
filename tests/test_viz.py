"""``jepa viz``: every picture renders from tiny inputs, the mask overlay marks the target blocks, a trained
encoder's feature picture differs from its random initialisation's, ``viz run`` draws one panel per metric,
and a modality without the display hooks fails in one line naming it and the hook."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cli_runner import one_error_line, run_jepa
from tiny_recipes import tiny_image_recipe


def png_size(path: Path) -> tuple[int, int]:
    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


def write_recipe(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Image demo shards (40 train, 10 val, 64 px) and a tiny image recipe trained on them for 4 steps."""
    from jepa.interfaces import DemoDataSpec
    from jepa.modalities.image import ImageModality
    from jepa.recipe import parse_recipe
    from jepa.train import train

    root = tmp_path_factory.mktemp("viz")
    ImageModality().write_demo_data(root / "data", DemoDataSpec(num_train=40, num_val=10, max_count=40))
    raw = tiny_image_recipe(0)
    raw["data"] = {"source": "shards", "train_shards": str(root / "data" / "train"), "samples_per_epoch": 40,
                   "global_batch_size": 8, "num_workers": 0, "shuffle_buffer": 8}
    raw.update(run_dir=str(root / "run"), max_steps=4)
    raw["optim"] = {"epochs": 1, "warmup_epochs": 0, "lr": 3e-3}
    raw["checkpoint"] = {"every_steps": 2}
    raw["log"] = {"every_steps": 1}
    recipe_file = write_recipe(root / "tiny.yaml", raw)
    train(parse_recipe(raw, "tiny"))
    return root, recipe_file


def test_mask_overlay_marks_context_and_targets():
    from jepa.viz.masks import OUTSIDE_CONTEXT, TARGET_COLOURS, mask_overlay
    from jepa.viz.pixels import grid_boxes

    frames = np.full((1, 32, 32, 3), 0.5, dtype=np.float32)
    boxes = grid_boxes(1, 32, 32, patch=8).numpy()  # 4 x 4 patches
    over = mask_overlay(frames, boxes, context=np.array([0, 1, 4, 5]), targets=[np.array([10, 11])], factor=2)
    assert over.shape == (1, 64, 64, 3)
    assert np.allclose(over[0, 4, 4], 0.5)  # context: unchanged
    assert np.allclose(over[0, 4, 60], 0.5 * OUTSIDE_CONTEXT)  # neither: darkened
    inside = over[0, 2 * 8 + 8, 2 * 16 + 4]  # patch 10 = row 2, column 2, away from its edge
    outside = over[0, 2 * 8 + 8, 2 * 4]  # patch 8 = row 2, column 0: no context, no target
    assert not np.allclose(inside, outside) and not np.allclose(inside, 0.5)
    assert np.allclose(over[0, 32, 32], TARGET_COLOURS[0])  # the block's outline


def test_viz_masks_draws_real_samples_as_training_makes_them(demo, tmp_path, monkeypatch, capsys):
    root, recipe_file = demo
    two, four = tmp_path / "two.png", tmp_path / "four.png"
    assert run_jepa(monkeypatch, capsys, "viz", "masks", str(recipe_file), "--num", "2", "--out", str(two))[0] == 0
    code, out, err = run_jepa(monkeypatch, capsys, "viz", "masks", str(recipe_file), "--num", "4", "--out", str(four),
                              "--html", str(tmp_path / "masks.html"))
    assert code == 0, err
    (w2, h2), (w4, h4) = png_size(two), png_size(four)
    assert w4 > w2 + 150 and abs(h4 - h2) < 5  # images: one column per sample, input and mask pair rows
    assert 'src="four.png"' in (tmp_path / "masks.html").read_text()


def test_viz_masks_views_of_lejepa_and_generated_samples(tmp_path, monkeypatch, capsys):
    raw = tiny_image_recipe(0)
    raw["objective"] = {"name": "lejepa", "num_global_views": 2, "num_local_views": 1}
    recipe = write_recipe(tmp_path / "lejepa.yaml", raw)
    out = tmp_path / "views.png"
    code, _, err = run_jepa(monkeypatch, capsys, "viz", "masks", str(recipe), "--generated", "--num", "3",
                            "--views", "--out", str(out))
    assert code == 0, err
    w, h = png_size(out)
    assert w > 300 and h > 300  # 3 rows of the sample and its 3 views
    code, _, err = run_jepa(monkeypatch, capsys, "viz", "masks", str(recipe), "--num", "3", "--out", str(out))
    assert code == 2 and "--generated" in one_error_line(err)  # a synthetic-data recipe has no shards to read


def test_viz_masks_of_clips_one_row_per_mask_pair(tmp_path, monkeypatch, capsys):
    from jepa.modalities.video import VideoModality
    from jepa.recipe import load_recipe
    from jepa.viz.masks import draw_masks, make_batch
    from jepa.viz.samples import generated_samples
    from jepa import objectives

    raw = {"name": "tiny_video", "data": {"source": "synthetic", "samples_per_epoch": 8, "global_batch_size": 2},
           "modality": {"name": "video", **VideoModality.tiny_config()}}
    recipe = load_recipe(write_recipe(tmp_path / "video.yaml", raw))
    modality = VideoModality(recipe.modality)
    samples = generated_samples(modality, 2)
    batch = make_batch(objectives.bind(recipe.objective, modality), modality, samples.items, seed=0)
    assert len(batch.pairs) >= 2
    fig = draw_masks(modality, batch, "clips")
    frames = batch.inputs.shape[2]
    assert len(fig.axes) == 2 * (1 + len(batch.pairs)) * frames  # per clip: input + one row per pair, x frames
    out = tmp_path / "video.png"
    assert run_jepa(monkeypatch, capsys, "viz", "masks", str(tmp_path / "video.yaml"), "--generated", "--num", "1",
                    "--out", str(out))[0] == 0
    assert png_size(out)[0] > png_size(out)[1]  # a strip of frames


def test_feature_pictures_of_trained_and_random_init_differ(demo, tmp_path, monkeypatch, capsys):
    from jepa.sources import load_source
    from jepa.viz.features import feature_pictures
    from jepa.viz.samples import read_samples

    root, recipe_file = demo
    # the context encoder: the one the optimiser moved (the EMA target of 4 steps is still close to its init)
    trained, random_init = load_source(str(root / "run"), which="context"), load_source(f"random:{recipe_file}")
    samples = read_samples(str(root / "data" / "val"), trained.modality, 4)
    x = trained.modality.eval_batch(samples.items)
    a, b = feature_pictures(trained, x), feature_pictures(random_init, x)
    assert a[0].shape == (32, 32, 3) and len(a) == 4
    assert np.abs(np.stack(a) - np.stack(b)).mean() > 0.02
    out = tmp_path / "features.png"
    code, stdout, err = run_jepa(monkeypatch, capsys, "viz", "features", str(root / "run"), "--compare",
                                 f"random:{recipe_file}", "--data", str(root / "data" / "val"), "--num", "3",
                                 "--foreground", "--out", str(out))
    assert code == 0, err
    assert "features.png" in stdout and png_size(out)[1] > png_size(out)[0]  # 3 rows of 3 columns, titles above


def test_viz_neighbours(demo, tmp_path, monkeypatch, capsys):
    root, _ = demo
    out = tmp_path / "nb.png"
    code, _, err = run_jepa(monkeypatch, capsys, "viz", "neighbours", str(root / "run"), "--train-data",
                            str(root / "data" / "train"), "--val-data", str(root / "data" / "val"), "--queries", "3",
                            "--k", "4", "--out", str(out))
    assert code == 0, err
    w, h = png_size(out)
    assert w > h  # 3 rows of a query and 4 neighbours


def test_viz_run_draws_one_panel_per_metric(demo, tmp_path, monkeypatch, capsys):
    from jepa.monitor import read_metrics
    from jepa.viz.curves import LEFT_OUT, run_curves

    root, _ = demo
    metrics = {k for r in read_metrics(root / "run") for k, v in r.items() if isinstance(v, (int, float))} - set(LEFT_OUT)
    fig = run_curves([root / "run"])
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert sorted(titles) == sorted(metrics) and "loss" in titles and "lr" in titles
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1 / s, "my_term": s, "eta_s": 9})
                                                 + "\n" for s in (1, 2, 3)))
    fig = run_curves([root / "run", other])
    assert "my_term" in [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert len([ax for ax in fig.axes if ax.get_visible()]) == len(metrics | {"my_term"})
    out = tmp_path / "curves.png"
    assert run_jepa(monkeypatch, capsys, "viz", "run", str(root / "run"), str(other), "--out", str(out))[0] == 0
    assert png_size(out)[0] > 600


def test_viz_eval_heat_maps_and_per_class(tmp_path, monkeypatch, capsys):
    from jepa.viz.eval_report import _panels

    grid = [{"lr": lr, "wd": wd, "holdout_top1": 0.1 * i, "val_top1": 0.1 * i}
            for i, (lr, wd) in enumerate((lr, wd) for lr in (1e-3, 1e-2) for wd in (0.0, 1e-4))]
    report = {"model": "ViT", "source_kind": "run", "step": 3, "chance_top1": 0.5, "results": [
        {"protocol": "linear", "top1": 0.3, "grid": grid, "settings": {"lr": 1e-2, "wd": 0.0}},
        {"protocol": "knn", "top1": 0.6, "grid": [], "per_class": {"a": 0.5, "b": 0.7}}]}
    assert [kind for kind, _ in _panels(report)] == ["summary", "grid", "grid", "per_class"]
    plain = dict(report, results=[dict(r) for r in report["results"]])
    del plain["results"][1]["per_class"]
    assert [kind for kind, _ in _panels(plain)] == ["summary", "grid", "grid"]
    (tmp_path / "a.json").write_text(json.dumps(report))
    (tmp_path / "b.json").write_text(json.dumps(plain))
    out = tmp_path / "eval.png"
    code, _, err = run_jepa(monkeypatch, capsys, "viz", "eval", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                            "--out", str(out))
    assert code == 0, err
    w, h = png_size(out)
    assert w > h > 300  # two rows of four panels
    (tmp_path / "bad.json").write_text("[1]")
    code, _, err = run_jepa(monkeypatch, capsys, "viz", "eval", str(tmp_path / "bad.json"), "--out", str(out))
    assert code == 2 and "bad.json" in one_error_line(err)


def test_plugin_without_the_hooks_gets_one_error_line(toy_recipe_file, tmp_path, monkeypatch, capsys):
    recipe = toy_recipe_file("toy")
    code, _, err = run_jepa(monkeypatch, capsys, "viz", "masks", str(recipe), "--generated",
                            "--out", str(tmp_path / "m.png"))
    line = one_error_line(err)
    assert code == 2 and "'toy'" in line and "display_frames" in line
    assert not (tmp_path / "m.png").exists()


def test_viz_is_not_imported_by_the_cli():
    import subprocess
    import sys

    code = "import sys, jepa.cli; print(any(m.startswith(('matplotlib', 'jepa.viz')) for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
