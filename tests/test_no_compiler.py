"""Training builds no C++ extension, and whatever is built stays in its Python environment.

DeepSpeed's CPU accelerator JIT-compiles a shared-memory comm op (``deepspeed_shm_comm``) at every
process-group setup unless told not to (:func:`jepa.engine.dist._skip_shm_comm_op`); minimal containers
have no compiler, and environments sharing ``~/.cache/torch_extensions`` rebuilt it for a minute
each time they alternated (:func:`jepa.engine.use_environment_extensions_dir`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from jepa.engine import Engine, use_environment_extensions_dir
from jepa.recipe import EngineConfig, OptimConfig

from tiny_recipes import tiny_image_recipe


def _without_compiler(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose PATH holds no compiler (nor ninja) and whose CXX / CC name no file,
    with a fresh, empty extensions folder; returns it and the folder."""
    empty_bin, extensions = tmp_path / "bin", tmp_path / "torch_extensions"
    empty_bin.mkdir()
    extensions.mkdir()
    env = {**os.environ, "PATH": str(empty_bin), "CXX": str(tmp_path / "no" / "c++"), "CC": str(tmp_path / "no" / "cc"),
           "TORCH_EXTENSIONS_DIR": str(extensions), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    return env, extensions


@pytest.mark.parametrize("nproc", [1, 2])
def test_cpu_training_needs_no_compiler_and_builds_nothing(tmp_path, nproc):
    env, extensions = _without_compiler(tmp_path)
    recipe = tiny_image_recipe(0)
    recipe["run_dir"] = str(tmp_path / "run")
    recipe_file = tmp_path / "tiny.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [sys.executable, *launcher, "-m", "jepa.cli", "train", str(recipe_file), "--resume", "none"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "finished at step 8" in out.stdout, out.stdout[-3000:]
    assert list(extensions.iterdir()) == [], "training built a C++ extension"


def test_extensions_dir_defaults_to_the_environment_when_the_engine_starts(monkeypatch):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    Engine(torch.nn.Sequential(torch.nn.Linear(4, 4)), engine_cfg=EngineConfig(precision="fp32"), optim_cfg=OptimConfig(),
           global_batch_size=1).close()
    # set for the rest of the process, so the processes it starts (loader workers, decoders) inherit it
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(Path(sys.prefix).resolve() / "var" / "torch_extensions")


def test_each_environment_has_its_own_extensions_dir(monkeypatch, tmp_path):
    folders = []
    for env_name in ("venv_a", "venv_b"):
        monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
        monkeypatch.setattr(sys, "prefix", str(tmp_path / env_name))
        folders.append(use_environment_extensions_dir())
        assert os.environ["TORCH_EXTENSIONS_DIR"] == str(folders[-1])
    assert folders == [tmp_path / "venv_a" / "var" / "torch_extensions", tmp_path / "venv_b" / "var" / "torch_extensions"]

    # read-only environments (a system Python): a folder of the user's cache, still one per environment
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    read_only = []
    for env_name in ("venv_a", "venv_b"):
        monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
        monkeypatch.setattr(sys, "prefix", str(tmp_path / env_name))
        read_only.append(use_environment_extensions_dir())
    assert read_only[0] != read_only[1]
    assert all(f.parent == tmp_path / "cache" / "torch_extensions" and f.name.startswith("venv_") for f in read_only)


def test_a_user_extensions_dir_is_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "mine"))
    assert use_environment_extensions_dir() == tmp_path / "mine"
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(tmp_path / "mine")
