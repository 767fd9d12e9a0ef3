"""Batch arithmetic: how ``world_size`` ranks run a recipe's global batch.

``world_size x accumulation steps x micro batch = data.global_batch_size``, the micro batch
taken from ``data.micro_batch_size`` (so the masks, collated per micro batch, are the same on any
number of GPUs) or derived from ``engine.grad_accum_steps``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jepa import registry
from jepa.errors import ConfigError
from jepa.recipe.errors import Problem

if TYPE_CHECKING:
    from jepa.recipe.schema import Recipe


def split_global_batch(global_batch_size: int, world_size: int, grad_accum_steps: int | None = None,
                       micro_batch_size: int | None = None) -> tuple[int, int]:
    """How ``world_size`` ranks run a global batch: ``(micro batch per rank, accumulation steps)``,
    with ``world_size x accumulation x micro = global``.

    * ``micro_batch_size`` unset: accumulation ``grad_accum_steps`` (default 1), micro batch
      ``global / (world x accumulation)``.
    * both set: they must multiply out to the global batch on this many ranks.
    * ``micro_batch_size`` set alone: accumulation ``global / (world x micro)``. When that does not
      divide (more ranks than ``global / micro``), the rank's share ``global / world`` is run in the
      largest micro batches of at most ``micro_batch_size`` that divide it; the caller warns when
      that changes the masks (:func:`micro_batch_warning`).

    Raises:
        ValueError: no split fits, naming the numbers and the fix.
    """
    g, w = global_batch_size, world_size
    if micro_batch_size is None:
        accum = grad_accum_steps or 1
        if g % (w * accum):
            per_step = w * accum
            raise ConfigError(
                f"data.global_batch_size={g} is not divisible by world_size={w} x engine.grad_accum_steps={accum} = "
                f"{per_step}; pick a global batch that is a multiple of {per_step} (e.g. {max(per_step, g // per_step * per_step)}) "
                "or change the accumulation steps")
        return g // (w * accum), accum
    micro = micro_batch_size
    if grad_accum_steps is not None:
        if w * grad_accum_steps * micro != g:
            raise ConfigError(
                f"world_size={w} x engine.grad_accum_steps={grad_accum_steps} x data.micro_batch_size={micro} = "
                f"{w * grad_accum_steps * micro}, not data.global_batch_size={g}; leave engine.grad_accum_steps unset "
                "(it is derived from data.micro_batch_size) or set the two to match")
        return micro, grad_accum_steps
    if g % (w * micro) == 0:
        return micro, g // (w * micro)
    if g % w:
        raise ConfigError(f"data.global_batch_size={g} is not divisible by world_size={w}; run on a number of processes "
                         f"that divides {g} or change the global batch")
    share = g // w
    fitting = next(m for m in range(min(micro, share), 0, -1) if share % m == 0)
    return fitting, share // fitting


def micro_batch_warning(recipe: Recipe, world_size: int, micro_batch_size: int) -> str | None:
    """Why a run's masks differ from the recipe's, or None: the run on ``world_size`` ranks cannot use
    ``data.micro_batch_size`` (see :func:`split_global_batch`) and the modality's masks depend on the
    batch they are collated in (:meth:`jepa.interfaces.Modality.masks_depend_on_batch`)."""
    pinned, g = recipe.data.micro_batch_size, recipe.data.global_batch_size
    if pinned is None or micro_batch_size == pinned or not registry.bind(recipe.modality).masks_depend_on_batch():
        return None
    return (f"data.micro_batch_size={pinned} does not fit {world_size} ranks (data.global_batch_size={g} is "
            f"{g // world_size} per rank), so the micro batch is {micro_batch_size}: faithful masks are cut to the shortest "
            f"context of {micro_batch_size} images instead of {pinned}, and the encoder sees a different share of each "
            f"image than the recipe means (python tools/bench_masks.py --recipes measures it); run on at most "
            f"{g // pinned} processes to keep the recipe's masks")


def batch_problems(global_batch: int, micro: int | None, accum: int | None) -> list[Problem]:
    """The batch fields' checks that need no world size."""
    if micro is None:
        if accum is not None and global_batch % accum:
            return [("engine.grad_accum_steps", f"must divide data.global_batch_size={global_batch} (got {accum})")]
        return []
    if global_batch % micro:
        below = max(m for m in range(1, micro + 1) if global_batch % m == 0)
        return [("data.micro_batch_size", f"must divide data.global_batch_size={global_batch} (got {micro}: "
                 f"{global_batch} / {micro} = {global_batch / micro:g}); use a divisor such as {below}, or change the global batch")]
    if accum is not None and global_batch % (micro * accum):
        return [("engine.grad_accum_steps", f"data.micro_batch_size={micro} x engine.grad_accum_steps={accum} = "
                 f"{micro * accum} does not divide data.global_batch_size={global_batch}, so no number of processes fits; "
                 "leave engine.grad_accum_steps unset (it is derived from data.micro_batch_size)")]
    return []
