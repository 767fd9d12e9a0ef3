"""Resuming on another number of processes (see the package docstring): the batch split to
build the engine with, and the engine state and data positions of N processes dealt to M."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from jepa.checkpoint.layout import RESHARD_SUFFIX, checkpoint_dir, resume_candidates
from jepa.checkpoint.meta import read_meta, read_rank_state, saved_split
from jepa.checkpoint.rng import restore_rng
from jepa.errors import CheckpointError
from jepa.launch import detect as detect_launch
from jepa.recipe import EngineConfig, Recipe

if TYPE_CHECKING:
    from jepa.engine import Engine

log = logging.getLogger(__name__)


def _peek_resume(resume: str, run_dir: Path) -> Path | None:
    """The checkpoint :func:`resolve_resume` will most likely pick, without verifying it (None if unsure)."""
    if resume == "none":
        return None
    if resume == "auto":
        found = resume_candidates(run_dir)
        return found[0] if found else None
    try:
        chosen = checkpoint_dir(Path(resume), "--resume")
    except ValueError:
        return None
    if chosen != Path(resume):
        found = resume_candidates(Path(resume))
        return found[0] if found else None
    return chosen


def resume_batch_split(recipe: Recipe, resume: str) -> tuple[EngineConfig, int | None]:
    """The engine section and requested micro batch to build the engine with (before anything is resumed).

    Resuming a checkpoint written by another number of processes keeps its micro batch, so the
    accumulation steps are derived (``global / (processes x micro)``); otherwise the recipe's split.

    Raises:
        ValueError: the checkpoint's micro batch cannot be kept on this many processes (numbers named).
    """
    unchanged = recipe.engine, recipe.data.micro_batch_size
    path = _peek_resume(resume, recipe.resolved_run_dir)
    world = detect_launch().world_size
    if path is None or recipe.data.micro_batch_size is not None:
        return unchanged  # a pinned micro batch that differs from the checkpoint's is refused when loading
    try:
        meta = read_meta(path)
        if int(meta["world_size"]) == world:
            return unchanged
        saved_world, saved_micro = int(meta["world_size"]), saved_split(meta, path)[0]
    except (OSError, ValueError, KeyError, TypeError):  # resolve_resume reports it (or skips that checkpoint)
        return unchanged
    g = recipe.data.global_batch_size
    if g % (world * saved_micro):
        fits = [n for n in range(1, g // saved_micro + 1) if (g // saved_micro) % n == 0]
        raise CheckpointError(f"{path}: written by {saved_world} processes with a micro batch of {saved_micro}; on {world} "
                         f"processes that micro batch cannot be kept: data.global_batch_size={g} is not a multiple of "
                         f"{world} x {saved_micro} = {world * saved_micro}. Resume on a number of processes that divides "
                         f"{g // saved_micro} ({', '.join(map(str, fits))})")
    return recipe.engine.model_copy(update={"grad_accum_steps": None}), saved_micro


def load_resized(engine: Engine, path: Path, frozen_states: dict[str, Any], saved_world: int,
                 redeal_positions: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> dict[str, Any]:
    """Restore a checkpoint of ``saved_world`` processes on this engine's; returns this rank's loader state.

    The data positions come first (cheap, and every refusal comes before anything is written): every
    old rank's is re-dealt over the new ranks by ``redeal_positions`` (the caller's
    :func:`jepa.data.redeal.redeal`, bound to this run's data settings and rank). Then the engine state, through
    DeepSpeed's universal checkpoint in ``step_N.reshard.tmp/`` (removed afterwards); rank r takes the
    RNG states of old rank ``r mod N``.
    """
    if engine.dist.is_main:
        log.warning("%s was written by %d processes, resuming on %d: micro batch %d kept, %d accumulation steps; the "
                    "ZeRO state goes through DeepSpeed's universal checkpoint and the data positions are re-dealt (the "
                    "losses continue the curve, not bitwise)", path, saved_world, engine.dist.world_size,
                    engine.micro_batch_per_rank, engine.grad_accum_steps)
    rank_states = [read_rank_state(path, r) for r in range(saved_world)]
    loader_state = redeal_positions([s["loader"] for s in rank_states])
    engine.load_state(path, frozen_states, reshard_dir=path.with_name(path.name + RESHARD_SUFFIX))
    restore_rng(rank_states[engine.dist.rank % saved_world]["rng"])
    return loader_state
