"""Block masks on a 1-, 2- or 3-D token grid, and the collation of rows to a common length.

A token grid ``(G_0, ..., G_{A-1})`` (A = 1, 2 or 3 axes; ``N = prod(G)`` tokens, raster index with
the last axis fastest) gets ``num_blocks`` axis-aligned blocks per row; the **target** is their
union and the **context** everything else, so the two are disjoint and cover the grid.

Block size (one per batch, shared by its rows: the blocks of a batch stack into one tensor; in
training the size may come from a ``step_generator`` shared by every micro batch of an optimiser
step), from A uniforms per draw, mapped linearly onto the ranges of :class:`BlockSpec`:

* 1-D ``(u_s)``: length ``floor(G_0 * s)``;
* 2-D ``(u_s, u_a)``: area ``floor(G_0 * G_1 * s)``, ``h = round(sqrt(area * a))``,
  ``w = round(sqrt(area / a))`` (round half to even), ``a`` = height / width;
* 3-D ``(u_l, u_s, u_a)``: leading extent ``floor(G_0 * l)`` (``leading_scale``: time for clips),
  and ``h, w`` from the area of the last two axes as in 2-D;

every side clamped to ``[1, G_axis]``. Corners are uniform and inclusive (``[0, G - side]`` per
axis). With ``leading_keep < 1`` the context may use only the first ``max(1, int(G_0 * leading_keep))``
steps of axis 0; the rest is never context, and with ``"union"`` targets it joins the target
(V-JEPA's ``max_temporal_keep``; on a sequence: predict the future). A row whose context keeps fewer than ``min_keep`` tokens re-draws its corners, at most
``MAX_POSITION_ROUNDS`` times, then the sampler raises ``RuntimeError`` instead of looping forever.
This is the law of V-JEPA's 3-D sampler (:mod:`jepa.modalities.video.masks` is built on it).

Collation (:class:`~jepa.interfaces.MaskSet` wants rows of one length):

* ``"first"``: cut every row to the batch's shortest, keeping its first indices in raster order
  (the authors' collation; biased towards the start of the grid);
* ``"random"``: cut every row to the batch's shortest, keeping a uniformly random subset (no
  positional bias);
* ``"pad"``: keep every context token, pad rows to the batch's longest context and mark the padding
  in ``MaskSet.context_valid_BK`` (the context of a row then does not depend on its batch).

Targets (``targets``): ``"union"`` gives one target set per row, the union (plus the leading
tail), cut to the batch's shortest (``"first"`` when the collation is ``"first"``, else
``"random"``), as ``(B, 1, T)``; ``"blocks"`` gives each block as its own target, ``(B, M, T)`` with
``T`` the block volume (blocks may overlap each other, never the context).

Every random number comes from the generators passed in; everything is vectorised over rows and
blocks (the loops run over axes and bounded re-draw rounds, not tokens), so it suits loader workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from jepa.errors import ConfigError
from jepa.interfaces import MaskSampler, MaskSet

MAX_POSITION_ROUNDS = 100
"""Re-draw rounds for the rows whose context is below min_keep before giving up."""
COLLATIONS = ("first", "random", "pad")
TARGET_LAYOUTS = ("union", "blocks")


# ---------------------------------------------------------------------- collation
def row_counts(mask_RN: Tensor) -> Tensor:
    """True entries per row, (R,) int32 (an int32 sum of a bool tensor is far faster than int64)."""
    return mask_RN.sum(-1, dtype=torch.int32)


def cut_to_shortest(mask_BN: Tensor, how: str = "first", generator: Optional[torch.Generator] = None) -> Tensor:
    """Every row of ``mask_BN`` as indices, cut to the batch-minimum count L.

    Args:
        mask_BN: (B, N) bool, the tokens of each row.
        how: ``"first"`` keeps the first L indices of each row in raster order; ``"random"`` a
            uniformly random L-subset (one float32 uniform per entry of ``mask_BN``, from ``generator``).
        generator: the randomness of ``"random"``.

    Returns:
        (B, L) int64 indices, ascending in every row.
    """
    length = int(row_counts(mask_BN).min())
    batch = mask_BN.shape[0]
    if how == "first":
        keep = mask_BN & (mask_BN.cumsum(1) <= length)
        return keep.nonzero()[:, 1].view(batch, length)  # nonzero is row-major: ascending per row
    if how != "random":
        raise ValueError(f"cut_to_shortest: how must be 'first' or 'random', got {how!r}")
    keys = torch.rand(mask_BN.shape, generator=generator)
    keys.masked_fill_(~mask_BN, 2.0)
    return keys.topk(length, dim=1, largest=False, sorted=False).indices.sort(dim=1).values


def pad_to_longest(mask_BN: Tensor) -> tuple[Tensor, Tensor | None]:
    """Every row of ``mask_BN`` as indices, all kept: rows padded to the batch's longest.

    Args:
        mask_BN: (B, N) bool, the tokens of each row (every row non-empty).

    Returns:
        idx_BK: (B, K) int64, each row's indices ascending, then padding (a copy of the row's first
            index, so gathers stay in range); K the longest row.
        valid_BK: (B, K) bool, False on padding; None when all rows are equally long (no padding).
    """
    counts = row_counts(mask_BN)
    k_min, k = (int(v) for v in torch.aminmax(counts))
    # A stable sort of the negated mask lists each row's tokens first, in raster order.
    idx = torch.sort(~mask_BN, dim=1, stable=True).indices[:, :k]
    if k_min == k:
        return idx, None
    valid = torch.arange(k) < counts[:, None]
    return torch.where(valid, idx, idx[:, :1]), valid


# ---------------------------------------------------------------------- blocks
@dataclass(frozen=True)
class BlockSpec:
    """The law of a sampler's blocks (see the module docstring for how each range is used).

    Attributes:
        num_blocks: M, blocks per row.
        scale: (low, high) fraction of the grid (1-D), or of the area of the last two axes (2-D, 3-D).
        aspect_ratio: (low, high) height / width of the last two axes (unused on a 1-D grid).
        leading_scale: (low, high) fraction of axis 0 a block spans (3-D grids only).
        leading_keep: fraction of axis 0 the context may use (1: all of it).
    """

    num_blocks: int = 1
    scale: tuple[float, float] = (0.15, 0.2)
    aspect_ratio: tuple[float, float] = (0.75, 1.5)
    leading_scale: tuple[float, float] = (1.0, 1.0)
    leading_keep: float = 1.0

    def __post_init__(self) -> None:
        def check(name: str, lo: float, hi: float, top: float | None) -> None:
            if not (0 < lo <= hi and (top is None or hi <= top)):
                bound = f"0 < low <= high <= {top:g}" if top is not None else "0 < low <= high"
                raise ConfigError(f"BlockSpec: {name}=({lo}, {hi}) must satisfy {bound}")

        if self.num_blocks < 1:
            raise ConfigError(f"BlockSpec: num_blocks must be >= 1, got {self.num_blocks}")
        check("scale", *self.scale, 1.0)
        check("aspect_ratio", *self.aspect_ratio, None)
        check("leading_scale", *self.leading_scale, 1.0)
        if not 0 < self.leading_keep <= 1:
            raise ConfigError(f"BlockSpec: leading_keep must be in (0, 1], got {self.leading_keep}")


@dataclass(frozen=True)
class BlockDraw:
    """A batch's un-collated draw.

    Attributes:
        sides: (A,) int64 block size in tokens per axis, shared by the batch.
        corners_BMA: (B, M, A) int64 first token of every block along every axis.
        target_mask_BN: (B, N) bool, the union of the blocks plus the leading steps the context may
            not use; the context is its complement.
    """

    sides: Tensor
    corners_BMA: Tensor
    target_mask_BN: Tensor


class GridBlockMaskSampler(MaskSampler):
    """Block masks on a 1-, 2- or 3-D token grid, vectorised over rows and blocks (module docstring).

    Args:
        grid: ``(G_0, ...)`` token grid of a training input, 1 to 3 axes.
        spec: the blocks' law.
        collation: ``"first"``, ``"random"`` or ``"pad"`` (how contexts reach a common length).
        targets: ``"union"`` ((B, 1, T)) or ``"blocks"`` ((B, M, T)).
        min_keep: fewest context tokens a row may keep.

    Attributes:
        num_tokens: N = prod(grid).
        num_context_leading: steps of axis 0 the context may use.

    Raises:
        ValueError: an empty grid, a grid of more than 3 axes, or an unknown mode.
    """

    #: The end of the message when rows stay below min_keep (subclasses name their own fields).
    infeasible_fix = "lower num_blocks or scale, or min_keep"

    def __init__(self, grid: tuple[int, ...], spec: BlockSpec, *, collation: str = "first", targets: str = "union",
                 min_keep: int = 1):
        name = type(self).__name__
        if not 1 <= len(grid) <= 3 or min(grid) < 1:
            raise ConfigError(f"{name}: the token grid {tuple(grid)} must have 1 to 3 non-empty axes")
        if collation not in COLLATIONS:
            raise ConfigError(f"{name}: collation must be one of {', '.join(COLLATIONS)}; got {collation!r}")
        if targets not in TARGET_LAYOUTS:
            raise ConfigError(f"{name}: targets must be one of {', '.join(TARGET_LAYOUTS)}; got {targets!r}")
        self.grid = tuple(int(g) for g in grid)
        self.spec, self.collation, self.targets, self.min_keep = spec, collation, targets, min_keep
        self.num_tokens = math.prod(self.grid)
        self.num_context_leading = max(1, int(self.grid[0] * spec.leading_keep))

    @property
    def num_axes(self) -> int:
        return len(self.grid)

    # ------------------------------------------------------------------ sizes
    def sides_from_uniforms(self, u_A: Tensor) -> Tensor:
        """Block sizes for uniforms in [0, 1]: (..., A) float64 -> (..., A) int64 sides (module docstring)."""
        c, g = self.spec, self.grid
        if len(g) == 1:
            s = c.scale[0] + u_A[..., 0] * (c.scale[1] - c.scale[0])
            return (g[0] * s).floor().clamp(1, g[0]).long()[..., None]
        *lead, gh, gw = g
        u_s, u_a = u_A[..., -2], u_A[..., -1]
        s = c.scale[0] + u_s * (c.scale[1] - c.scale[0])
        a = c.aspect_ratio[0] + u_a * (c.aspect_ratio[1] - c.aspect_ratio[0])
        area = (gh * gw * s).floor()
        h = (area * a).sqrt().round().clamp(1, gh)
        w = (area / a).sqrt().round().clamp(1, gw)
        if not lead:
            return torch.stack([h, w], dim=-1).long()
        s_l = c.leading_scale[0] + u_A[..., 0] * (c.leading_scale[1] - c.leading_scale[0])
        t = (lead[0] * s_l).floor().clamp(1, lead[0])
        return torch.stack([t, h, w], dim=-1).long()

    def sample_sides(self, num_draws: int, generator: torch.Generator) -> Tensor:
        """(num_draws, A) block sizes, drawn like a batch's (A float64 uniforms per draw)."""
        return self.sides_from_uniforms(torch.rand(num_draws, self.num_axes, dtype=torch.float64, generator=generator))

    # ------------------------------------------------------------------ geometry
    def corners(self, sides: Tensor, num_rows: int, generator: torch.Generator) -> Tensor:
        """Uniform inclusive corners of ``num_blocks`` blocks per row.

        Args:
            sides: (A,) or (R, A) int64 block sizes (one per row when 2-D).
            num_rows: R.

        Returns:
            (R, M, A) int64.
        """
        num_positions = torch.tensor(self.grid) - sides + 1  # (A,) or (R, A)
        if num_positions.dim() == 2:
            num_positions = num_positions[:, None, :]
        u = torch.rand(num_rows, self.spec.num_blocks, self.num_axes, dtype=torch.float64, generator=generator)
        return torch.minimum((u * num_positions).long(), num_positions - 1)  # float rounding guard

    def target_mask(self, corners_RMA: Tensor, sides: Tensor) -> Tensor:
        """Union of each row's blocks plus the leading steps the context may not use.

        Args:
            corners_RMA: (R, M, A) int64 block corners.
            sides: (A,) or (R, A) int64 block sizes.

        Returns:
            (R, N) bool, True for target tokens.
        """
        ends = corners_RMA + (sides[:, None, :] if sides.dim() == 2 else sides)  # (R, M, A) exclusive
        inside = []
        for axis, length in enumerate(self.grid):  # axes, not tokens
            pos = torch.arange(length)
            inside.append((pos >= corners_RMA[..., axis, None]) & (pos < ends[..., axis, None]))  # (R, M, G_axis)
        lead = inside[0]
        if len(inside) == 1:
            rest = lead.new_ones(*lead.shape[:2], 1)
        elif len(inside) == 2:
            rest = inside[1]
        else:
            rest = (inside[1][..., :, None] & inside[2][..., None, :]).flatten(2)  # (R, M, G_1 * G_2)
        # Blocks are separable, so the union over blocks is a boolean matrix product over M:
        # covered[r, i, s] = OR_m lead[r, m, i] AND rest[r, m, s] (exact: counts <= M in float32).
        union = torch.bmm(lead.transpose(1, 2).float(), rest.float()) > 0  # (R, G_0, N / G_0)
        union[:, self.num_context_leading:] = True
        return union.flatten(1)

    def block_indices(self, corners_RMA: Tensor, sides: Tensor) -> Tensor:
        """Raster indices of every block, raster order inside each block.

        Args:
            corners_RMA: (R, M, A) int64 corners.
            sides: (A,) int64 block size shared by all blocks.

        Returns:
            (R, M, prod(sides)) int64.
        """
        strides = [math.prod(self.grid[a + 1:]) for a in range(self.num_axes)]
        offsets = torch.zeros((), dtype=torch.long)
        for side, stride in zip(sides.tolist(), strides):  # axes: offsets of the block's tokens, raster order
            offsets = (offsets[..., None] + torch.arange(side) * stride)
        base = (corners_RMA * torch.tensor(strides)).sum(-1)  # (R, M)
        return base[..., None] + offsets.flatten()

    def valid_rows(self, sides_RA: Tensor, generator: torch.Generator) -> Tensor:
        """(R,) bool: does a row with these block sizes keep >= min_keep context tokens (one corner draw,
        no re-draws)? For Monte-Carlo feasibility checks of a geometry."""
        corners = self.corners(sides_RA, sides_RA.shape[0], generator)
        return row_counts(~self.target_mask(corners, sides_RA)) >= self.min_keep

    # ------------------------------------------------------------------ sampling
    def describe(self, sides: Tensor | None = None) -> str:
        c = self.spec
        size = f"blocks of {'x'.join(str(int(s)) for s in sides)}" if sides is not None else "blocks"
        return (f"{'x'.join(map(str, self.grid))} token grid, {c.num_blocks} {size} (scale={c.scale}, "
                f"aspect_ratio={c.aspect_ratio}, leading_scale={c.leading_scale}, leading_keep={c.leading_keep}), "
                f"min_keep {self.min_keep}")

    def sample_blocks(self, batch_size: int, generator: torch.Generator,
                      step_generator: torch.Generator | None = None) -> BlockDraw:
        """Draw one block size for the batch and block corners per row, re-drawing the corners of rows
        whose context keeps fewer than ``min_keep`` tokens. The block size comes from ``step_generator``
        when given (shared by every micro batch of a training step), else from ``generator``, like
        everything else.

        Raises:
            RuntimeError: some rows are still invalid after ``MAX_POSITION_ROUNDS`` re-draws.
        """
        if batch_size < 1:
            raise ValueError(f"{type(self).__name__}: batch_size must be >= 1, got {batch_size}")
        sides = self.sample_sides(1, generator if step_generator is None else step_generator)[0]
        corners = self.corners(sides, batch_size, generator)
        target = self.target_mask(corners, sides)
        bad = row_counts(~target) < self.min_keep
        rounds = 0
        while bool(bad.any()):
            if rounds == MAX_POSITION_ROUNDS:
                raise RuntimeError(
                    f"{type(self).__name__}: {int(bad.sum())} of {batch_size} contexts still have fewer than min_keep="
                    f"{self.min_keep} tokens after {MAX_POSITION_ROUNDS} re-draws ({self.describe(sides)}); this "
                    f"geometry is infeasible, {self.infeasible_fix}")
            rows = bad.nonzero().squeeze(1)
            corners[rows] = self.corners(sides, rows.numel(), generator)
            target[rows] = self.target_mask(corners[rows], sides)
            bad[rows] = row_counts(~target[rows]) < self.min_keep
            rounds += 1
        return BlockDraw(sides, corners, target)

    def __call__(self, batch_size: int, generator: torch.Generator,
                 step_generator: torch.Generator | None = None) -> MaskSet:
        """Masks for a batch (``step_generator``: see :meth:`sample_blocks`).

        Returns:
            MaskSet with ``context_idx_BK`` (B, K) int64 ascending (then padding, marked by
            ``context_valid_BK``, with ``"pad"``) and ``target_idx_BMT``: (B, 1, T) ascending with
            ``"union"``, (B, M, T) with ``"blocks"``; disjoint from the context within every row.
        """
        draw = self.sample_blocks(batch_size, generator, step_generator)
        valid = None
        if self.collation == "pad":
            context, valid = pad_to_longest(~draw.target_mask_BN)
        else:
            context = cut_to_shortest(~draw.target_mask_BN, self.collation, generator)
        if self.targets == "union":
            how = "first" if self.collation == "first" else "random"
            target = cut_to_shortest(draw.target_mask_BN, how, generator).unsqueeze(1)
        else:
            target = self.block_indices(draw.corners_BMA, draw.sides)
        return MaskSet(context, target, valid)
