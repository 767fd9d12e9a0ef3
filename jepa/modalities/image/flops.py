"""Analytic training FLOPs of image I-JEPA (the counting rules for every modality: ``docs/flops.md``;
the transformer formulas are the core's, :mod:`jepa.nn.flops`).

Counting rules: a matmul of (m x k) by (k x n) costs ``2 m n k``; per transformer block on
``n`` tokens of width ``D`` with MLP width ``H`` that is the qkv, output and MLP projections
``2 n (4 D^2 + 2 D H)`` plus attention's ``Q K^T`` and ``A V``, ``2 * 2 n^2 D``. Norms,
softmax, GELU, residual adds and the position add are not counted (under 1 % for ViT-H).
The patch embedding is a matmul over flattened patches: ``2 N (C p^2) D``.

One training image costs:

* the target encoder's forward on all N patches (no backward: EMA update only);
* 3x (forward + backward = 2x forward) the context encoder on the K context patches (its
  patch embedding runs on all N patches before the context is gathered);
* 3x the predictor, once per target block on K + T tokens, M blocks.

Approximations: K and T are expectations for one image (:func:`expected_mask_tokens`),
and ``E[n^2]`` is taken as ``E[n]^2`` in the attention term. The collation of contexts
to the batch minimum is not modelled: it depends on the batch size (faithful mode at batch
128 on the 16x16 grid of ViT-H/14 @224 cuts the context from ~110 to ~68 patches, and the
estimate from 841 to 654 GFLOPs per image); pass the measured mean ``context_tokens`` to
account for it. Backward is counted as twice the forward for every
layer, although the patch embedding needs no input gradient (< 0.1 % over-count).
"""

from __future__ import annotations

import torch

from jepa.modalities.image.config import ImageConfig, MaskConfig
from jepa.modalities.image.masks import MultiBlockMaskSampler
from jepa.nn import flops as nn_flops
from jepa.nn.flops import FORWARD_BACKWARD, predictor_forward_flops


def encoder_forward_flops(num_tokens: float, *, num_patches: int, embed_dim: int, depth: int, mlp_dim: int,
                          patch_size: int, in_chans: int = 3) -> float:
    """Forward FLOPs of the ViT encoder: patch embedding on all patches, blocks on the kept ones
    (:func:`jepa.nn.flops.encoder_forward_flops` with ``in_chans * patch_size ** 2`` values per patch).

    Args:
        num_tokens: tokens that go through the blocks (N for the target encoder, K for the context).
        num_patches: N, patches embedded (the whole image).
        embed_dim, depth, mlp_dim: the encoder's width, depth and MLP width.
        patch_size, in_chans: patch side and input channels.
    """
    return nn_flops.encoder_forward_flops(num_tokens, num_patches=num_patches, embed_dim=embed_dim, depth=depth,
                                          mlp_dim=mlp_dim, patch_values=in_chans * patch_size ** 2)


def _coverage_1d(grid_size: int, sides: torch.Tensor, faithful: bool) -> torch.Tensor:
    """(S, G) probability that row g is inside a block of side ``sides[s]`` with a uniform corner.

    The corner is uniform over ``G - side`` positions in faithful mode (the authors' exclusive
    bound) and ``G - side + 1`` in fixed mode, as in :class:`MultiBlockMaskSampler`.
    """
    num_positions = (grid_size - sides + (0 if faithful else 1)).double()  # (S,)
    start = torch.arange(grid_size, dtype=torch.float64)  # corner positions 0..G-1
    row = torch.arange(grid_size, dtype=torch.float64)
    # corner c covers rows c .. c + side - 1 and is allowed when c < num_positions
    allowed = start[None, :] < num_positions[:, None]  # (S, C)
    covers = (row[None, None, :] >= start[None, :, None]) & (row[None, None, :] < start[None, :, None]
                                                             + sides.double()[:, None, None])  # (S, C, G)
    return (covers & allowed[:, :, None]).double().sum(1) / num_positions[:, None]


def expected_mask_tokens(grid_size: int, cfg: MaskConfig) -> tuple[float, float]:
    """Expected context patches K and patches per target block T for one image.

    Exact under the sampler's size distribution and uniform corners, given that target and
    context positions are independent: ``E[K] = sum over patches of P(in context) *
    E_size[(1 - P(in one target))^M]``. Ignores the min_keep re-draws (rare at paper
    settings) and the collation to the batch minimum.

    Returns:
        (K, T) as floats.
    """
    sampler = MultiBlockMaskSampler(grid_size, cfg)
    faithful = cfg.mode == "faithful"
    t_sides, t_prob = sampler.side_distribution("target")
    c_sides, c_prob = sampler.side_distribution("context")
    t_cover = _coverage_1d(grid_size, t_sides[:, 0], faithful)[:, :, None] * \
        _coverage_1d(grid_size, t_sides[:, 1], faithful)[:, None, :]  # (S, G, G)
    c_cover = _coverage_1d(grid_size, c_sides[:, 0], faithful)[:, :, None] * \
        _coverage_1d(grid_size, c_sides[:, 1], faithful)[:, None, :]
    p_context = (c_prob[:, None, None] * c_cover).sum(0)  # (G, G)
    p_free = (t_prob[:, None, None] * (1 - t_cover) ** cfg.num_targets).sum(0)
    num_context = float((p_context * p_free).sum())
    num_target = float((t_prob * t_sides.prod(1).double()).sum())
    return num_context, num_target


def train_flops_per_image(cfg: ImageConfig, context_tokens: float | None = None,
                          target_tokens: float | None = None) -> float:
    """Approximate training FLOPs per image (forward + backward, target encoder included).

    Args:
        cfg: the image recipe section.
        context_tokens: mean K actually seen (e.g. measured from the collated masks); default
            :func:`expected_mask_tokens` for one image.
        target_tokens: mean T; default the expectation.

    Returns:
        FLOPs per image for one optimiser step's worth of work.
    """
    g = cfg.grid_size
    n = g * g
    width, depth, _, mlp_dim = cfg.encoder.dims
    if context_tokens is None or target_tokens is None:
        k_exp, t_exp = expected_mask_tokens(g, cfg.mask)
        context_tokens = k_exp if context_tokens is None else context_tokens
        target_tokens = t_exp if target_tokens is None else target_tokens
    enc = dict(num_patches=n, embed_dim=width, depth=depth, mlp_dim=mlp_dim, patch_size=cfg.encoder.patch_size,
               in_chans=cfg.input.in_chans)
    p = cfg.predictor
    target = encoder_forward_flops(n, **enc)
    context = FORWARD_BACKWARD * encoder_forward_flops(context_tokens, **enc)
    predictor = FORWARD_BACKWARD * cfg.mask.num_targets * predictor_forward_flops(
        context_tokens, target_tokens, embed_dim=width, predictor_dim=p.embed_dim, depth=p.depth,
        mlp_dim=int(p.embed_dim * p.mlp_ratio))
    return target + context + predictor
