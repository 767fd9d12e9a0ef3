"""Checkpoints: atomic, complete-or-absent, exactly resumable, with a consolidated weights file.

Layout of a run directory (the file names and ``models.pt`` keys are public API)::

    RUN_DIR/checkpoints/
        latest                 "step_000123" (written atomically after the directory is complete)
        step_000123/
            models.pt          rank 0: {"format_version": 1, "encoder", "predictor", "target_encoder",
                               "step", "recipe"}: full fp32 state dicts (gathered under ZeRO-3)
            meta.json          step, world size, ZeRO stage, precision
            rank_00000.pt      per rank: data-loader position and RNG states
            deepspeed/         DeepSpeed's model / optimiser / ZeRO-shard files

A checkpoint is written into ``step_000123.tmp/`` and renamed once every rank has finished
(a barrier), so a directory without ``.tmp`` is complete by construction; a crash mid-write
leaves only a ``.tmp`` directory, which resuming ignores and the next save removes. The run
directory must be on a filesystem every node sees (the training loop checks this).

A checkpoint that does not fit the recipe fails loudly, naming the mismatched keys, shapes and
recipe fields; nothing is ever partially loaded or silently restarted from step 0.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from jepa.recipe import Recipe, parse_recipe

if TYPE_CHECKING:  # the engine imports DeepSpeed; this module only talks to its object
    from jepa.engine import Engine

FORMAT_VERSION = 1
CHECKPOINTS = "checkpoints"
MODELS_FILE = "models.pt"
META_FILE = "meta.json"
LATEST_FILE = "latest"
_STEP_DIR = re.compile(r"^step_(\d{6,})$")

# Recipe fields that may change between a checkpoint and the run resuming from it; any other
# difference (model shape, optimisation, schedules, batch, data source, seed, precision, ZeRO
# stage) would make the resumed run a different run, so it is refused.
RESUMABLE_CHANGES = (
    "name", "run_dir", "max_steps", "checkpoint.", "log.", "engine.compile", "engine.activation_checkpointing",
    "data.train_shards", "data.num_workers", "data.prefetch_factor", "data.max_skip_rate",
    "data.min_samples_for_skip_check",
)


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def complete_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first (``*.tmp`` directories are incomplete and ignored)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and (child / MODELS_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def newest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = complete_checkpoints(run_dir)
    return found[-1][1] if found else None


# --------------------------------------------------------------------------- RNG states


def capture_rng() -> dict[str, Any]:
    """Python, NumPy, torch CPU and (if present) CUDA generator states."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.copy()), "pos": np_pos,
                  "has_gauss": np_has_gauss, "gauss": np_gauss},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy(), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- saving


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(engine: Engine, run_dir: str | Path, step: int, recipe: Recipe, loader_state: dict[str, Any],
                    keep_last: int) -> Path:
    """Write a complete checkpoint of optimiser step ``step`` (collective: every rank calls it).

    Returns:
        The final checkpoint directory (``RUN_DIR/checkpoints/step_000123``).
    """
    root = Path(run_dir) / CHECKPOINTS
    final = root / step_dir_name(step)
    tmp = root / (final.name + ".tmp")
    rank = engine.dist.rank
    if engine.dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    engine.barrier()

    engine.save_state(tmp)
    torch.save({"format_version": FORMAT_VERSION, "step": step, "loader": loader_state, "rng": capture_rng()},
               tmp / f"rank_{rank:05d}.pt")
    weights = engine.full_state_dicts()  # collective under ZeRO-3
    if engine.dist.is_main:
        assert weights is not None
        torch.save({"format_version": FORMAT_VERSION, **weights, "step": step,
                    "recipe": recipe.model_dump(mode="json")}, tmp / MODELS_FILE)
        meta = {"format_version": FORMAT_VERSION, "step": step, "world_size": engine.dist.world_size,
                "zero_stage": recipe.engine.zero_stage, "precision": recipe.engine.precision}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    engine.barrier()

    if engine.dist.is_main:
        replaced = None
        if final.exists():  # same step saved before (e.g. a run resumed at its last step): swap it out
            replaced = root / (final.name + ".replaced.tmp")
            if replaced.exists():
                shutil.rmtree(replaced)
            os.replace(final, replaced)
        os.replace(tmp, final)
        _write_atomic(root / LATEST_FILE, final.name + "\n")
        if replaced is not None:
            shutil.rmtree(replaced)
        _prune(root, keep_last)
    engine.barrier()
    return final


def _prune(root: Path, keep_last: int) -> None:
    """Keep the newest ``keep_last`` complete checkpoints; remove leftovers of crashed saves."""
    complete = complete_checkpoints(root.parent)
    for _, path in complete[:-keep_last]:
        doomed = path.with_name(path.name + ".deleting.tmp")  # rename first: a crash mid-delete leaves only *.tmp
        os.replace(path, doomed)
        shutil.rmtree(doomed)
    for child in root.iterdir():
        if child.is_dir() and child.name.endswith(".tmp"):
            shutil.rmtree(child)


# --------------------------------------------------------------------------- resuming


def resolve_resume(resume: str, run_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: ``"auto"`` (newest complete one in ``run_dir`` or None),
    ``"none"`` (start fresh; refused when ``run_dir`` already holds checkpoints) or a path to a
    checkpoint directory or run directory.

    Raises:
        ValueError: the path holds no complete checkpoint, or ``"none"`` would overwrite a run.
    """
    run_dir = Path(run_dir)
    if resume == "auto":
        return newest_checkpoint(run_dir)
    if resume == "none":
        existing = newest_checkpoint(run_dir)
        if existing is not None:
            raise ValueError(f"{run_dir} already holds checkpoints (newest: {existing.name}) and --resume none would "
                             "overwrite them; pass --resume auto to continue that run, or set run_dir to a new directory")
        return None
    return _checkpoint_dir(Path(resume), "--resume")


def _checkpoint_dir(path: Path, what: str) -> Path:
    """A complete checkpoint directory from a checkpoint or run directory path."""
    if not path.exists():
        raise ValueError(f"{what} {path}: no such file or directory; pass a run directory or a checkpoint directory")
    if path.is_dir() and path.name.endswith(".tmp"):
        raise ValueError(f"{what} {path}: an incomplete checkpoint (a save interrupted mid-write); "
                         "pass the run directory to use its newest complete checkpoint")
    if path.is_dir() and (path / MODELS_FILE).is_file():
        return path
    if path.is_dir():
        newest = newest_checkpoint(path)
        if newest is None:
            raise ValueError(f"{what} {path}: no complete checkpoint in this directory (looked for "
                             f"{CHECKPOINTS}/step_NNNNNN/{MODELS_FILE}); is it a run directory of `jepa train`?")
        return newest
    raise ValueError(f"{what} {path}: not a directory; pass a run directory or a checkpoint directory")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def recipe_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(field, saved, current)`` for every recipe field that differs and may not change on resume."""
    a, b = _flatten(saved), _flatten(current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key) and not any(key == p or (p.endswith(".") and key.startswith(p)) for p in RESUMABLE_CHANGES):
            diffs.append((key, a.get(key, "<absent>"), b.get(key, "<absent>")))
    return diffs


def state_mismatches(expected: dict[str, tuple[int, ...]], state: dict[str, Tensor]) -> list[str]:
    """Human-readable differences between expected full shapes and a state dict (empty when it fits)."""
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        problems.append(f"missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {expected[k]}"
              for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k])]
    if shapes:
        problems.append(f"shape mismatches {_short(shapes)}")
    return problems


def _short(items: list[str], limit: int = 8) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return "[" + ", ".join(items[:limit]) + "]" + more


def _read_models(path: Path) -> dict[str, Any]:
    try:
        models = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the path and the fix
        raise ValueError(f"{path}: cannot be read as a jepa weights file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(models, dict) or models.get("format_version") != FORMAT_VERSION:
        version = models.get("format_version") if isinstance(models, dict) else None
        raise ValueError(f"{path}: not a jepa models.pt of format_version {FORMAT_VERSION} (got {version!r}); "
                         "it was written by another tool or jepa version")
    return models


@dataclass(frozen=True)
class ResumePoint:
    """What a loaded checkpoint hands back to the loop."""

    step: int
    loader_state: dict[str, Any]
    path: Path


def load_checkpoint(engine: Engine, path: Path, recipe: Recipe) -> ResumePoint:
    """Restore engine state, target encoder, RNG states and this rank's loader position.

    Raises:
        ValueError: the checkpoint was written by another number of processes, its weights do
            not fit the model (keys and shapes named), or its recipe differs in fields that
            shape the model or the optimisation (fields named).
    """
    if not (path / META_FILE).is_file():
        raise ValueError(f"{path}: has {MODELS_FILE} but no {META_FILE}, so it holds weights only and cannot be resumed "
                         "from; resume from a checkpoint directory written by `jepa train`")
    meta = json.loads((path / META_FILE).read_text())
    if meta["world_size"] != engine.dist.world_size:
        raise ValueError(f"{path}: written by {meta['world_size']} processes, now {engine.dist.world_size}; the ZeRO shards "
                         "and per-rank data positions belong to that world size: resume with the same number of processes")
    models = _read_models(path / MODELS_FILE)
    expected = engine.state_shapes()
    problems = [f"{part}: {p}" for part in ("encoder", "predictor") for p in state_mismatches(expected[part], models[part])]
    problems += [f"target_encoder: {p}" for p in state_mismatches(expected["encoder"], models["target_encoder"])]
    diffs = recipe_differences(models["recipe"], recipe.model_dump(mode="json"))
    recipe_note = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in diffs)
    if problems:
        raise ValueError(f"{path}: the checkpoint does not fit the model of this recipe: {'; '.join(problems)}"
                         + (f". Recipe fields that differ: {recipe_note}" if diffs else "")
                         + ". Resume with the recipe that wrote it, or start a new run (another run_dir)")
    if diffs:
        raise ValueError(f"{path}: the recipe differs from the one that wrote this checkpoint in fields that shape the "
                         f"model or the optimisation: {recipe_note}. Restore them, or start a new run (another run_dir)")
    engine.load_state(path, models["target_encoder"])
    rank_state = torch.load(path / f"rank_{engine.dist.rank:05d}.pt", map_location="cpu", weights_only=False)
    restore_rng(rank_state["rng"])
    return ResumePoint(step=int(models["step"]), loader_state=rank_state["loader"], path=path)


# --------------------------------------------------------------------------- weights for export / evaluation


@dataclass(frozen=True)
class LoadedWeights:
    """Full fp32 weights of a training checkpoint (``jepa export`` / ``jepa eval`` read these).

    Attributes:
        recipe: the validated recipe that trained them (its modality must be installed).
        step: optimiser steps done when they were saved.
        encoder, predictor, target_encoder: state dicts (CPU tensors, no ``module.`` prefixes).
        path: the ``models.pt`` file they came from.
    """

    recipe: Recipe
    step: int
    encoder: dict[str, Tensor]
    predictor: dict[str, Tensor]
    target_encoder: dict[str, Tensor]
    path: Path


def load_model_weights(path: str | Path) -> LoadedWeights:
    """Weights of a run directory (its newest complete checkpoint), a checkpoint directory or a ``models.pt``.

    Raises:
        ValueError: the path does not exist, holds no complete checkpoint, or is not a jepa weights file.
    """
    path = Path(path)
    if path.is_file():
        file = path
    else:
        file = _checkpoint_dir(path, "weights") / MODELS_FILE
    models = _read_models(file)
    recipe = parse_recipe(models["recipe"], source=f"{file} (recipe saved with the weights)")
    return LoadedWeights(recipe=recipe, step=int(models["step"]), encoder=models["encoder"],
                         predictor=models["predictor"], target_encoder=models["target_encoder"], path=file)
