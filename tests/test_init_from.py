"""`init_from:` starts a new run from released-layout files, run directories and checkpoints.

Exactness: single process, fp32, CPU, the same batch on every step (the synthetic loader is
pinned to its step-0 batch), so the first loss of a run started from weights W must be
bitwise equal to the first loss of a run resumed from a checkpoint holding W.
"""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from jepa.checkpoint import step_dir_name
from jepa.data.synthetic import SyntheticTrainLoader
from jepa.export import export
from jepa.recipe import parse_recipe
from jepa.sources import load_source
from jepa.train import train
from tiny_recipes import tiny_image_recipe


def _recipe(run_dir, max_steps: int, init_from: dict | None = None):
    raw = tiny_image_recipe(0)
    raw.update({"run_dir": str(run_dir), "max_steps": max_steps, "engine": {"precision": "fp32"},
                "log": {"every_steps": 1}, "checkpoint": {"every_steps": 1, "keep_last": 5}})
    if init_from is not None:
        raw["init_from"] = copy.deepcopy(init_from)
    return parse_recipe(raw, "tiny init_from recipe")


@pytest.fixture
def one_batch(monkeypatch):
    real = SyntheticTrainLoader.batch
    monkeypatch.setattr(SyntheticTrainLoader, "batch", lambda self, step: real(self, 0))


def test_first_loss_equals_a_resumed_run_from_the_same_weights(tmp_path, one_batch):
    train(_recipe(tmp_path / "run1", 1))  # checkpoint at step 1 holds weights W
    released = tmp_path / "w.pth.tar"
    export(load_source(str(tmp_path / "run1")), released, fmt="official", log=lambda _: None)

    resumed = train(_recipe(tmp_path / "run1", 2)).last_record["loss"]  # step 1 -> 2 from W
    fresh = train(_recipe(tmp_path / "fresh", 1)).last_record["loss"]  # random init: must differ
    from_file = train(_recipe(tmp_path / "from_file", 1, {"path": str(released)})).last_record["loss"]
    step1 = tmp_path / "run1" / "checkpoints" / step_dir_name(1)  # run1 now also holds step 2
    from_run = train(_recipe(tmp_path / "from_run", 1, {"path": str(step1), "optimizer": True}))
    print(f"first-step loss: resumed {resumed!r}, init_from released {from_file!r}, "
          f"init_from run (+optimizer) {from_run.last_record['loss']!r}, random init {fresh!r}")
    assert from_file == resumed and from_run.last_record["loss"] == resumed
    assert fresh != resumed

    saved = yaml.safe_load((tmp_path / "from_file" / "recipe.yaml").read_text())
    assert saved["init_from"] == {"path": str(released), "parts": ["encoder", "predictor", "target"], "optimizer": False}


def test_a_file_that_does_not_fit_names_every_mismatch(tmp_path):
    from jepa.modalities.image.released import save_released
    from jepa.modalities.image.vit import ViTEncoder, ViTPredictor

    wide = tmp_path / "wide.pth.tar"
    enc = ViTEncoder(32, 8, 3, 96, 2, 4, 384)  # width 96, not the recipe's 64
    save_released(wide, enc, ViTPredictor(4, 96, 32, 1, 4), enc)
    with pytest.raises(ValueError) as info:
        train(_recipe(tmp_path / "run", 1, {"path": str(wide)}))
    msg = str(info.value)
    assert "init_from.path" in msg and "wide.pth.tar" in msg
    for part in ("encoder:", "predictor:", "target:"):
        assert part in msg
    assert "pos_embed: file [1, 16, 96] vs model [1, 16, 64]" in msg and "predictor_embed.weight" in msg
    assert not (tmp_path / "run").exists()  # refused before the run directory was written

    with pytest.raises(ValueError, match="optimiser state is restored only from a checkpoint of `jepa train`"):
        train(_recipe(tmp_path / "run", 1, {"path": str(wide), "optimizer": True}))
    with pytest.raises(ValueError, match="names a part twice"):
        _recipe(tmp_path / "run", 1, {"path": str(wide), "parts": ["encoder", "encoder"]})
