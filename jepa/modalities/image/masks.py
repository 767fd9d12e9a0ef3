"""Multi-block masking for image I-JEPA: M target rectangles and one context rectangle per image.

The method and its defaults: docs/method/ijepa.md, "Masks", "The authors' sampler" and "Collation".

On a ``G x G`` patch grid (``N = G * G`` tokens, raster index ``row * G + col``) every image gets
``M`` target blocks and one context block; the context keeps the patches of its block that lie in
no target block of the same image. A block of scale ``s`` (fraction of the grid) and aspect ratio
``a`` (height / width) has sides ``h = round(sqrt(s * N * a))`` and ``w = round(sqrt(s * N / a))``
(round half to even), clamped to ``[1, max_side]``.

Two modes (``MaskConfig.mode``):

``faithful`` reproduces the authors' sampler, quirks included:
    * one target size and one context size are drawn per batch, so every image of a batch has
      equal-size blocks; in training the draw is shared by the whole global batch of an optimiser
      step (see "Block sizes per step" below), as the authors share it across GPUs;
    * a single uniform draw ``u`` sets both the scale and the aspect ratio of a block
      (``s = lo_s + u * (hi_s - lo_s)``, ``a = lo_a + u * (hi_a - lo_a)``), and the area is
      floored to whole patches first (``h = round(sqrt(floor(s * N) * a))``);
    * block corners are drawn with an exclusive upper bound (``top`` in ``[0, G - h)``), so the
      last row and column are never covered; sides are therefore clamped to ``G - 1``;
    * contexts are collated to the batch-minimum length ``k`` by keeping the first ``k`` indices
      in raster order, which biases the context towards the top-left of the image.

``fixed`` corrects what is a bug rather than a choice:
    * corners are inclusive (``top`` in ``[0, G - h]``, sides clamped to ``G``), so blocks can
      touch the last row and column;
    * scale and aspect ratio come from independent draws;
    * every context token is kept: each row is padded to the batch's longest context, and
      ``MaskSet.context_valid_BK`` marks the padding (the encoder and predictor never attend to it).
      The context of an image therefore does not depend on the batch it is collated in, and has
      no spatial bias. A batch whose rows happen to be equally long is not padded.
    The block sizes stay shared per batch (per step in training) in this mode too, so all target
    blocks have the same ``T`` and stack into one ``(B, M, T)`` tensor: targets are never padded.

Block sizes per step: called with ``step_generator`` (the training loaders pass one seeded by the
run seed and the optimiser step only, :func:`jepa.data.loader.step_generator`), the sampler draws
the batch's block sizes from it and the positions from ``generator``. Every rank, loader worker and
accumulation micro batch of a step then uses the same sizes, so a step's masks follow the same law
on any number of GPUs. Remaining differences from the authors' size draw: their seed is a counter of
collator calls (0, 1, 2, ... per process, shared by its loader workers under a lock), so it ignores
the run seed, starts again at 0 when a run resumes, and which batch gets which seed depends on the
order in which the workers reach the counter (the GPUs agree on a step's sizes only while their
workers keep that order); ours is a pure function of (seed, step), identical on every rank and
continued exactly on resume. Their positions come from each process's global RNG; ours from a
generator per batch.

Deliberate differences from the authors' code, in both modes: a block or context is valid when it
has *at least* ``min_keep`` patches (the authors require strictly more); a draw whose block size is
below ``min_keep`` re-draws the size instead of retrying forever; a row whose context is too small
re-draws its context corner (first ``CONTEXT_ONLY_ROUNDS`` rounds, as the authors do) and then its
target corners as well, instead of progressively letting the context overlap the targets; after
``MAX_POSITION_ROUNDS`` rounds the sampler raises ``RuntimeError`` naming the geometry. Every loop
is bounded, so the sampler can never hang; :func:`check_mask_feasibility` rejects the geometries
where the bounded re-draws are not safe.

What comes from the core (:mod:`jepa.nn.grid_masks`): the collations (``faithful``: cut to the
shortest, first indices; ``fixed``: pad to the longest). The block draws stay here in both modes:
I-JEPA's context is a block of its own minus the targets (not the complement of the targets, as
in the core's block sampler), its targets are the blocks themselves, and each mode has its own
size law and draw order (``fixed``: four uniforms per batch, area not floored, corners drawn axis
by axis), which the core sampler could not reproduce bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from jepa.errors import ConfigError
from jepa.interfaces import MaskSampler, MaskSet
from jepa.modalities.image.config import MaskConfig
from jepa.nn.grid_masks import cut_to_shortest, pad_to_longest, row_counts

MAX_SIZE_ROUNDS = 100
"""Batch-level block-size draws tried before giving up (each needs blocks of >= min_keep patches)."""
MAX_POSITION_ROUNDS = 100
"""Re-draw rounds for the rows whose context is below min_keep before giving up."""
CONTEXT_ONLY_ROUNDS = 10
"""The first re-draw rounds move only the context block; later rounds move the targets too."""
MIN_VALID_PROBABILITY = 0.5
"""check_mask_feasibility rejects geometries where a row's draw is valid less often than this."""
MIN_VALID_PROBABILITY_PER_SIZE = 0.25
"""... or where some drawable block size makes a row valid less often than this (after
MAX_POSITION_ROUNDS - CONTEXT_ONLY_ROUNDS joint re-draws at 0.25, a row fails with p ~ 1e-11)."""
MAX_CHECKED_PAIRS = 256
"""check_mask_feasibility tries every (target size, context size) pair up to this many pairs; beyond
(large grids) it draws rows as the sampler does and tries the largest targets with the smallest contexts."""
_EXTREME_SIDES = 8
_DRAWN_ROWS = 4096
_CHECK_ELEMENTS = 1 << 24  # booleans per chunk of the rectangle arithmetic (bounded memory)


class MultiBlockMaskSampler(MaskSampler):
    """I-JEPA multi-block masks on a square patch grid, vectorised over the batch and the blocks.

    Args:
        grid_size: G, patches per side (``crop_size // patch_size``).
        cfg: the ``mask`` section of the image recipe.

    Attributes:
        num_tokens: N = G * G.
        max_side: the longest block side the mode allows (G - 1 in ``faithful``, G in ``fixed``).

    Raises:
        ValueError: the grid is too small for the mode (``faithful`` needs G >= 2).
    """

    def __init__(self, grid_size: int, cfg: MaskConfig):
        self.faithful = cfg.mode == "faithful"
        if grid_size < (2 if self.faithful else 1):
            raise ConfigError(
                f"MultiBlockMaskSampler: a {grid_size}x{grid_size} patch grid is too small for mode "
                f"'{cfg.mode}' (faithful needs >= 2x2, fixed >= 1x1); use a larger crop_size or smaller patch_size")
        self.grid_size = grid_size
        self.num_tokens = grid_size * grid_size
        self.cfg = cfg
        self.max_side = grid_size - 1 if self.faithful else grid_size

    # ------------------------------------------------------------------ block sizes
    def block_sides(self, u_scale: Tensor, u_aspect: Tensor, scale: tuple[float, float],
                    aspect: tuple[float, float]) -> Tensor:
        """Block sides for uniform draws, vectorised.

        Args:
            u_scale: (...) float64 in [0, 1), picks the scale in ``scale``.
            u_aspect: (...) float64 in [0, 1), picks the aspect ratio in ``aspect``.
            scale: (low, high) fraction of the grid.
            aspect: (low, high) height / width.

        Returns:
            (..., 2) int64 ``(h, w)``, each in ``[1, max_side]``.
        """
        s = scale[0] + u_scale * (scale[1] - scale[0])
        a = aspect[0] + u_aspect * (aspect[1] - aspect[0])
        area = s * self.num_tokens
        if self.faithful:
            area = area.floor()
        h = (area * a).sqrt().round().clamp(1, self.max_side)
        w = (area / a).sqrt().round().clamp(1, self.max_side)
        return torch.stack([h, w], dim=-1).long()

    def sample_block_sides(self, num_draws: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Draw ``num_draws`` (target, context) block sizes, as one batch would (no min_keep check).

        ``faithful`` uses one uniform per block kind for scale and aspect; ``fixed`` two.

        Returns:
            target_hw_S2: (S, 2) int64 target ``(h, w)``.
            context_hw_S2: (S, 2) int64 context ``(h, w)``.
        """
        c = self.cfg
        if self.faithful:
            u = torch.rand(num_draws, 2, dtype=torch.float64, generator=generator)
            ut_s = ut_a = u[:, 0]
            uc_s = uc_a = u[:, 1]
        else:
            u = torch.rand(num_draws, 4, dtype=torch.float64, generator=generator)
            ut_s, ut_a, uc_s, uc_a = u.unbind(1)
        target = self.block_sides(ut_s, ut_a, c.target_scale, c.target_aspect_ratio)
        context = self.block_sides(uc_s, uc_a, c.context_scale, c.context_aspect_ratio)
        return target, context

    def side_distribution(self, kind: str, resolution: int | None = None) -> tuple[Tensor, Tensor]:
        """Every block size the sampler can draw for ``kind``, with its probability.

        Evaluates :meth:`block_sides` on a dense grid of the uniform draws (1-D in ``faithful``,
        where one draw sets scale and aspect; 2-D in ``fixed``), endpoints included. Sizes whose
        interval of draws is narrower than the grid spacing can be missed: their probability is
        below ``1 / resolution`` and the sampler re-draws such sizes if they are invalid anyway.

        Args:
            kind: ``"target"`` or ``"context"``.
            resolution: grid points per uniform (default 4097 faithful, 257 fixed).

        Returns:
            sides_S2: (S, 2) int64 distinct ``(h, w)``.
            prob_S: (S,) float64 probabilities, summing to 1.
        """
        c = self.cfg
        scale, aspect = ((c.target_scale, c.target_aspect_ratio) if kind == "target"
                         else (c.context_scale, c.context_aspect_ratio))
        if self.faithful:
            u_s = u_a = torch.linspace(0, 1, resolution or 4097, dtype=torch.float64)
        else:
            u = torch.linspace(0, 1, resolution or 257, dtype=torch.float64)
            u_s, u_a = torch.meshgrid(u, u, indexing="ij")
        sides = self.block_sides(u_s, u_a, scale, aspect).reshape(-1, 2)
        code = sides[:, 0] * (self.max_side + 1) + sides[:, 1]  # 1-D unique is much faster than dim=0
        distinct, counts = torch.unique(code, return_counts=True)
        return torch.stack([distinct // (self.max_side + 1), distinct % (self.max_side + 1)], 1), counts.double() / code.numel()

    # ------------------------------------------------------------------ geometry
    def corners(self, side: int | Tensor, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        """Uniform top (or left) coordinates of blocks of ``side`` patches.

        ``faithful`` draws in ``[0, G - side)`` (exclusive bound, the authors' off-by-one),
        ``fixed`` in ``[0, G - side]``.

        Args:
            side: block side, an int or a tensor broadcastable to ``shape`` (one per row).
            shape: output shape, e.g. (B, M).

        Returns:
            ``shape`` int64 coordinates.
        """
        num_positions = self.grid_size - side + (0 if self.faithful else 1)
        u = torch.rand(shape, dtype=torch.float64, generator=generator)
        coord = (u * num_positions).long()
        return torch.minimum(coord, torch.as_tensor(num_positions - 1))  # float rounding guard

    def block_mask(self, top: Tensor, left: Tensor, h: int | Tensor, w: int | Tensor) -> Tensor:
        """Boolean masks of axis-aligned blocks.

        Args:
            top, left: (...) int64 corners.
            h, w: sides, ints or tensors broadcastable to ``top``.

        Returns:
            (..., G, G) bool, True inside the block.
        """
        grid = torch.arange(self.grid_size)
        in_rows = (grid >= top[..., None]) & (grid < (top + h)[..., None])  # (..., G)
        in_cols = (grid >= left[..., None]) & (grid < (left + w)[..., None])
        return in_rows[..., :, None] & in_cols[..., None, :]

    def block_indices(self, top: Tensor, left: Tensor, h: int, w: int) -> Tensor:
        """Raster indices of ``h`` x ``w`` blocks, row-major inside each block.

        Args:
            top, left: (...) int64 corners.

        Returns:
            (..., h * w) int64.
        """
        rows = top[..., None, None] + torch.arange(h)[:, None]  # (..., h, 1)
        cols = left[..., None, None] + torch.arange(w)  # (..., 1, w)
        return (rows * self.grid_size + cols).flatten(-2)

    def context_mask(self, target_top: Tensor, target_left: Tensor, target_hw: tuple[int | Tensor, int | Tensor],
                     context_top: Tensor, context_left: Tensor,
                     context_hw: tuple[int | Tensor, int | Tensor]) -> Tensor:
        """The context block of each row minus the union of its target blocks.

        Args:
            target_top, target_left: (R, M) target corners.
            target_hw: target sides, ints or (R, 1) tensors.
            context_top, context_left: (R,) context corners.
            context_hw: context sides, ints or (R,) tensors.

        Returns:
            (R, N) bool, True where the context keeps the patch.
        """
        targets = _union(self.block_mask(target_top, target_left, *target_hw), dim=-3)  # (R, G, G)
        context = self.block_mask(context_top, context_left, *context_hw)
        return (context & ~targets).flatten(-2)

    # ------------------------------------------------------------------ sampling
    def _describe(self, target_hw: tuple[int, int], context_hw: tuple[int, int]) -> str:
        g, c = self.grid_size, self.cfg
        return (f"{g}x{g} grid, mode '{c.mode}', {c.num_targets} target blocks of {target_hw[0]}x{target_hw[1]}, "
                f"context block {context_hw[0]}x{context_hw[1]}, min_keep {c.min_keep}")

    def _draw_batch_sides(self, generator: torch.Generator) -> tuple[tuple[int, int], tuple[int, int]]:
        """One (target, context) size for the batch whose blocks both hold >= min_keep patches (the
        same sizes for every caller whose ``generator`` is in the same state: a step's ranks and workers)."""
        min_keep = self.cfg.min_keep
        for _ in range(MAX_SIZE_ROUNDS):
            target, context = self.sample_block_sides(1, generator)
            th, tw = target[0].tolist()
            ch, cw = context[0].tolist()
            if th * tw >= min_keep and ch * cw >= min_keep:
                return (th, tw), (ch, cw)
        raise RuntimeError(
            f"MultiBlockMaskSampler: no block size with >= min_keep patches in {MAX_SIZE_ROUNDS} draws "
            f"(last: {self._describe((th, tw), (ch, cw))}); this geometry is infeasible, "
            "see check_mask_feasibility: lower min_keep or raise target_scale / context_scale")

    def sample_blocks(self, batch_size: int, generator: torch.Generator,
                      step_generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Targets and the un-collated contexts (rows may differ in length).

        Args:
            batch_size: B.
            generator: the randomness of the block positions (and of the sizes without
                ``step_generator``).
            step_generator: the randomness of the batch's block sizes, shared by every batch of a
                training step; None draws the sizes from ``generator``.

        Returns:
            context_mask_BN: (B, N) bool, each row's context block minus its targets; every row
                has >= min_keep True entries.
            target_idx_BMT: (B, M, T) int64 raster indices, row-major inside each block.

        Raises:
            RuntimeError: some rows are still invalid after the bounded re-draws.
        """
        if batch_size < 1:
            raise ValueError(f"MultiBlockMaskSampler: batch_size must be >= 1, got {batch_size}")
        (th, tw), (ch, cw) = self._draw_batch_sides(generator if step_generator is None else step_generator)
        num_targets, min_keep = self.cfg.num_targets, self.cfg.min_keep
        t_top = self.corners(th, (batch_size, num_targets), generator)
        t_left = self.corners(tw, (batch_size, num_targets), generator)
        c_top = self.corners(ch, (batch_size,), generator)
        c_left = self.corners(cw, (batch_size,), generator)
        context = self.context_mask(t_top, t_left, (th, tw), c_top, c_left, (ch, cw))
        bad = row_counts(context) < min_keep
        rounds = 0
        while bool(bad.any()):
            if rounds == MAX_POSITION_ROUNDS:
                raise RuntimeError(
                    f"MultiBlockMaskSampler: {int(bad.sum())} of {batch_size} contexts still have fewer than "
                    f"min_keep={min_keep} patches after {MAX_POSITION_ROUNDS} re-draws ({self._describe((th, tw), (ch, cw))}); "
                    "this geometry is infeasible, see check_mask_feasibility: lower min_keep or num_targets, "
                    "lower target_scale or raise context_scale")
            rows = bad.nonzero().squeeze(1)
            n = rows.numel()
            if rounds >= CONTEXT_ONLY_ROUNDS:
                t_top[rows] = self.corners(th, (n, num_targets), generator)
                t_left[rows] = self.corners(tw, (n, num_targets), generator)
            c_top[rows] = self.corners(ch, (n,), generator)
            c_left[rows] = self.corners(cw, (n,), generator)
            redrawn = self.context_mask(t_top[rows], t_left[rows], (th, tw), c_top[rows], c_left[rows], (ch, cw))
            context[rows] = redrawn
            bad[rows] = row_counts(redrawn) < min_keep
            rounds += 1
        return context, self.block_indices(t_top, t_left, th, tw)

    def collate_context(self, context_mask_BN: Tensor) -> tuple[Tensor, Tensor | None]:
        """Contexts as one (B, K) index tensor.

        ``faithful`` cuts every row to the batch-minimum length K by keeping its first K indices
        in raster order (the authors' collation). ``fixed`` keeps every token: K is the batch's
        longest context, shorter rows are padded with their own first index, and the validity
        mask marks the padding. Both are the core's collations (:mod:`jepa.nn.grid_masks`:
        ``cut_to_shortest(..., "first")`` and ``pad_to_longest``).

        Args:
            context_mask_BN: (B, N) bool un-collated contexts (every row non-empty).

        Returns:
            context_idx_BK: (B, K) int64, the real indices of every row ascending, then its padding.
            context_valid_BK: (B, K) bool, False on padding; None when no row is padded
                (``faithful`` always, ``fixed`` when all rows are equally long).
        """
        if self.faithful:
            return cut_to_shortest(context_mask_BN, "first"), None
        return pad_to_longest(context_mask_BN)

    def __call__(self, batch_size: int, generator: torch.Generator,
                 step_generator: torch.Generator | None = None) -> MaskSet:
        """Sample masks for a batch.

        Args:
            batch_size: B.
            generator: the randomness of this batch.
            step_generator: the randomness shared by every batch of a training step (the block
                sizes); None draws everything from ``generator``.

        Returns:
            MaskSet with ``context_idx_BK`` (B, K) int64 (ascending real indices, then padding in
            ``fixed`` mode, marked by ``context_valid_BK``) and ``target_idx_BMT`` (B, M, T) int64,
            T = h * w of the batch's target size.
        """
        context_mask_BN, target_idx_BMT = self.sample_blocks(batch_size, generator, step_generator)
        context_idx_BK, context_valid_BK = self.collate_context(context_mask_BN)
        return MaskSet(context_idx_BK, target_idx_BMT, context_valid_BK)


# ---------------------------------------------------------------------- feasibility
def _union(masks: Tensor, dim: int) -> Tensor:
    """Logical OR along ``dim`` (as a uint8 max: several times faster than ``any`` on CPU)."""
    return masks.view(torch.uint8).amax(dim).view(torch.bool)


def _kept_counts(t_top: Tensor, t_left: Tensor, th: Tensor, tw: Tensor, c_top: Tensor, c_left: Tensor,
                 ch: Tensor, cw: Tensor) -> Tensor:
    """Patches each row's context block keeps after removing its target blocks, by rectangle
    arithmetic: the same numbers as ``context_mask(...).sum(-1)`` at a cost independent of the grid
    (for large grids, where the masks would be large).

    The targets are clipped to the context; their union is measured on the cells that the
    rectangles' edges cut the plane into (a 2-D difference array over the sorted edges, summed up:
    a cell is covered when its count is positive).

    Args:
        t_top, t_left: (R, M) target corners; th, tw: (R, 1) or (R, M) target sides.
        c_top, c_left: (R,) context corners; ch, cw: (R,) context sides.

    Returns:
        (R,) int64 kept patches.
    """
    top = torch.maximum(t_top, c_top[:, None])
    bottom = torch.minimum(t_top + th, (c_top + ch)[:, None])
    left = torch.maximum(t_left, c_left[:, None])
    right = torch.minimum(t_left + tw, (c_left + cw)[:, None])
    empty = (bottom <= top) | (right <= left)
    bottom, right = torch.where(empty, top, bottom), torch.where(empty, left, right)  # zero-area rectangles
    ys = torch.cat([top, bottom], 1).sort(1).values  # (R, 2M) edges; cell k spans [ys_k, ys_k+1)
    xs = torch.cat([left, right], 1).sort(1).values
    rows, edges = ys.shape
    y0, y1 = torch.searchsorted(ys, top), torch.searchsorted(ys, bottom)  # (R, M) cell index ranges
    x0, x1 = torch.searchsorted(xs, left), torch.searchsorted(xs, right)
    corners = torch.stack([y0 * edges + x0, y0 * edges + x1, y1 * edges + x0, y1 * edges + x1], -1).flatten(1)
    signs = torch.tensor([1, -1, -1, 1], dtype=torch.int32).repeat(t_top.shape[1]).expand(rows, -1)
    diff = torch.zeros(rows, edges * edges, dtype=torch.int32).scatter_add_(1, corners, signs)
    covered = diff.view(rows, edges, edges).cumsum(1).cumsum(2)[:, :-1, :-1] > 0  # (R, 2M-1, 2M-1)
    cell_area = ys.diff(dim=1)[:, :, None] * xs.diff(dim=1)[:, None, :]
    return ch * cw - (covered * cell_area).sum((1, 2))


def _context_counts(sampler: MultiBlockMaskSampler, pair_t: Tensor, pair_c: Tensor, target_sides: Tensor,
                    context_sides: Tensor, generator: torch.Generator) -> Tensor:
    """Monte-Carlo context sizes, without re-draws, one row per (target size, context size) index pair.

    Args:
        pair_t, pair_c: (R,) int64 indices into ``target_sides`` / ``context_sides``.

    Returns:
        (R,) int64: the patches each row's context keeps after removing the row's targets.
    """
    th, tw = target_sides[pair_t, :, None].unbind(1)  # (R, 1) each
    ch, cw = context_sides[pair_c].unbind(1)  # (R,) each
    rows, m = pair_t.numel(), sampler.cfg.num_targets
    t_top = sampler.corners(th, (rows, m), generator)
    t_left = sampler.corners(tw, (rows, m), generator)
    c_top = sampler.corners(ch, (rows,), generator)
    c_left = sampler.corners(cw, (rows,), generator)
    # Per row, masks cost M x G^2 and rectangle arithmetic (2M)^2: take the cheaper, in bounded chunks.
    by_masks = m * sampler.num_tokens <= (2 * m) ** 2
    chunk = max(1, _CHECK_ELEMENTS // min(m * sampler.num_tokens, (2 * m) ** 2))
    out = []
    for i in range(0, rows, chunk):
        part = slice(i, i + chunk)
        if by_masks:
            kept = row_counts(sampler.context_mask(t_top[part], t_left[part], (th[part], tw[part]), c_top[part],
                                               c_left[part], (ch[part], cw[part]))).long()
        else:
            kept = _kept_counts(t_top[part], t_left[part], th[part], tw[part], c_top[part], c_left[part],
                                ch[part], cw[part])
        out.append(kept)
    return torch.cat(out)


def check_mask_feasibility(grid_size: int, cfg: MaskConfig) -> list[tuple[str, str]]:
    """Problems that make multi-block masking on a ``grid_size`` grid infeasible or unsafe.

    Deterministic checks: the grid suits the mode; every target and context block size the
    sampler can draw holds >= ``min_keep`` patches. Then a seeded Monte-Carlo estimate (a few
    thousand draws, no re-draws) of the probability that a row's context keeps >= ``min_keep``
    patches after removing its targets: rejected below ``MIN_VALID_PROBABILITY`` overall or below
    ``MIN_VALID_PROBABILITY_PER_SIZE`` for any drawable block size, since the sampler's re-draws
    are bounded. Deterministic for a given input (fixed seed); typically a few ms.

    Args:
        grid_size: G, patches per side.
        cfg: the ``mask`` section.

    Returns:
        ``(field, message)`` pairs, ``field`` relative to the mask section (``"min_keep"``,
        ``"target_scale"``, ...); each message gives the bad value, what is allowed and a fix.
        Empty when the geometry is feasible.
    """
    g, mk = grid_size, cfg.min_keep
    if grid_size < (2 if cfg.mode == "faithful" else 1):
        return [("mode", f"mode '{cfg.mode}' needs a patch grid of at least {'2x2' if cfg.mode == 'faithful' else '1x1'}, "
                         f"got {g}x{g}; use a larger crop_size or a smaller patch_size")]
    sampler = MultiBlockMaskSampler(grid_size, cfg)
    t_sides, t_prob = sampler.side_distribution("target")
    c_sides, c_prob = sampler.side_distribution("context")
    t_area, c_area = t_sides.prod(1), c_sides.prod(1)
    problems: list[tuple[str, str]] = []
    if int(t_area.min()) < mk:
        i = int(t_area.argmin())
        small = float(t_prob[t_area < mk].sum())
        problems.append(("min_keep", (
            f"min_keep={mk} but the smallest target block on a {g}x{g} grid is {t_sides[i, 0]}x{t_sides[i, 1]} = "
            f"{int(t_area[i])} patches (target_scale={cfg.target_scale}, target_aspect_ratio={cfg.target_aspect_ratio}, "
            f"mode '{cfg.mode}'); {small:.0%} of batches would draw a target block below min_keep (the authors' "
            f"sampler retries those forever). Allowed: min_keep <= {int(t_area.min())}. Fix: set min_keep to "
            f"{int(t_area.min())} or less, or raise target_scale, or use a larger grid (crop_size / patch_size)")))
    if int(c_area.min()) < mk:
        i = int(c_area.argmin())
        problems.append(("context_scale", (
            f"context_scale={cfg.context_scale} gives context blocks as small as {c_sides[i, 0]}x{c_sides[i, 1]} = "
            f"{int(c_area[i])} patches on a {g}x{g} grid, below min_keep={mk}. Allowed: blocks of >= min_keep "
            f"patches. Fix: raise context_scale or set min_keep to {int(c_area.min())} or less")))
    if problems:
        return problems

    gen = torch.Generator().manual_seed(0)
    num_t, num_c = t_sides.shape[0], c_sides.shape[0]
    if num_t * num_c <= MAX_CHECKED_PAIRS:  # every pair of block sizes, weighted by its probability
        rows_per_pair = max(32, min(128, 4096 // (num_t * num_c)))
        pair_t = torch.arange(num_t).repeat_interleave(num_c * rows_per_pair)
        pair_c = torch.arange(num_c).repeat_interleave(rows_per_pair).repeat(num_t)
        counts = _context_counts(sampler, pair_t, pair_c, t_sides, c_sides, gen).view(num_t * num_c, rows_per_pair)
        pair_prob = (t_prob[:, None] * c_prob[None, :]).flatten()  # (P,)

        def valid_share(k: int) -> tuple[float, float]:
            per_pair = (counts >= k).double().mean(-1)
            return float((per_pair * pair_prob).sum()), float(per_pair.min())
    else:  # large grids: rows drawn as the sampler draws them, plus the largest targets with the smallest contexts
        k_t, k_c = min(num_t, _EXTREME_SIDES), min(num_c, _EXTREME_SIDES)
        drawn = _context_counts(sampler, torch.multinomial(t_prob, _DRAWN_ROWS, True, generator=gen),
                                torch.multinomial(c_prob, _DRAWN_ROWS, True, generator=gen), t_sides, c_sides, gen)
        big_t, small_c = t_area.topk(k_t).indices, c_area.topk(k_c, largest=False).indices
        extreme = _context_counts(sampler, big_t.repeat_interleave(k_c * 32), small_c.repeat_interleave(32).repeat(k_t),
                                  t_sides, c_sides, gen).view(k_t * k_c, 32)

        def valid_share(k: int) -> tuple[float, float]:
            return float((drawn >= k).double().mean()), float((extreme >= k).double().mean(-1).min())

    def safe(k: int) -> bool:
        overall, worst = valid_share(k)
        return overall >= MIN_VALID_PROBABILITY and worst >= MIN_VALID_PROBABILITY_PER_SIZE

    if safe(mk):
        return []
    lo, hi = 0, mk - 1  # the largest safe min_keep (validity only falls as min_keep grows): binary search
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if safe(mid) else (lo, mid - 1)
    fix = f"set min_keep to {lo} or less, or " if lo >= 1 else ""
    overall, worst = valid_share(mk)
    return [("min_keep", (
        f"on a {g}x{g} grid (mode '{cfg.mode}', {cfg.num_targets} targets, target_scale={cfg.target_scale}, "
        f"context_scale={cfg.context_scale}) a context keeps >= min_keep={mk} patches after removing the targets "
        f"in only {overall:.0%} of draws ({worst:.0%} for the worst block size). Allowed: "
        f">= {MIN_VALID_PROBABILITY:.0%} overall and >= {MIN_VALID_PROBABILITY_PER_SIZE:.0%} for every block "
        f"size, so that the sampler's bounded re-draws always succeed. Fix: {fix}lower num_targets or "
        "target_scale, or raise context_scale"))]
