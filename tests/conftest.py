"""Test-wide setup: CPU DeepSpeed, and the toy modality installed as a third-party plugin.

The toy modality (``tests/toy_modality.py``) is registered through the ``jepa.modalities``
entry-point group exactly like a pip-installed package: a ``toy_jepa-0.0.dist-info`` directory
(METADATA + entry_points.txt) is written into a temporary directory that goes on ``sys.path``
and on ``PYTHONPATH`` (so subprocesses such as ``torchrun`` runs discover it too). It is
installed in ``pytest_configure`` so tests parametrised over ``registry.available()`` see it at
collection time; the ``toy_plugin_dir`` fixture hands the directory to tests that need it.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")

TESTS_DIR = Path(__file__).resolve().parent
_plugin_dir: Path | None = None


def install_toy_plugin(root: Path) -> Path:
    """Write the toy plugin's dist-info into ``root`` and put ``root`` (and tests/) on the import paths."""
    dist_info = root / "toy_jepa-0.0.dist-info"
    dist_info.mkdir(parents=True, exist_ok=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-jepa\nVersion: 0.0\n")
    (dist_info / "entry_points.txt").write_text("[jepa.modalities]\ntoy = toy_modality:ToyModality\n")
    for path in (str(TESTS_DIR), str(root)):
        if path not in sys.path:
            sys.path.insert(0, path)
    entries = [str(root), str(TESTS_DIR), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(entries))
    return root


def pytest_configure(config: pytest.Config) -> None:
    global _plugin_dir
    _plugin_dir = install_toy_plugin(Path(tempfile.mkdtemp(prefix="toy_jepa_plugin_")))


def pytest_unconfigure(config: pytest.Config) -> None:
    if _plugin_dir is not None:
        shutil.rmtree(_plugin_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def toy_plugin_dir() -> Path:
    """The directory holding ``toy_jepa-0.0.dist-info`` (on sys.path and PYTHONPATH)."""
    assert _plugin_dir is not None
    return _plugin_dir


# --------------------------------------------------------------------------- tiny toy recipes

TOY_RECIPE: dict = {
    "name": "toy",
    "modality": {"name": "toy"},
    "data": {"source": "synthetic", "global_batch_size": 8, "samples_per_epoch": 800, "num_workers": 0},
    "optim": {"epochs": 1, "warmup_epochs": 0.1},  # schedules span 100 steps, 10 of warm-up
    "ema": {"momentum": 0.9, "final_momentum": 1.0},  # a fast EMA, so the target visibly moves in a few steps
    "engine": {"precision": "fp32"},
    "log": {"every_steps": 1},
    "checkpoint": {"every_steps": 1000, "keep_last": 2},
    "max_steps": 6,
}


@pytest.fixture(scope="session")
def toy_recipe_at():
    """``toy_recipe_at(run_dir, "dotted.key=value", ...)`` -> a validated toy Recipe running in run_dir."""
    from jepa.recipe import apply_overrides, parse_recipe

    def make(run_dir: Path, *overrides: str):
        return parse_recipe(apply_overrides(TOY_RECIPE, [f"run_dir={run_dir}", *overrides]), "toy recipe")

    return make


@pytest.fixture
def toy_recipe(tmp_path, toy_recipe_at):
    """``toy_recipe(run_name, "dotted.key=value", ...)`` -> a validated toy Recipe running in tmp_path/run_name."""
    return lambda run_name="run", *overrides: toy_recipe_at(tmp_path / run_name, *overrides)


@pytest.fixture
def toy_recipe_file(tmp_path):
    """``toy_recipe_file(run_name, "dotted.key=value", ...)`` -> path of a toy recipe YAML (for subprocesses)."""
    import yaml

    from jepa.recipe import apply_overrides

    def make(run_name: str = "run", *overrides: str) -> Path:
        raw = apply_overrides(TOY_RECIPE, [f"run_dir={tmp_path / run_name}", *overrides])
        path = tmp_path / f"{run_name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    return make


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a whole test module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    as in loader workers, and small ops on 2 busy cores run far slower with 2 threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
