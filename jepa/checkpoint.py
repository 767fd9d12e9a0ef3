"""Checkpoints: atomic, complete-or-absent, exactly resumable, with a consolidated weights file.

Layout of a run directory (the file names and ``models.pt`` keys are public API)::

    RUN_DIR/checkpoints/
        latest                 "step_000123": the checkpoint written last (written atomically after it is complete)
        step_000123/
            models.pt          rank 0: {"format_version": 1, "encoder", "predictor", "target_encoder",
                               "step", "recipe"}: full fp32 state dicts (gathered under ZeRO-3)
            meta.json          step, world size, ZeRO stage, precision
            rank_00000.pt      per rank: data-loader position and RNG states (tensors and plain types)
            deepspeed/         DeepSpeed's model / optimiser / ZeRO-shard files
            digests.json       {"format_version": 1, "algorithm": "sha256", "files": {path: {"size", "sha256"}}}
                               for every other file (written last; the ranks hash their shares in parallel)

A checkpoint is written into ``step_000123.tmp/`` and renamed once every rank has finished
(a barrier), so a directory without ``.tmp`` is complete by construction; a crash mid-write
leaves only a ``.tmp`` directory, which resuming ignores and the next save removes. The run
directory must be on a filesystem every node sees (the training loop checks this).

Integrity: a checkpoint is *valid* when every file its ``digests.json`` lists is there with
that size and SHA-256. Resuming verifies the checkpoint it loads (``--resume auto`` tries the one
``latest`` names, then the others newest first, and says which it skipped and why); export and
evaluation verify ``models.pt``. Pruning keeps the checkpoint just written (the newest valid one)
and the newest older ones; checkpoints of a later step than the one just written (left behind
when a run was resumed from an older checkpoint) are left alone until the run overwrites them.

Safety: every file is read with ``torch.load(weights_only=True)`` (DeepSpeed's through
:class:`~jepa.engine.Engine`), so a crafted file cannot run code; digests guard against
corruption, not against someone who can write the run directory.

A checkpoint that does not fit the recipe fails loudly, naming the mismatched keys, shapes and
recipe fields; nothing is ever partially loaded or silently restarted from step 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import Tensor

from jepa.recipe import Recipe, parse_recipe
from jepa.weights import safe_load, state_problems

if TYPE_CHECKING:  # the engine imports DeepSpeed; this module only talks to its object
    from jepa.engine import Engine

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DIGESTS_VERSION = 1
CHECKPOINTS = "checkpoints"
MODELS_FILE = "models.pt"
META_FILE = "meta.json"
DIGESTS_FILE = "digests.json"
LATEST_FILE = "latest"
_STEP_DIR = re.compile(r"^step_(\d{6,})$")

# Recipe fields that may change between a checkpoint and the run resuming from it; any other
# difference (model shape, optimisation, schedules, batch, data source, seed, precision, ZeRO
# stage) would make the resumed run a different run, so it is refused.
RESUMABLE_CHANGES = (
    "name", "run_dir", "max_steps", "checkpoint.", "log.", "engine.compile", "engine.activation_checkpointing",
    "data.prefetch_factor", "data.max_skip_rate", "data.min_samples_for_skip_check",
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


def resume_candidates(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints in the order ``--resume auto`` tries them: the one ``latest`` names
    (the last one written, also after a run resumed from an older checkpoint), then newest first."""
    found = [path for _, path in reversed(complete_checkpoints(run_dir))]
    latest = Path(run_dir) / CHECKPOINTS / LATEST_FILE
    try:
        named = latest.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return found
    first = [p for p in found if p.name == named]
    return first + [p for p in found if p.name != named]


# --------------------------------------------------------------------------- integrity


def file_digest(path: Path) -> str:
    """SHA-256 of a file, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _checkpoint_files(directory: Path) -> list[str]:
    """Paths (relative, '/'-separated, sorted) of every file of a checkpoint but its digests."""
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                  if p.is_file() and p.name != DIGESTS_FILE)


def _read_digests(directory: Path) -> dict[str, dict[str, Any]]:
    """The ``files`` table of a checkpoint's digests.json.

    Raises:
        ValueError: it is missing or unreadable.
    """
    path = directory / DIGESTS_FILE
    try:
        table = json.loads(path.read_text())
        files = table["files"]
        if table.get("format_version") != DIGESTS_VERSION or table.get("algorithm") != "sha256" or not isinstance(files, dict):
            raise ValueError(f"format_version {table.get('format_version')!r}, algorithm {table.get('algorithm')!r}")
        return files
    except FileNotFoundError:
        raise ValueError(f"no {DIGESTS_FILE}, so its files cannot be verified (written by an older jepa, or copied "
                         "incompletely)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{DIGESTS_FILE} is unreadable ({type(exc).__name__}: {exc})") from None


def _file_problem(directory: Path, name: str, expected: Any) -> str | None:
    """Why ``directory/name`` does not match its digest entry, or None."""
    path = directory / name
    try:
        size = path.stat().st_size
    except OSError:
        return f"{name} is missing"
    if not isinstance(expected, dict) or size != expected.get("size"):
        return f"{name} has {size} bytes, {DIGESTS_FILE} says {expected.get('size') if isinstance(expected, dict) else '?'}"
    if file_digest(path) != expected.get("sha256"):
        return f"{name} does not match its SHA-256 (the file changed after it was written)"
    return None


def verify_checkpoint(directory: Path, only: Callable[[int], bool] = lambda i: True) -> list[str]:
    """Problems that make a checkpoint invalid (empty when every file matches its digest).

    Args:
        directory: a complete checkpoint directory.
        only: which files (by index in the sorted digest table) to hash, so that ranks can share
            the work; sizes and presence are checked for every file.
    """
    try:
        files = _read_digests(directory)
    except ValueError as exc:
        return [str(exc)]
    problems = [f"{name} is not listed in {DIGESTS_FILE}" for name in (MODELS_FILE, META_FILE) if name not in files]
    for i, name in enumerate(sorted(files)):
        expected = files[name]
        if not only(i):
            path = directory / name
            if not path.is_file():
                problems.append(f"{name} is missing")
            elif not isinstance(expected, dict) or path.stat().st_size != expected.get("size"):
                problems.append(f"{name} has another size than {DIGESTS_FILE} says")
            continue
        problem = _file_problem(directory, name, expected)
        if problem:
            problems.append(problem)
    return problems


def verify_collectively(engine: Engine, directory: Path) -> list[str]:
    """:func:`verify_checkpoint` with the hashing shared by the ranks; every rank gets every problem."""
    world, rank = engine.dist.world_size, engine.dist.rank
    mine = verify_checkpoint(directory, only=lambda i: i % world == rank)
    return sorted({p for problems in engine.all_gather_object(mine) for p in problems})


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

    # Digests of every file, the hashing shared by the ranks (rank 0's listing, so all hash the same files).
    [names] = engine.all_gather_object(_checkpoint_files(tmp) if engine.dist.is_main else None)[:1]
    world = engine.dist.world_size
    mine = {n: {"size": (tmp / n).stat().st_size, "sha256": file_digest(tmp / n)}
            for i, n in enumerate(names) if i % world == rank}
    digests = {k: v for part in engine.all_gather_object(mine) for k, v in part.items()}
    if engine.dist.is_main:
        table = {"format_version": DIGESTS_VERSION, "algorithm": "sha256", "files": dict(sorted(digests.items()))}
        (tmp / DIGESTS_FILE).write_text(json.dumps(table, indent=1) + "\n")
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
        _prune(root, keep_last, step)
    engine.barrier()
    return final


def _prune(root: Path, keep_last: int, written: int) -> None:
    """Keep the checkpoint just written (step ``written``, valid by construction) and the newest
    ``keep_last - 1`` older ones; leave later steps alone (see the module docstring); remove
    leftovers of crashed saves."""
    older = [path for step, path in complete_checkpoints(root.parent) if step < written]
    for path in older[:max(0, len(older) - (keep_last - 1))]:
        doomed = path.with_name(path.name + ".deleting.tmp")  # rename first: a crash mid-delete leaves only *.tmp
        os.replace(path, doomed)
        shutil.rmtree(doomed)
    for child in root.iterdir():
        if child.is_dir() and child.name.endswith(".tmp"):
            shutil.rmtree(child)


# --------------------------------------------------------------------------- resuming


def resolve_resume(resume: str, run_dir: str | Path,
                   verify: Callable[[Path], list[str]] = verify_checkpoint) -> Path | None:
    """The checkpoint to resume from.

    Args:
        resume: ``"auto"``: the first valid checkpoint of :func:`resume_candidates` in ``run_dir``
            (None when there is none; invalid ones are skipped with a warning naming why);
            ``"none"``: start fresh (refused when ``run_dir`` already holds checkpoints);
            a path: that checkpoint directory, or the newest valid checkpoint of that run directory.
        run_dir: the run directory of the recipe.
        verify: problems of a checkpoint (default :func:`verify_checkpoint`; the training loop
            shares the hashing between ranks with :func:`verify_collectively`).

    Raises:
        ValueError: the path holds no valid checkpoint, ``"auto"`` finds checkpoints but none is
            valid, or ``"none"`` would overwrite a run.
    """
    run_dir = Path(run_dir)
    if resume == "none":
        existing = newest_checkpoint(run_dir)
        if existing is not None:
            raise ValueError(f"{run_dir} already holds checkpoints (newest: {existing.name}) and --resume none would "
                             "overwrite them; pass --resume auto to continue that run, or set run_dir to a new directory")
        return None
    if resume == "auto":
        return _first_valid(resume_candidates(run_dir), verify, f"--resume auto in {run_dir}")
    path = Path(resume)
    chosen = _checkpoint_dir(path, "--resume")
    if chosen != path:  # a run directory: its first valid checkpoint
        return _first_valid(resume_candidates(path), verify, f"--resume {path}")
    problems = verify(chosen)
    if problems:
        raise ValueError(f"--resume {chosen}: the checkpoint is invalid: {'; '.join(problems)}; resume from another "
                         "checkpoint (pass the run directory to take the newest valid one)")
    return chosen


def _first_valid(candidates: list[Path], verify: Callable[[Path], list[str]], what: str) -> Path | None:
    """The first candidate without problems, warning about each one skipped (None if there are none)."""
    skipped = []
    for path in candidates:
        problems = verify(path)
        if not problems:
            for line in skipped:
                log.warning("%s: skipped %s", what, line)
            if skipped:
                log.warning("%s: resuming from %s", what, path)
            return path
        skipped.append(f"{path.name}: {'; '.join(problems)}")
    if skipped:
        raise ValueError(f"{what}: no valid checkpoint ({' | '.join(skipped)}); move the broken checkpoints out of "
                         "the run directory to start over, or restore them")
    return None


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


def _read_models(path: Path) -> dict[str, Any]:
    models = safe_load(path, "a jepa weights file (models.pt of `jepa train`)")
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
    problems = [f"{part}: {p}" for part in ("encoder", "predictor") for p in state_problems(expected[part], models[part])]
    problems += [f"target_encoder: {p}" for p in state_problems(expected["encoder"], models["target_encoder"])]
    diffs = recipe_differences(models["recipe"], recipe.model_dump(mode="json"))
    recipe_note = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in diffs)
    if problems:
        raise ValueError(f"{path}: the checkpoint does not fit the model of this recipe: {'; '.join(problems)}"
                         + (f". Recipe fields that differ: {recipe_note}" if diffs else "")
                         + ". Resume with the recipe that wrote it, or start a new run (another run_dir)")
    if diffs:
        raise ValueError(f"{path}: the recipe differs from the one that wrote this checkpoint in fields that shape the "
                         f"model or the optimisation: {recipe_note}. Restore them, or start a new run (another run_dir)")
    rank_state = safe_load(path / f"rank_{engine.dist.rank:05d}.pt", "a per-rank state file of `jepa train`", mmap=False)
    engine.load_state(path, models["target_encoder"])
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
        if (path.parent / DIGESTS_FILE).is_file():  # a models.pt inside a checkpoint: verify it
            _verify_models(path.parent)
    else:
        chosen = _checkpoint_dir(path, "weights")
        if chosen == path:
            _verify_models(chosen)
        else:
            chosen = _first_valid(resume_candidates(path), _models_problems, f"weights of {path}")
            assert chosen is not None  # _checkpoint_dir found a complete one
        file = chosen / MODELS_FILE
    models = _read_models(file)
    recipe = parse_recipe(models["recipe"], source=f"{file} (recipe saved with the weights)")
    return LoadedWeights(recipe=recipe, step=int(models["step"]), encoder=models["encoder"],
                         predictor=models["predictor"], target_encoder=models["target_encoder"], path=file)


def _models_problems(directory: Path) -> list[str]:
    """Problems of a checkpoint's ``models.pt`` (what export and evaluation read)."""
    try:
        files = _read_digests(directory)
    except ValueError as exc:
        return [str(exc)]
    if MODELS_FILE not in files:
        return [f"{MODELS_FILE} is not listed in {DIGESTS_FILE}"]
    problem = _file_problem(directory, MODELS_FILE, files[MODELS_FILE])
    return [problem] if problem else []


def _verify_models(directory: Path) -> None:
    problems = _models_problems(directory)
    if problems:
        raise ValueError(f"{directory}: the checkpoint is invalid: {'; '.join(problems)}; use another checkpoint "
                         "(pass the run directory to take the newest valid one)")
