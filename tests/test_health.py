"""Online health during pretraining: RankMe, the online k-NN probe, the stop rules, keep_best."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jepa.best_checkpoint import BEST_DIR, BEST_FILE, read_best
from jepa.health import rankme
from jepa.monitor import read_metrics
from jepa.recipe import RecipeError, parse_recipe
from jepa.run_stopped import RepresentationCollapseError
from jepa.train import train
from tiny_recipes import tiny_image_recipe


def test_rankme_is_high_for_spread_features_and_about_one_for_collapsed_ones():
    gen = torch.Generator().manual_seed(0)
    spread = torch.randn(512, 64, generator=gen)
    assert 55 < rankme(spread).item() <= 64  # isotropic Gaussian: close to full rank D
    assert rankme(spread[:, :1] * torch.ones(1, 64)).item() == pytest.approx(1.0, abs=0.01)  # rank one
    low = torch.randn(512, 4, generator=gen) @ torch.randn(4, 64, generator=gen)  # dimensional collapse to 4
    assert 2 < rankme(low).item() <= 4.01
    assert rankme(torch.zeros(10, 8)).item() == pytest.approx(1.0, abs=0.01)  # nothing at all: no NaN
    assert rankme(spread.reshape(8, 64, 64)).item() == pytest.approx(rankme(spread).item())  # rows = leading dims
    spread[3, 5] = float("nan")
    assert torch.isnan(rankme(spread))  # a diverged run logs NaN; the non-finite loss check names the step


def test_rankme_caps_rows_and_names_bad_shapes():
    x = torch.randn(5000, 16)
    assert rankme(x, max_rows=100).item() <= 16
    with pytest.raises(ValueError, match="at least 2"):
        rankme(torch.randn(1, 8))
    with pytest.raises(ValueError, match="rows"):
        rankme(torch.randn(8))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> tuple[str, str]:
    from jepa.modalities.image.demo_data import write_demo_dataset

    root = tmp_path_factory.mktemp("demo")
    write_demo_dataset(root, num_images=64, num_val=32, size=32, max_count=32, show_progress=False)
    return str(root / "train"), str(root / "val")


def _recipe(tmp_path: Path, **sections):
    raw = tiny_image_recipe(0)
    raw["run_dir"] = str(tmp_path / "run")
    raw["log"] = {"every_steps": 1}
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return parse_recipe(raw, "test")


def test_online_knn_is_logged_and_keep_best_keeps_the_best_checkpoint(tmp_path, labelled):
    train_shards, val_shards = labelled
    recipe = _recipe(tmp_path,
                     eval={"every_steps": 2, "train_shards": train_shards, "val_shards": val_shards, "k": 5,
                           "batch_size": 16},
                     checkpoint={"every_steps": 1, "keep_last": 100, "keep_best": {"metric": "rankme"}})
    recipe = recipe.model_copy(update={"max_steps": 6})
    train(recipe)
    records = read_metrics(recipe.resolved_run_dir)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    for r in records:
        assert 1.0 <= r["rankme"] <= 64
        assert ("knn_top1" in r) == (r["step"] % 2 == 0)
    assert all(0.0 <= r["knn_top1"] <= 1.0 and 0.0 <= r["knn_top5"] <= 1.0 for r in records if "knn_top1" in r)
    # every step is logged and checkpointed, so the best checkpoint is the step of the largest RankMe
    best_step = max(records, key=lambda r: r["rankme"])["step"]
    best = read_best(recipe.resolved_run_dir)
    assert best["step"] == best["metric_step"] == best_step and best["metric"] == "rankme" and best["mode"] == "max"
    assert best["value"] == pytest.approx(max(r["rankme"] for r in records))
    kept = recipe.resolved_run_dir / BEST_DIR / "models.pt"
    original = recipe.resolved_run_dir / "checkpoints" / f"step_{best_step:06d}" / "models.pt"
    assert kept.read_bytes() == original.read_bytes()
    # the kept directory is a checkpoint like any other: its weights load for export / eval
    from jepa.checkpoint import load_model_weights
    assert load_model_weights(recipe.resolved_run_dir / BEST_DIR).step == best_step


def test_keep_best_by_loss_survives_pruning_and_resume(tmp_path):
    recipe = _recipe(tmp_path, checkpoint={"every_steps": 1, "keep_last": 1, "keep_best": {"metric": "loss"}})
    train(recipe.model_copy(update={"max_steps": 3}))
    train(recipe.model_copy(update={"max_steps": 5}))  # resumes: the best so far carries over
    records = read_metrics(recipe.resolved_run_dir)
    best_step = min(records, key=lambda r: r["loss"])["step"]
    best = read_best(recipe.resolved_run_dir)
    assert best["step"] == best_step and best["mode"] == "min"
    assert json.loads((recipe.resolved_run_dir / BEST_DIR / BEST_FILE).read_text())["value"] == pytest.approx(
        min(r["loss"] for r in records))
    assert (recipe.resolved_run_dir / BEST_DIR / "models.pt").is_file()  # its original was pruned by keep_last=1


def test_forced_collapse_drops_rankme_and_the_rankme_rule_stops_the_run(tmp_path, monkeypatch):
    healthy = _recipe(tmp_path / "a", checkpoint={"every_steps": 100})
    train(healthy.model_copy(update={"max_steps": 2}))
    healthy_rankme = read_metrics(healthy.resolved_run_dir)[-1]["rankme"]

    # Collapse the encoder: a zero final-norm gain maps every token to the same vector (the bias).
    from jepa.modalities.image import ImageModality

    build = ImageModality.build_encoder

    def collapsed(self):
        encoder = build(self)
        torch.nn.init.zeros_(encoder.norm.weight)
        encoder.norm.weight.requires_grad_(False)
        return encoder

    monkeypatch.setattr(ImageModality, "build_encoder", collapsed)
    sick = _recipe(tmp_path / "b", checkpoint={"every_steps": 100}, log={"every_steps": 1, "collapse_rankme": 2.0})
    with pytest.raises(RepresentationCollapseError, match=r"RankMe .* < log.collapse_rankme=2.0"):
        train(sick.model_copy(update={"max_steps": 2}))
    sick_record = read_metrics(sick.resolved_run_dir)[-1]  # the record naming the step is written first
    assert sick_record["step"] == 1
    assert sick_record["rankme"] < 1.5 < 10 < healthy_rankme


@pytest.mark.parametrize("sections, message", [
    ({"eval": {"every_steps": 5}}, "eval.train_shards: required when eval.every_steps is set"),
    ({"checkpoint": {"keep_best": {"metric": "knn_top1"}}}, "measured by the online k-NN probe"),
    ({"checkpoint": {"keep_best": {"metric": "accuracy"}}}, "unknown metric 'accuracy'"),
])
def test_health_recipe_mistakes_are_named(tmp_path, sections, message):
    with pytest.raises(RecipeError, match=message):
        _recipe(tmp_path, **sections)
