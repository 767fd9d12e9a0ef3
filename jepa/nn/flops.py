"""Analytic forward FLOPs of the transformers built on :mod:`jepa.nn`, generic in the token count.

Counting rules (every modality's, ``docs/flops.md``): a matmul of (m x k) by (k x n) costs
``2 m n k``; per pre-norm block on ``n`` tokens of width ``D`` with MLP width ``H`` that is the qkv,
output and MLP projections ``2 n (4 D^2 + 2 D H)`` plus attention's ``Q K^T`` and ``A V``,
``2 * 2 n^2 D``. Norms, softmax, GELU, residual adds and the position add are not counted (under
1 % for ViT-H). A patch (or tubelet) embedding is a matmul over flattened patches of ``V`` values
each: ``2 N V D``. Backward is counted as twice the forward (:data:`FORWARD_BACKWARD`).

A modality composes these into its training FLOPs per sample (``Modality.train_flops_per_sample``),
with its own expected context and target token counts.
"""

from __future__ import annotations

FORWARD_BACKWARD = 3.0
"""Cost of forward + backward relative to the forward alone (backward ~ 2x forward)."""


def block_flops(num_tokens: float, width: int, mlp_dim: int) -> float:
    """Forward FLOPs of one pre-norm transformer block on ``num_tokens`` tokens."""
    n, d = num_tokens, width
    projections = 2 * n * (3 * d * d + d * d + 2 * d * mlp_dim)  # qkv, proj, fc1, fc2
    attention = 2 * 2 * n * n * d  # Q K^T and A V over all heads
    return float(projections + attention)


def encoder_forward_flops(num_tokens: float, *, num_patches: int, embed_dim: int, depth: int, mlp_dim: int,
                          patch_values: int) -> float:
    """Forward FLOPs of a :class:`~jepa.nn.transformer.TransformerEncoder`: the patch embedding on
    all patches, the blocks on the kept tokens.

    Args:
        num_tokens: tokens that go through the blocks (N for the target encoder, K for the context).
        num_patches: N, patches embedded (the whole input).
        embed_dim, depth, mlp_dim: the encoder's width, depth and MLP width.
        patch_values: V, input values per patch (``C * p * p`` for an image, ``C * t * p * p`` for a
            clip's tubelet, ``C * P`` for a sequence).
    """
    patch_embed = 2.0 * num_patches * patch_values * embed_dim
    return patch_embed + depth * block_flops(num_tokens, embed_dim, mlp_dim)


def predictor_forward_flops(num_context: float, num_target: float, *, embed_dim: int, predictor_dim: int,
                            depth: int, mlp_dim: int) -> float:
    """Forward FLOPs of a :class:`~jepa.nn.transformer.TransformerPredictor` for one target set
    (K context + T mask tokens)."""
    embed = 2.0 * num_context * embed_dim * predictor_dim
    project = 2.0 * num_target * predictor_dim * embed_dim
    return embed + depth * block_flops(num_context + num_target, predictor_dim, mlp_dim) + project
