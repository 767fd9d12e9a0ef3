"""Resuming: which checkpoint, whether it fits the recipe, and restoring engine, target encoder,
RNG states and the data position from it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from jepa.checkpoint.integrity import verify_checkpoint
from jepa.checkpoint.layout import MODELS_FILE, checkpoint_dir, first_valid, newest_checkpoint, resume_candidates
from jepa.checkpoint.meta import read_meta, read_rank_state, saved_split
from jepa.checkpoint.models import read_models
from jepa.checkpoint.resize import load_resized
from jepa.checkpoint.rng import restore_rng
from jepa.errors import CheckpointError
from jepa.recipe import Recipe, RecipeError, parse_recipe
from jepa.weights import state_problems

if TYPE_CHECKING:
    from jepa.engine import Engine

# Recipe fields that may change between a checkpoint and the run resuming from it; any other
# difference (model shape, optimisation, schedules, batch, data source, seed, precision, ZeRO
# stage) would make the resumed run a different run, so it is refused.
# The micro batch fields may change as long as the micro batch itself stays (checked on its own: on
# another number of processes the accumulation steps differ, see resume_batch_split).
RESUMABLE_CHANGES = (
    "name", "run_dir", "max_steps", "checkpoint.", "log.", "engine.compile", "engine.activation_checkpointing",
    "data.prefetch_factor", "data.max_skip_rate", "data.min_samples_for_skip_check",
    "engine.grad_accum_steps", "data.micro_batch_size", "eval.",
)


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
            raise CheckpointError(f"{run_dir} already holds checkpoints (newest: {existing.name}) and --resume none would "
                             "overwrite them; pass --resume auto to continue that run, or set run_dir to a new directory")
        return None
    if resume == "auto":
        return first_valid(resume_candidates(run_dir), verify, f"--resume auto in {run_dir}")
    path = Path(resume)
    chosen = checkpoint_dir(path, "--resume")
    if chosen != path:  # a run directory: its first valid checkpoint
        return first_valid(resume_candidates(path), verify, f"--resume {path}")
    problems = verify(chosen)
    if problems:
        raise CheckpointError(f"--resume {chosen}: the checkpoint is invalid: {'; '.join(problems)}; resume from another "
                         "checkpoint (pass the run directory to take the newest valid one)")
    return chosen


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def recipe_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(field, saved, current)`` for every recipe field that differs and may not change on resume.

    A field the saved recipe lacks (written by an older jepa, before the field existed) counts as
    its default: the saved recipe is re-validated with today's schema to fill them in.
    """
    try:
        saved = parse_recipe(saved, "the checkpoint's recipe").model_dump(mode="json")
    except (RecipeError, ValueError):
        pass  # compared as written: the differences name what no longer validates
    a, b = _flatten(saved), _flatten(current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key) and not any(key == p or (p.endswith(".") and key.startswith(p)) for p in RESUMABLE_CHANGES):
            diffs.append((key, a.get(key, "<absent>"), b.get(key, "<absent>")))
    return diffs


@dataclass(frozen=True)
class ResumePoint:
    """What a loaded checkpoint hands back to the loop."""

    step: int
    loader_state: dict[str, Any]
    path: Path


def load_checkpoint(engine: Engine, path: Path, recipe: Recipe, *,
                    redeal_positions: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> ResumePoint:
    """Restore engine state, frozen modules (the EMA target), RNG states and this rank's loader position.

    A checkpoint of another number of processes is resharded (:func:`~jepa.checkpoint.resize.load_resized`);
    this engine must have been built with the checkpoint's micro batch (:func:`~jepa.checkpoint.resize.resume_batch_split`).
    ``redeal_positions`` then maps every old rank's loader position (in rank order) to this rank's
    (:func:`jepa.data.redeal.redeal` bound to this run's data settings, seed, rank and micro batch).

    Raises:
        ValueError: the checkpoint's micro batch cannot be kept, its weights do not fit the model
            (keys and shapes named), its recipe differs in fields that shape the model or the
            optimisation (fields named), or its data position does not fit the data settings.
    """
    meta = read_meta(path)
    saved_world = meta["world_size"]
    saved_micro, saved_accum = saved_split(meta, path)
    models = read_models(path / MODELS_FILE)
    saved_recipe = models["recipe"] if isinstance(models.get("recipe"), dict) else {}
    saved_section = saved_recipe.get("modality")
    saved_modality = saved_section.get("name") if isinstance(saved_section, dict) else None
    if saved_modality is not None and saved_modality != recipe.modality.name:  # named before what follows from it
        raise CheckpointError(f"{path}: a checkpoint of a {saved_modality} run (recipe {saved_recipe.get('name')!r}); this "
                         f"recipe trains the {recipe.modality.name} modality. Resume with the recipe that wrote it (its "
                         "run directory keeps it as recipe.yaml), or start a new run in another run_dir")
    if engine.micro_batch_per_rank != saved_micro:
        raise CheckpointError(f"{path}: written with a micro batch of {saved_micro} per process ({saved_world} processes x "
                         f"{saved_micro} x {saved_accum} accumulation steps); this run's is {engine.micro_batch_per_rank} "
                         f"({engine.dist.world_size} x {engine.micro_batch_per_rank} x {engine.grad_accum_steps}), which would "
                         f"change the masks and the data stream. Set data.micro_batch_size={saved_micro} (the accumulation "
                         f"steps follow) or resume on {saved_world} processes")
    expected = engine.state_shapes()  # every checkpoint part of this recipe's objective
    problems = [f"{part}: {p}" for part, shapes in expected.items()
                for p in state_problems(shapes, models.get(part) if isinstance(models.get(part), dict) else {})]
    diffs = recipe_differences(models["recipe"], recipe.model_dump(mode="json"))
    recipe_note = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in diffs)
    if problems:
        raise CheckpointError(f"{path}: the checkpoint does not fit the model of this recipe: {'; '.join(problems)}"
                         + (f". Recipe fields that differ: {recipe_note}" if diffs else "")
                         + ". Resume with the recipe that wrote it, or start a new run (another run_dir)")
    if diffs:
        raise CheckpointError(f"{path}: the recipe differs from the one that wrote this checkpoint in fields that shape the "
                         f"model or the optimisation: {recipe_note}. Restore them, or start a new run (another run_dir)")
    if saved_world != engine.dist.world_size:
        loader_state = load_resized(engine, path, {k: models[k] for k in engine.frozen}, saved_world, redeal_positions)
        return ResumePoint(step=int(models["step"]), loader_state=loader_state, path=path)
    rank_state = read_rank_state(path, engine.dist.rank)
    engine.load_state(path, {k: models[k] for k in engine.frozen})
    restore_rng(rank_state["rng"])
    return ResumePoint(step=int(models["step"]), loader_state=rank_state["loader"], path=path)
