"""An outside package adds a modality with no change to ``jepa/``: the example plugin
``examples/jepa-timeseries``, installed with pip, goes through every command.

The plugin is installed into the environment by ``tools/env.sh`` (so every session collects it in
the contract suite) and again here, idempotently and without network (``--no-deps
--no-build-isolation --no-index``), so this module also works in an environment set up by other
means. Everything that needs the plugin runs in subprocesses: an editable install is only seen by
interpreters started after it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from jepa import registry

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "jepa-timeseries"
PLUGIN, PACKAGE, MODULE = "timeseries", "jepa-timeseries", "jepa_timeseries"
#: Whether the plugin was installed when this session collected its tests (then the contract suite ran on it).
COLLECTED = PLUGIN in [info.name for info in registry.available()]

TINY_MODALITY = {
    "name": PLUGIN,
    "encoder": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4},
    "predictor": {"embed_dim": 16, "depth": 1, "num_heads": 4},
    "input": {"seq_len": 64},
    "mask": {"num_targets": 2, "target_scale": [0.15, 0.25], "min_context": 2},
}


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``args`` (``"jepa", ...`` runs the CLI of this environment); fail showing its output."""
    cmd = [sys.executable, "-m", "jepa.cli", *args[1:]] if args[0] == "jepa" else list(args)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "COLUMNS": "200", "NO_COLOR": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed_plugin() -> Path:
    """Install the example plugin (editable, offline, no dependencies); a repeat install is a no-op."""
    run(sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
        "--no-build-isolation", "--no-index", "-e", str(EXAMPLE))
    return EXAMPLE


def test_jepa_modalities_lists_the_plugin_with_its_package(installed_plugin):
    rows = [line.split("│") for line in run("jepa", "modalities").stdout.splitlines() if "│" in line]
    cells = {r[1].strip(): [c.strip() for c in r[2:]] for r in rows if len(r) > 3}
    assert PLUGIN in cells, cells
    assert cells[PLUGIN][:2] == [PACKAGE, f"{MODULE}:TimeSeriesModality"]


def test_the_contract_suite_passes_on_the_plugin(installed_plugin):
    if COLLECTED:
        return  # installed before this session: test_modality_contract.py[timeseries] runs in this session
    proc = run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_modality_contract.py",
               "-k", PLUGIN)
    assert " passed" in proc.stdout and " failed" not in proc.stdout


def test_demo_recipe_of_the_plugin_is_valid(installed_plugin):
    out = run("jepa", "recipe", "check", str(EXAMPLE / "recipes" / "timeseries_demo.yaml")).stdout
    assert "ok" in out and "TS-Transformer" in out


def write_npy_folder(root: Path, rng: np.random.Generator) -> None:
    """Class sub-folders of (3, 80) float32 ``.npy`` series (slow vs fast sinusoids), plus files to skip."""
    t = np.arange(80)
    for label, period in (("fast", 8.0), ("slow", 32.0)):
        (root / label).mkdir(parents=True)
        for i in range(12):
            phase = rng.uniform(0, 2 * np.pi, (3, 1))
            series = np.sin(2 * np.pi * t / period + phase) + 0.1 * rng.standard_normal((3, 80))
            np.save(root / label / f"{i:03d}.npy", series.astype(np.float32))
    (root / "slow" / "broken.npy").write_bytes(b"\x93NUMPY truncated")
    (root / "slow" / "notes.txt").write_text("not a sample")


def test_shards_train_export_and_eval_through_the_cli(installed_plugin, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "ts-cli", "run_dir": str(tmp_path / "run"), "max_steps": 3, "modality": TINY_MODALITY,
        "data": {"train_shards": str(tmp_path / "shards"), "global_batch_size": 8, "samples_per_epoch": 24,
                 "num_workers": 0, "shuffle_buffer": 16},
        "optim": {"epochs": 1, "warmup_epochs": 0}, "engine": {"precision": "fp32"},
        "log": {"every_steps": 1}, "checkpoint": {"every_steps": 1000},
    }))

    write_npy_folder(tmp_path / "npy", np.random.default_rng(0))
    run("jepa", "shards", str(tmp_path / "npy"), str(tmp_path / "shards"), "--recipe", str(recipe), "--workers", "1")
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["total"] == 24 and manifest["classes"] == ["fast", "slow"]
    assert [Path(s["path"]).name for s in manifest["skipped"]] == ["broken.npy"] and manifest["ignored_files"] == 1

    run("jepa", "demo-data", str(tmp_path / "demo"), "--modality", PLUGIN, "--num-train", "48", "--num-val", "24",
        "--classes", "4", "--max-count", "16", "--workers", "1")
    demo = {split: json.loads((tmp_path / "demo" / split / "manifest.json").read_text()) for split in ("train", "val")}
    assert (demo["train"]["total"], demo["val"]["total"]) == (48, 24) and len(demo["train"]["classes"]) == 4

    run("jepa", "train", str(recipe))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]

    exported = tmp_path / "encoder.pt"
    run("jepa", "export", str(tmp_path / "run"), "--out", str(exported))
    assert exported.is_file()

    proc = run("jepa", "eval", str(exported), "--train-shards", str(tmp_path / "demo" / "train"),
               "--val-shards", str(tmp_path / "demo" / "val"), "--protocol", "linear,knn", "--trust-torchscript", "--json", "-")
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert report["source_kind"] == "torchscript" and (report["num_train"], report["num_val"], report["num_classes"]) == (48, 24, 4)
    assert {r["protocol"] for r in report["results"]} == {"linear", "knn"}
    assert all(0.0 <= r["top1"] <= 1.0 for r in report["results"])


def test_nothing_in_the_core_names_the_plugin():
    names = (PLUGIN, PACKAGE, MODULE, "TimeSeries")
    hits = [f"{path.relative_to(ROOT)}: {name}" for path in sorted((ROOT / "jepa").rglob("*"))
            if path.is_file() and path.suffix in {".py", ".toml", ".txt", ".md", ".yaml", ".json"}
            for name in names if name.lower() in path.read_text(errors="replace").lower()]
    assert not hits, f"the core names the example plugin: {hits}"
