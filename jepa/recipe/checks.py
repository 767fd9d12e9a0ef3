"""Semantic checks of a typed recipe: what no single field's type can say.

The core's checks across sections (schedules, batch arithmetic, evaluation settings), then the
modality's and the objective's own ``check`` (paths prefixed with their section). A modality
section the objective does not use (LeJEPA samples no masks) is not checked.
"""

from __future__ import annotations

from jepa import objectives, registry
from jepa.recipe.batch import batch_problems
from jepa.recipe.errors import Problem
from jepa.recipe.schema import Recipe

MAX_STEPS = 2**53
"""Most optimiser steps a recipe may span (steps are counted exactly in float64 below this)."""


def check_recipe(recipe: Recipe) -> list[Problem]:
    """Semantic checks of the core sections plus the modality's own ``check``."""
    problems: list[Problem] = []
    o, d = recipe.optim, recipe.data
    steps = o.epochs * max(1, d.samples_per_epoch // d.global_batch_size)
    if not steps <= MAX_STEPS:
        problems.append(("optim.epochs", f"{o.epochs:g} epochs of {d.samples_per_epoch} samples in batches of "
                         f"{d.global_batch_size} make {steps:.3g} steps, more than {MAX_STEPS:.3g}; lower optim.epochs "
                         "or data.samples_per_epoch"))
        return problems  # the schedules below are undefined
    if o.warmup_epochs >= o.epochs:
        problems.append(("optim.warmup_epochs", f"must be shorter than optim.epochs={o.epochs} (got {o.warmup_epochs})"))
    if o.final_lr > o.lr or o.start_lr > o.lr:
        problems.append(("optim.lr", f"peak lr {o.lr} must be >= start_lr {o.start_lr} and final_lr {o.final_lr}"))
    if d.samples_per_epoch < d.global_batch_size:
        problems.append(("data.samples_per_epoch", f"an epoch must hold at least one global batch of {d.global_batch_size} (got {d.samples_per_epoch})"))
    if d.source == "shards" and not d.train_shards:
        problems.append(("data.train_shards", "required when data.source is 'shards' (set it in the recipe or with --set data.train_shards=...)"))
    problems += batch_problems(d.global_batch_size, d.micro_batch_size, recipe.engine.grad_accum_steps)
    e = recipe.eval
    if e.every_steps is not None:
        problems += [(f"eval.{key}", "required when eval.every_steps is set (labelled shards, e.g. from `jepa shards`)")
                     for key in ("train_shards", "val_shards") if not getattr(e, key)]
    best = recipe.checkpoint.keep_best
    if best is not None and best.metric.startswith("knn") and e.every_steps is None:
        problems.append(("checkpoint.keep_best.metric", f"{best.metric} is measured by the online k-NN probe: set "
                         "eval.every_steps, eval.train_shards and eval.val_shards, or rank by loss/rankme/target_spread"))
    modality = registry.bind(recipe.modality)
    objective = objectives.bind(recipe.objective, modality)
    unused = objective.unused_modality_sections  # e.g. LeJEPA samples no masks: their checks do not apply
    problems += [(f"modality.{path}" if path else "modality", msg) for path, msg in modality.check()
                 if path.split(".")[0] not in unused]
    problems += [(f"objective.{path}" if path else "objective", msg) for path, msg in objective.check()]
    return problems
