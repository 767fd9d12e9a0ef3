"""``jepa new-modality NAME DIR`` writes a plugin package that works as written.

The generated package is installed (editable, offline) into a throwaway virtual environment that
sees this environment's packages (a ``.pth`` file adds its site-packages, so jepa's own editable
install is found too), never into this one: every other session's contract suite would collect
it. There, the package's own test file runs jepa's contract suite on it, and the CLI takes it
from generated demo data through training, both export formats and evaluation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jepa.cli import app
from jepa.scaffold import FILES, render, template_values

ROOT = Path(__file__).resolve().parents[1]
NAME = "scaffold_probe"  # underscores: checks the package, distribution and class spellings
PACKAGE = template_values(NAME)["package"]


def new_modality(*args: str):
    return CliRunner().invoke(app, ["new-modality", *args])


# --------------------------------------------------------------------------- the command, in process


@pytest.mark.parametrize("name, says", [
    ("Audio", "lower-case"), ("2d", "lower-case"), ("my-audio", "lower-case"), ("a__b", "lower-case"),
    ("audio_", "lower-case"), ("x" * 33, "at most 32"), ("image", "already registered"),
])
def test_bad_names_are_one_line_errors(name, says, tmp_path):
    res = new_modality(name, str(tmp_path / "out"))
    assert res.exit_code == 2, res.output
    assert says in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_a_folder_that_is_not_empty_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    res = new_modality(NAME, str(tmp_path / "out"))
    assert res.exit_code == 2 and "not an empty folder" in res.output, res.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    (tmp_path / "file").write_text("x")
    assert new_modality(NAME, str(tmp_path / "file")).exit_code == 2


def test_writes_the_whole_package_into_an_empty_folder(tmp_path):
    (tmp_path / "out").mkdir()
    res = new_modality(NAME, str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    written = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert written == sorted(render(NAME))
    assert written == sorted([
        "pyproject.toml", "README.md", "recipes/scaffold_probe_demo.yaml", "tests/test_scaffold_probe_contract.py",
        *(f"{PACKAGE}/{m}.py" for m in ("__init__", "config", "transformer", "masks", "transforms", "demo_data")),
    ])
    pyproject = (tmp_path / "out" / "pyproject.toml").read_text()
    assert 'name = "jepa-scaffold-probe"' in pyproject
    assert f'scaffold_probe = "{PACKAGE}:ScaffoldProbeModality"' in pyproject
    for rel, text in render(NAME).items():  # every placeholder substituted; Python files compile
        assert "$" not in text, rel
        if rel.endswith(".py"):
            compile(text, rel, "exec")


def test_templates_are_package_data():
    """The wheel carries jepa/scaffold/templates/*.tmpl (pyproject's package-data), one per written file."""
    import tomllib

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["jepa.scaffold"]
    templates = ROOT / "jepa" / "scaffold" / "templates"
    shipped = {p.name for pattern in globs for p in templates.parent.glob(pattern)}
    assert set(FILES.values()) <= shipped and shipped == {p.name for p in templates.iterdir()}


# --------------------------------------------------------------------------- the package, installed


def _run(python: Path, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # not the test toy: a user's environment
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", COLUMNS="200", NO_COLOR="1")
    proc = subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the venv's python, the plugin folder): the package written by the CLI, installed in a throwaway venv."""
    root = tmp_path_factory.mktemp("new-modality")
    plugin = root / "plugin"
    res = new_modality(NAME, str(plugin))
    assert res.exit_code == 0, res.output
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # addsitedir (not a bare path) also runs this environment's .pth files: jepa's editable install
    Path(purelib, "_jepa_parent_env.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    _run(python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", "--no-build-isolation",
         "--no-index", "-e", str(plugin), cwd=root)
    return python, plugin


def test_the_generated_tests_run_the_contract_suite_and_pass(installed):
    python, plugin = installed
    start = time.monotonic()
    proc = _run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=plugin)
    assert " failed" not in proc.stdout and " error" not in proc.stdout, proc.stdout
    # every check, every registered objective (at least ijepa and lejepa)
    assert int(proc.stdout.split(" passed")[0].split()[-1]) >= 10, proc.stdout
    print(f"generated contract suite: {time.monotonic() - start:.1f} s")


@pytest.mark.slow
def test_demo_data_train_export_and_eval_through_the_cli(installed):
    python, plugin = installed
    jepa = ("-m", "jepa.cli")
    assert NAME in _run(python, *jepa, "modalities", cwd=plugin).stdout
    _run(python, *jepa, "demo-data", "data/demo", "--modality", NAME, "--num-train", "64", "--num-val", "32",
         cwd=plugin)
    manifest = json.loads((plugin / "data" / "demo" / "train" / "manifest.json").read_text())
    assert manifest["total"] == 64 and len(manifest["classes"]) == 4
    _run(python, *jepa, "train", f"recipes/{NAME}_demo.yaml", "--set", "max_steps=3", "--set", "run_dir=runs/demo",
         "--set", "data.train_shards=data/demo/train", "--set", "data.global_batch_size=8", "--set",
         "data.num_workers=0", "--set", "log.every_steps=1", cwd=plugin)
    assert len((plugin / "runs" / "demo" / "metrics.jsonl").read_text().splitlines()) == 3
    _run(python, *jepa, "export", "runs/demo", "--out", "encoder.pt", cwd=plugin)
    _run(python, *jepa, "export", "runs/demo", "--out", "encoder.pt2", "--format", "torch-export", cwd=plugin)
    proc = _run(python, *jepa, "eval", "encoder.pt", "--trust-torchscript", "--train-shards", "data/demo/train",
                "--val-shards", "data/demo/val", "--protocol", "knn", "--json", "-", cwd=plugin)
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert report["source_kind"] == "torchscript" and (report["num_train"], report["num_val"]) == (64, 32)
    assert all(0.0 <= r["top1"] <= 1.0 for r in report["results"])
