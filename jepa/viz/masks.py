"""``jepa viz masks``: what the objective's batch maker makes of real samples, drawn over them: the context
and every target block of each (context, target) pair (I-JEPA / V-JEPA), or the augmented views of each
sample (LeJEPA)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jepa import objectives, registry
from jepa.data.loader import step_generator
from jepa.errors import ConfigError
from jepa.interfaces import MaskSet, Modality, ViewSpec
from jepa.viz.display import (display_factor, input_boxes, input_frames, middle, require_hooks, token_map, upscale)
from jepa.viz.figure import bare, new_figure, save_png
from jepa.viz.samples import generated_samples, read_samples

TARGET_COLOURS = np.array([[0.89, 0.10, 0.11], [0.22, 0.49, 0.72], [0.30, 0.69, 0.29], [1.00, 0.50, 0.00],
                           [0.60, 0.31, 0.64], [1.00, 1.00, 0.20], [0.65, 0.34, 0.16], [0.97, 0.51, 0.75]],
                          dtype=np.float32)
"""One colour per target block (cycled)."""
OUTSIDE_CONTEXT = 0.3
"""Brightness left to pixels the context encoder does not see."""
TINT = 0.55
"""Weight of a target's colour over the pixels of its tokens."""


@dataclass
class MaskBatch:
    """One batch the way training makes it.

    Attributes:
        inputs: (B, ...) encoder inputs (``finish_batch`` applied).
        pairs: the (context, target) pairs, empty for view-based objectives.
        views: every view of the rows (``inputs`` first), for view-based objectives; else ``(inputs,)``.
        num_global: how many of ``views`` are global views.
    """

    inputs: torch.Tensor
    pairs: tuple[MaskSet, ...]
    views: tuple[torch.Tensor, ...]
    num_global: int


def make_batch(objective: Any, modality: Modality, items: list[Any], seed: int, step: int = 0) -> MaskBatch:
    """``objective.batch_maker().from_items`` on ``items`` with seeded generators, as a loader worker calls it
    (``step`` seeds the randomness shared by the optimiser step: image and video block sizes)."""
    maker = objective.batch_maker()
    batch = maker.from_items(items, torch.Generator().manual_seed(seed), step_generator(seed, step))
    views = tuple(modality.finish_batch(v) for v in batch.views)
    spec = getattr(maker, "spec", None)  # view-based batch makers carry their ViewSpec (global views first)
    num_global = spec.num_global if isinstance(spec, ViewSpec) else len(views)
    return MaskBatch(views[0], tuple(batch.masks), views, num_global)


def context_indices(masks: MaskSet, row: int) -> np.ndarray:
    """The context token indices of ``row``, padding (``context_valid_BK`` False) left out."""
    idx = masks.context_idx_BK[row]
    if masks.context_valid_BK is not None:
        idx = idx[masks.context_valid_BK[row]]
    return idx.cpu().numpy()


def mask_overlay(frames: np.ndarray, boxes: np.ndarray, context: np.ndarray, targets: list[np.ndarray],
                 factor: int = 1) -> np.ndarray:
    """(F, H*factor, W*factor, 3) picture of one input's masks.

    Pixels of context tokens keep their colour; the others are darkened to :data:`OUTSIDE_CONTEXT`; the
    tokens of target block m are tinted with :data:`TARGET_COLOURS` [m] and outlined in it.

    Args:
        frames: (F, H, W, 3) the input's picture (``Modality.display_frames``).
        boxes: (N, 6) its token boxes (``Modality.token_boxes``).
        context: context token indices.
        targets: token indices of each target block.
        factor: integer upscaling (outlines one upscaled pixel wide).
    """
    shape = frames.shape[:3]
    seen = token_map(boxes, context, shape)
    out = np.where(seen[..., None], frames, frames * OUTSIDE_CONTEXT)
    out = upscale(out, factor)
    for m, idx in enumerate(targets):
        colour = TARGET_COLOURS[m % len(TARGET_COLOURS)]
        inside = upscale(token_map(boxes, idx, shape)[..., None], factor)[..., 0]
        out = np.where(inside[..., None], (1 - TINT) * out + TINT * colour, out)
        edge = inside & ~(_shifted(inside, 1, 0) & _shifted(inside, -1, 0) & _shifted(inside, 1, 1)
                          & _shifted(inside, -1, 1))
        out[edge] = colour
    return out.clip(0, 1)


def _shifted(mask: np.ndarray, by: int, axis: int) -> np.ndarray:
    """``mask`` moved by ``by`` pixels along picture axis ``axis`` (0: rows, 1: columns), False shifted in."""
    ax = mask.ndim - 2 + axis
    out = np.zeros_like(mask)
    src = [slice(None)] * mask.ndim
    dst = [slice(None)] * mask.ndim
    src[ax], dst[ax] = (slice(0, -by), slice(by, None)) if by > 0 else (slice(-by, None), slice(0, by))
    out[tuple(dst)] = mask[tuple(src)]
    return out


def draw_masks(modality: Modality, batch: MaskBatch, title: str) -> Any:
    """The masks figure: images, one column per sample, a row for the input then one per mask pair; clips,
    per sample a row for the input then one per pair, one column per frame."""
    x = batch.inputs
    frames0 = input_frames(modality, x[0])
    boxes = input_boxes(modality, x[0], frames0)
    n, p, f = x.shape[0], len(batch.pairs), frames0.shape[0]
    factor = display_factor(*frames0.shape[1:3])
    panels: list[list[tuple[np.ndarray, str]]] = []  # one list per figure row
    for b in range(n):
        frames = frames0 if b == 0 else input_frames(modality, x[b])
        rows = [[(upscale(frames[i], factor), f"frame {i}" if f > 1 else "input") for i in range(f)]]
        for k, masks in enumerate(batch.pairs):
            targets = [t.cpu().numpy() for t in masks.target_idx_BMT[b]]
            over = mask_overlay(frames, boxes, context_indices(masks, b), targets, factor)
            label = f"pair {k}: {len(context_indices(masks, b))} ctx, {len(targets)}x{len(targets[0])} tgt"
            rows.append([(over[i], label if i == 0 else "") for i in range(f)])
        panels.append(rows)
    if f == 1:  # images: samples across, input and pairs down
        grid = [[panels[b][r][0] for b in range(n)] for r in range(1 + p)]
    else:
        grid = [row for rows in panels for row in rows]
    fig, axes = new_figure(len(grid), len(grid[0]), title=title, panel_in=(1.5, 1.6))
    for r, row in enumerate(grid):
        for c, (picture, label) in enumerate(row):
            ax = axes[r][c]
            ax.imshow(picture, interpolation="nearest")
            bare(ax)
            if label and (c == 0 or f == 1):
                ax.set_title(label, fontsize=6)
    return fig


def draw_views(modality: Modality, batch: MaskBatch, originals: torch.Tensor, title: str) -> Any:
    """The views figure: one row per sample, its evaluation view first, then every view the objective draws
    (global then local; clips: the middle frame of each)."""
    n, v = originals.shape[0], len(batch.views)
    fig, axes = new_figure(n, 1 + v, title=title, panel_in=(1.3, 1.4))
    for b in range(n):
        shown = [(originals[b], "sample")] + [
            (view[b], f"{'global' if i < batch.num_global else 'local'} {i if i < batch.num_global else i - batch.num_global}")
            for i, view in enumerate(batch.views)]
        for c, (x, label) in enumerate(shown):
            picture = middle(input_frames(modality, x))
            ax = axes[b][c]
            ax.imshow(upscale(picture, display_factor(*picture.shape[:2], 96)), interpolation="nearest")
            bare(ax)
            if b == 0:
                ax.set_title(f"{label}\n{picture.shape[1]}x{picture.shape[0]} px", fontsize=6)
    return fig


def masks_picture(recipe: Any, out: Path, *, num: int, views: bool, generated: bool, seed: int, step: int = 0,
                  log: Any = print) -> Path:
    """Read ``num`` samples of ``recipe``'s shards (or generate them), make one batch of them as training does,
    and write the masks (or, with ``views`` or for an objective without masks, the views) picture."""
    modality = registry.bind(recipe.modality)
    require_hooks(modality, "`jepa viz masks`")
    objective = objectives.bind(recipe.objective, modality, total_steps=recipe.total_steps, seed=recipe.seed)
    if generated:
        samples = generated_samples(modality, num, seed)
    elif recipe.data.source != "shards" or not recipe.data.train_shards:
        raise ConfigError(f"recipe {recipe.name!r} reads no shards (data.source: {recipe.data.source}); pass --generated "
                         "to draw generated demo samples, or --set data.train_shards=SHARDS")
    else:
        samples = read_samples(recipe.data.train_shards, modality, num)
    batch = make_batch(objective, modality, samples.items, seed, step)
    what = f"{recipe.name}: {objective.describe()}, {modality.describe()}, {len(samples.items)} samples of {samples.source}"
    if views or not batch.pairs:
        if len(batch.views) < 2:
            raise ConfigError(f"objective {recipe.objective.name!r} draws no views (it samples mask pairs); drop --views")
        if not views:
            log(f"objective {recipe.objective.name!r} samples no masks: drawing its views")
        fig = draw_views(modality, batch, modality.eval_batch(samples.items), f"{what}\nviews as training draws them")
    else:
        mode = getattr(getattr(recipe.modality, "mask", None), "mode", None)
        fig = draw_masks(modality, batch, f"{what}\n{len(batch.pairs)} mask pair(s)"
                         + (f", mask.mode {mode}" if mode else "") + "; context bright, targets coloured")
    return save_png(fig, out)
