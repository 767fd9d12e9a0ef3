"""Activation memory of one image I-JEPA training sample: the bytes autograd keeps for backward.

The per-block bytes are the core's (:mod:`jepa.nn.memory`). Outside the blocks: the patch
embedding's input image (its weight gradient), all N embedded tokens (``torch.gather`` keeps its
input), the predictor's input projection (context repeated per target block), the final norms, the
output projection and the loss's two operands. The target encoder runs without gradients and
keeps nothing.
"""

from __future__ import annotations

from jepa.modalities.image.config import ImageConfig
from jepa.nn.memory import FP32, ActivationBytes, block_bytes_per_token


def activation_bytes_per_sample(cfg: ImageConfig, *, act_bytes: int, checkpointing: bool,
                                context_tokens: float, target_tokens: float) -> ActivationBytes:
    """Activation bytes of one image in a training micro batch.

    Args:
        cfg: the image recipe section.
        act_bytes: bytes per activation in the compute dtype (4 fp32, 2 bf16/fp16).
        checkpointing: ``engine.activation_checkpointing``.
        context_tokens, target_tokens: K and T (e.g. from the collated masks).
    """
    width, depth, heads, mlp = cfg.encoder.dims
    p = cfg.predictor
    p_mlp, p_heads = int(p.embed_dim * p.mlp_ratio), p.num_heads or heads
    m, k, t = cfg.mask.num_targets, context_tokens, target_tokens
    s, c, n = cfg.input.crop_size, cfg.input.in_chans, cfg.grid_size ** 2

    enc_block = k * block_bytes_per_token(width, mlp, heads, act_bytes)
    pred_block = m * (k + t) * block_bytes_per_token(p.embed_dim, p_mlp, p_heads, act_bytes)
    enc_input = k * FP32 * width   # what a checkpointed block keeps
    pred_input = m * (k + t) * FP32 * p.embed_dim

    outside = (
        c * s * s * act_bytes                     # patch-embedding input (weight gradient)
        + n * FP32 * width                        # all N tokens, kept by the context gather (fp32)
        + k * (FP32 * width + 8) + 8              # final encoder norm input + stats
        + m * k * act_bytes * width               # predictor_embed input (context repeated M times)
        + m * t * (FP32 * p.embed_dim + 8)        # predictor norm input (the target tokens' slice) + stats
        + m * t * act_bytes * p.embed_dim         # predictor_proj input
        + 2 * m * t * FP32 * width                # loss operands (prediction, target)
        + 8 * (m * (k + t) + k)                   # int64 gather indices
    )
    if checkpointing:
        return ActivationBytes(depth * enc_input + p.depth * pred_input + outside, max(enc_block, pred_block))
    return ActivationBytes(depth * enc_block + p.depth * pred_block + outside, 0.0)
