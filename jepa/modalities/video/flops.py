"""Analytic training FLOPs of video V-JEPA, with the core's transformer formulas and counting rules
(:mod:`jepa.nn.flops`: matmuls ``2 m n k``, blocks ``2 n (4 D^2 + 2 D H) + 4 n^2 D``,
norms / softmax / GELU not counted, backward = 2x forward).

The tubelet embedding is a matmul over flattened tubelets of ``C * t * p^2`` values (the core's
``patch_values``). One training clip costs:

* the target encoder's forward on all N tokens (no backward: EMA update only);
* per mask generator g (V-JEPA's encoder wrapper runs the context encoder once per generator):
  3x the context encoder on the K_g context tokens (tubelet embedding on all N tokens), and
  3x the predictor on K_g + T_g tokens (one target set per generator).

K_g and T_g are expectations for one clip (seeded Monte-Carlo over the sampler's own block
draws); the collation to the batch minimum is not modelled (it depends on the batch size), and
``E[n^2]`` is taken as ``E[n]^2`` in the attention term.
"""

from __future__ import annotations

import torch

from jepa.modalities.video.config import VideoConfig, VideoMaskConfig
from jepa.modalities.video.masks import BlockMaskGenerator
from jepa.nn.flops import FORWARD_BACKWARD, encoder_forward_flops, predictor_forward_flops


def expected_mask_tokens(grid: tuple[int, int, int], cfg: VideoMaskConfig, num_rows: int = 2048) -> list[tuple[float, float]]:
    """Expected context tokens K and target tokens T of one clip, per generator.

    Seeded Monte-Carlo (each row its own block size and corners, no re-draws, no collation);
    deterministic for a given input.

    Returns:
        ``[(K, T), ...]`` in ``cfg.generators`` order.
    """
    rng = torch.Generator().manual_seed(0)
    out = []
    for g_cfg in cfg.generators:
        gen = BlockMaskGenerator(grid, g_cfg, cfg.mode, cfg.min_keep)
        sides = gen.sample_sides(num_rows, rng)
        target = gen.target_mask(gen.corners(sides, num_rows, rng), sides).sum(1).double().mean()
        out.append((gen.num_tokens - float(target), float(target)))
    return out


def train_flops_per_clip(cfg: VideoConfig, mask_tokens: list[tuple[float, float]] | None = None) -> float:
    """Approximate training FLOPs per clip (forward + backward, target encoder included).

    Args:
        cfg: the video recipe section.
        mask_tokens: ``[(K, T), ...]`` per generator, e.g. measured from collated masks;
            default :func:`expected_mask_tokens`.
    """
    grid = cfg.grid
    n = grid[0] * grid[1] * grid[2]
    width, depth, _, mlp_dim = cfg.encoder.dims
    if mask_tokens is None:
        mask_tokens = expected_mask_tokens(grid, cfg.mask)
    enc = dict(num_patches=n, embed_dim=width, depth=depth, mlp_dim=mlp_dim,
               patch_values=cfg.input.in_chans * cfg.encoder.tubelet_size * cfg.encoder.patch_size ** 2)
    p = cfg.predictor
    pred = dict(embed_dim=width, predictor_dim=p.embed_dim, depth=p.depth, mlp_dim=int(p.embed_dim * p.mlp_ratio))
    total = encoder_forward_flops(n, **enc)
    for k, t in mask_tokens:
        total += FORWARD_BACKWARD * (encoder_forward_flops(k, **enc) + predictor_forward_flops(k, t, **pred))
    return total
