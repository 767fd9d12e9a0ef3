"""Activation memory of one image I-JEPA training sample: the bytes autograd keeps for backward.

Per pre-norm timm block on ``n`` tokens of width ``D`` (MLP ``H``, ``h`` heads), with ``a`` the
bytes of an activation in the compute dtype (4 in fp32, 2 under bf16/fp16 autocast), autograd
saves, per token (measured with ``torch.autograd.graph.saved_tensors_hooks``):

* both LayerNorm inputs in fp32 (the residual stream stays fp32 under autocast), ``2 x 4 D``,
  and their mean and rstd, ``16`` bytes;
* the inputs of qkv and fc1 (the normed tokens, cast to the compute dtype), ``2 a D``;
* q, k, v (one qkv output) and the attention output (also the proj input), ``4 a D``, plus the
  fused kernel's log-sum-exp, ``4 h`` (flash / CPU-flash SDPA: no n x n matrix is kept);
* the GELU input and output (fc2's input), ``2 a H``.

Outside the blocks: the patch embedding's input image (its weight gradient), all N embedded
tokens (``torch.gather`` keeps its input), the predictor's input projection (context repeated per target block), the final norms,
the output projection and the loss's two operands. The target encoder runs without gradients
and keeps nothing.

With activation checkpointing each block keeps only its input (``4 n D``); one block's full
activations come back during its recomputation, so the peak adds the largest single block.
"""

from __future__ import annotations

from dataclasses import dataclass

from jepa.modalities.image.config import ImageConfig

FP32 = 4


def block_bytes_per_token(width: int, mlp_dim: int, num_heads: int, act_bytes: int) -> float:
    """Bytes one pre-norm block saves per token (see the module docstring)."""
    return 2 * FP32 * width + 16 + 6 * act_bytes * width + 4 * num_heads + 2 * act_bytes * mlp_dim


@dataclass(frozen=True)
class ActivationBytes:
    """Saved activation bytes of one training sample.

    Attributes:
        saved: bytes kept for backward after the forward pass.
        recompute_peak: extra bytes alive while a checkpointed block is recomputed (0 without
            activation checkpointing).
    """

    saved: float
    recompute_peak: float

    @property
    def peak(self) -> float:
        return self.saved + self.recompute_peak


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
