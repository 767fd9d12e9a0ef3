"""3-D multi-block masking for V-JEPA: several mask generators per clip, one (context, target) pair each.

The method and its defaults: docs/method/vjepa.md, "Masks" and "Collation".

The token grid of a clip is ``T' x H' x W'`` (``N`` tokens, raster index ``(t * H' + r) * W' + c``).
A generator draws ``num_blocks`` blocks of ``t x h x w`` tokens per clip; its **target** is the union
of the blocks and its **context** everything else (the two are disjoint and cover the clip). With
V-JEPA's ``temporal_scale = (1, 1)`` every block spans all time steps, so masks are "tubes". A
generator is the core's 3-D block sampler (:class:`jepa.nn.grid_masks.GridBlockMaskSampler`) with
this section's names; what stays here is the configuration, the messages and the feasibility check.

Block size (one per batch and generator, as in the authors' sampler; in training one per optimiser
step, shared by all its micro batches through ``step_generator``), from three uniforms
``u_t, u_s, u_a``: ``t = max(1, int(T' * s_t))``, ``area = int(H' * W' * s_s)``,
``h = round(sqrt(area * a))``, ``w = round(sqrt(area / a))`` (round half to even), clamped to
``[1, H']`` and ``[1, W']``, where ``s_t, s_s, a`` are the uniforms mapped onto ``temporal_scale``,
``spatial_scale`` and ``aspect_ratio``. Block corners are uniform and inclusive
(``top`` in ``[0, H' - h]``, likewise ``left`` and the start time). With ``max_temporal_keep < 1``
the time steps from ``max(1, int(T' * max_temporal_keep))`` on are removed from the context and
added to the target, as in the authors' code.

Collation: the contract's :class:`~jepa.interfaces.MaskSet` wants rows of equal length, so, as in
V-JEPA, each generator cuts every context to the batch's shortest context K and every target to
the shortest target T (targets come as ``(B, 1, T)``: one target set per generator). How rows are
cut (``VideoMaskConfig.mode``):

* ``faithful`` keeps the first K (or T) indices in raster order, the authors' collation. Raster
  order is time-major, so longer rows lose their **last time steps** (a bias towards early frames);
* ``fixed`` keeps a uniformly random subset of each row (sorted), which has no positional bias.

Deliberate differences from the authors' code: every random number comes from the ``torch.Generator``
passed in (theirs: the block size from a step-counter seed, the corners from the global RNG); a
clip whose context has fewer than ``min_keep`` tokens (theirs: zero) re-draws its corners, at most
``MAX_POSITION_ROUNDS`` times, then the sampler raises ``RuntimeError`` naming the geometry instead of
looping forever; :func:`check_mask_feasibility` rejects geometries where that is not safe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from jepa.errors import ConfigError
from jepa.interfaces import MaskSampler, MaskSet
from jepa.modalities.video.config import MaskGeneratorConfig, VideoMaskConfig
from jepa.nn import grid_masks
from jepa.nn.grid_masks import BlockSpec, GridBlockMaskSampler, cut_to_shortest

MAX_POSITION_ROUNDS = grid_masks.MAX_POSITION_ROUNDS
"""Re-draw rounds for the clips whose context is below min_keep before giving up."""
MIN_VALID_PROBABILITY = 0.5
"""check_mask_feasibility rejects generators whose clips are valid less often than this ..."""
MIN_VALID_PROBABILITY_PER_SIZE = 0.25
"""... or less often than this for some drawable block size (100 re-draws at 0.25 fail with p ~ 3e-13)."""


@dataclass(frozen=True)
class BlockDraw(grid_masks.BlockDraw):
    """One generator's un-collated draw for a batch (:class:`jepa.nn.grid_masks.BlockDraw` on a 3-D grid).

    Attributes:
        sides: (3,) int64 block size ``(t, h, w)`` in tokens, shared by the batch.
        corners_BMA: (B, M, 3) int64 ``(start, top, left)`` of every block (also ``corners_BM3``).
        target_mask_BN: (B, N) bool, the union of the blocks (plus the time steps the context may
            not use); the context is its complement.
    """

    @property
    def corners_BM3(self) -> Tensor:
        return self.corners_BMA


class BlockMaskGenerator(GridBlockMaskSampler):
    """One V-JEPA mask generator on a ``T' x H' x W'`` token grid: the core's 3-D block sampler
    (:class:`jepa.nn.grid_masks.GridBlockMaskSampler`, union targets) configured by a generator section.

    Args:
        grid: ``(T', H', W')`` token grid of a training clip.
        cfg: this generator's section (``temporal_scale`` is the core's ``leading_scale``,
            ``spatial_scale`` its ``scale``, ``max_temporal_keep`` its ``leading_keep``).
        mode: ``"faithful"`` (core collation ``"first"``) or ``"fixed"`` (``"random"``); see the module docstring.
        min_keep: fewest context tokens a clip may keep.

    Attributes:
        num_tokens: N = T' * H' * W'.
        num_context_steps: time steps the context may use (``max_temporal_keep``).
    """

    infeasible_fix = "see check_mask_feasibility: lower num_blocks or spatial_scale, or min_keep"

    def __init__(self, grid: tuple[int, int, int], cfg: MaskGeneratorConfig, mode: str = "faithful", min_keep: int = 1):
        if min(grid) < 1:
            raise ConfigError(f"BlockMaskGenerator: the token grid {grid} must be non-empty")
        if mode not in ("faithful", "fixed"):
            raise ConfigError(f"BlockMaskGenerator: mode must be 'faithful' or 'fixed', got {mode!r}")
        spec = BlockSpec(num_blocks=cfg.num_blocks, scale=tuple(cfg.spatial_scale), aspect_ratio=tuple(cfg.aspect_ratio),
                         leading_scale=tuple(cfg.temporal_scale), leading_keep=cfg.max_temporal_keep)
        super().__init__(grid, spec, collation="first" if mode == "faithful" else "random", targets="union",
                         min_keep=min_keep)
        self.cfg, self.mode = cfg, mode
        self.num_context_steps = self.num_context_leading

    def block_sides(self, u_t: Tensor, u_s: Tensor, u_a: Tensor) -> Tensor:
        """Block sizes for uniforms in [0, 1] (same shapes, float64) -> (..., 3) int64 ``(t, h, w)``."""
        return self.sides_from_uniforms(torch.stack([u_t, u_s, u_a], dim=-1))

    def describe(self, sides: Tensor | None = None) -> str:
        c, (gt, gh, gw) = self.cfg, self.grid
        size = f"blocks of {'x'.join(str(int(s)) for s in sides)}" if sides is not None else "blocks"
        return (f"{gt}x{gh}x{gw} token grid, {c.num_blocks} {size} (spatial_scale={c.spatial_scale}, "
                f"temporal_scale={c.temporal_scale}, aspect_ratio={c.aspect_ratio}, "
                f"max_temporal_keep={c.max_temporal_keep}), min_keep {self.min_keep}")

    def sample_blocks(self, batch_size: int, generator: torch.Generator,
                      step_generator: torch.Generator | None = None) -> BlockDraw:
        """Draw one block size for the batch and block corners per clip, re-drawing the corners of
        clips whose context keeps fewer than ``min_keep`` tokens. The block size comes from
        ``step_generator`` when given (shared by every micro batch of a training step), else from
        ``generator``, like everything else.

        Raises:
            RuntimeError: some clips are still invalid after ``MAX_POSITION_ROUNDS`` re-draws.
        """
        d = super().sample_blocks(batch_size, generator, step_generator)
        return BlockDraw(d.sides, d.corners_BMA, d.target_mask_BN)

    def collate(self, mask_BN: Tensor, generator: torch.Generator) -> Tensor:
        """Cut every row of ``mask_BN`` to the batch-minimum count L: the first L in raster order
        (``faithful``) or a uniformly random L-subset (``fixed``).

        Returns:
            (B, L) int64 indices, ascending in every row.
        """
        return cut_to_shortest(mask_BN, self.collation, generator)


class MultiMaskSampler(MaskSampler):
    """V-JEPA's mask collator: every generator of ``cfg.generators`` gives its own (context, target) pair.

    Note: this returns a *tuple* of :class:`MaskSet` (one per generator, in ``cfg.generators``
    order), not one ``MaskSet``; the core carries several pairs per batch once the contract
    allows it. Each generator is itself a :class:`MaskSampler` (``generators[i]``).

    Args:
        grid: ``(T', H', W')`` token grid of a training clip.
        cfg: the ``mask`` section.

    Attributes:
        num_tokens: N.
        generators: one :class:`BlockMaskGenerator` per configured generator.
    """

    def __init__(self, grid: tuple[int, int, int], cfg: VideoMaskConfig):
        self.cfg = cfg
        self.generators = tuple(BlockMaskGenerator(grid, g, cfg.mode, cfg.min_keep) for g in cfg.generators)
        self.num_tokens = self.generators[0].num_tokens

    @property
    def num_mask_sets(self) -> int:
        return len(self.generators)

    def __call__(self, batch_size: int, generator: torch.Generator,  # type: ignore[override]
                 step_generator: torch.Generator | None = None) -> tuple[MaskSet, ...]:
        """One MaskSet per generator, drawn in order from ``generator``; with ``step_generator`` (the
        training loaders pass one per optimiser step) every generator's block size comes from it, so all
        micro batches of a step, on every rank and worker, share the sizes, as the authors' sampler
        shares one size per batch. Without it the draws are those of ``generator`` alone."""
        return tuple(g(batch_size, generator, step_generator) for g in self.generators)


# ---------------------------------------------------------------------- feasibility
def check_mask_feasibility(grid: tuple[int, int, int], cfg: VideoMaskConfig,
                           num_rows: int = 2048) -> list[tuple[str, str]]:
    """Problems that make a generator's masks infeasible or unsafe on the token grid ``grid``.

    For each generator, a seeded Monte-Carlo estimate (no re-draws) of the probability that a clip's
    context keeps >= ``min_keep`` tokens: over the block-size distribution (must be >=
    ``MIN_VALID_PROBABILITY``) and for each of 27 block sizes spanning it (the uniforms at 0, 1/2, 1;
    each must be >= ``MIN_VALID_PROBABILITY_PER_SIZE``), since the sampler's re-draws are bounded.
    Deterministic for a given input; tens of ms at V-JEPA's ViT-L geometry.

    Returns:
        ``(field, message)`` pairs, ``field`` relative to the mask section (``"generators.1.spatial_scale"``,
        ``"min_keep"``); empty when every generator is feasible.
    """
    problems: list[tuple[str, str]] = []
    if min(grid) < 1:
        return [("generators", f"the token grid {grid} is empty; use more frames or a larger crop")]
    rng = torch.Generator().manual_seed(0)
    u = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    u_t, u_s, u_a = (x.flatten() for x in torch.meshgrid(u, u, u, indexing="ij"))
    per_size_rows = 96
    for i, g_cfg in enumerate(cfg.generators):
        gen = BlockMaskGenerator(grid, g_cfg, cfg.mode, cfg.min_keep)
        if gen.num_context_steps * grid[1] * grid[2] < cfg.min_keep:
            problems.append((f"generators.{i}.max_temporal_keep", (
                f"max_temporal_keep={g_cfg.max_temporal_keep} leaves the context {gen.num_context_steps} of "
                f"{grid[0]} time steps ({gen.num_context_steps * grid[1] * grid[2]} tokens), below "
                f"min_keep={cfg.min_keep}. Fix: raise max_temporal_keep or lower min_keep")))
            continue
        overall = float(gen.valid_rows(gen.sample_sides(num_rows, rng), rng).double().mean())
        sizes = gen.block_sides(u_t, u_s, u_a).repeat_interleave(per_size_rows, 0)  # (27 * R, 3)
        per_size = gen.valid_rows(sizes, rng).view(27, per_size_rows).double().mean(1)
        worst = int(per_size.argmin())
        if overall >= MIN_VALID_PROBABILITY and float(per_size[worst]) >= MIN_VALID_PROBABILITY_PER_SIZE:
            continue
        t, h, w = (int(s) for s in sizes[worst * per_size_rows])
        problems.append((f"generators.{i}.spatial_scale", (
            f"generator {i} ({gen.describe()}): a clip's context keeps >= min_keep={cfg.min_keep} tokens in only "
            f"{overall:.0%} of draws ({float(per_size[worst]):.0%} for blocks of {t}x{h}x{w}). Allowed: >= "
            f"{MIN_VALID_PROBABILITY:.0%} overall and >= {MIN_VALID_PROBABILITY_PER_SIZE:.0%} for every block size, "
            "so that the sampler's bounded re-draws always succeed. Fix: lower num_blocks or spatial_scale "
            "(or temporal_scale), or lower min_keep")))
    return problems
