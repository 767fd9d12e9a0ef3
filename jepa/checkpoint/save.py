"""Writing a checkpoint: every rank's share into ``step_N.tmp/``, digests, then one rename, the
``latest`` pointer and pruning.

A write that fails (a full disk: torch and DeepSpeed report it as a ``RuntimeError`` of torch's
zip writer) raises an ``OSError`` naming the checkpoint (:func:`jepa.outputs.write_errors`); the
previous checkpoints and ``latest`` are untouched, and the next save removes the ``.tmp`` left.
A checkpoint folder that is a symbolic link (an old checkpoint restored with ``ln -s``) is pruned
by removing the link, never what it points to (:func:`jepa.outputs.remove_tree`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from jepa.checkpoint.integrity import checkpoint_files, file_digest
from jepa.checkpoint.layout import (CHECKPOINTS, DIGESTS_FILE, DIGESTS_VERSION, FORMAT_VERSION, LATEST_FILE, META_FILE,
                                    MODELS_FILE, complete_checkpoints, step_dir_name)
from jepa.checkpoint.rng import capture_rng
from jepa.outputs import remove_tree, write_errors
from jepa.recipe import Recipe

if TYPE_CHECKING:
    from jepa.engine import Engine


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
        remove_tree(tmp)
        tmp.mkdir()
    engine.barrier()

    with write_errors(tmp, f"the checkpoint of step {step}", "run_dir"):
        engine.save_state(tmp)  # DeepSpeed writes with torch.save too
        torch.save({"format_version": FORMAT_VERSION, "step": step, "loader": loader_state, "rng": capture_rng()},
                   tmp / f"rank_{rank:05d}.pt")
    weights = engine.full_state_dicts()  # collective under ZeRO-3
    if engine.dist.is_main:
        assert weights is not None
        with write_errors(tmp / MODELS_FILE, f"the checkpoint of step {step}", "run_dir"):
            torch.save({"format_version": FORMAT_VERSION, **weights, "step": step,
                        "recipe": recipe.model_dump(mode="json")}, tmp / MODELS_FILE)
        meta = {"format_version": FORMAT_VERSION, "step": step, "world_size": engine.dist.world_size,
                "micro_batch_size": engine.micro_batch_per_rank, "grad_accum_steps": engine.grad_accum_steps,
                "zero_stage": recipe.engine.zero_stage, "precision": recipe.engine.precision}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    engine.barrier()

    # Digests of every file, the hashing shared by the ranks (rank 0's listing, so all hash the same files).
    [names] = engine.all_gather_object(checkpoint_files(tmp) if engine.dist.is_main else None)[:1]
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
        if final.exists() or final.is_symlink():  # saved before (a run resumed at its last step): swap it out
            replaced = root / (final.name + ".replaced.tmp")
            remove_tree(replaced)
            os.replace(final, replaced)
        os.replace(tmp, final)
        _write_atomic(root / LATEST_FILE, final.name + "\n")
        if replaced is not None:
            remove_tree(replaced)
        _prune(root, keep_last, step)
    engine.barrier()
    return final


def _prune(root: Path, keep_last: int, written: int) -> None:
    """Keep the checkpoint just written (step ``written``, valid by construction) and the newest
    ``keep_last - 1`` older ones; leave later steps alone (see the module docstring); remove
    leftovers of crashed saves. A checkpoint or leftover that is a symbolic link loses the link only."""
    older = [path for step, path in complete_checkpoints(root.parent) if step < written]
    for path in older[:max(0, len(older) - (keep_last - 1))]:
        doomed = path.with_name(path.name + ".deleting.tmp")  # rename first: a crash mid-delete leaves only *.tmp
        remove_tree(doomed)  # left by such a crash
        os.replace(path, doomed)  # a link is renamed itself, not its target
        remove_tree(doomed)
    for child in root.iterdir():
        if child.name.endswith(".tmp") and (child.is_symlink() or child.is_dir()):
            remove_tree(child)
