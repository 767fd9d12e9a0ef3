"""Activation memory of a transformer encoder: the bytes autograd keeps for backward.

Per pre-norm block on ``n`` tokens of width ``D`` (MLP ``H``, ``h`` heads), with ``a`` the bytes of
an activation in the compute dtype (4 in fp32, 2 under bf16/fp16 autocast), autograd saves, per
token (measured with ``torch.autograd.graph.saved_tensors_hooks``, ``tests/test_plan.py``):

* both LayerNorm inputs in fp32 (the residual stream stays fp32 under autocast), ``2 x 4 D``,
  and their mean and rstd, ``16`` bytes;
* the inputs of qkv and fc1 (the normed tokens, cast to the compute dtype), ``2 a D``;
* q, k, v (one qkv output) and the attention output (also the proj input), ``4 a D``, plus the
  fused kernel's log-sum-exp, ``4 h`` (flash / CPU-flash SDPA: no n x n matrix is kept);
* the GELU input and output (fc2's input), ``2 a H``.

With activation checkpointing each block keeps only its input (``4 n D``); one block's full
activations come back during its recomputation, so the peak adds the largest single block.
Modalities (I-JEPA's masked context and predictor) and objectives (LeJEPA's views) build their
estimates from these pieces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from jepa.nn.rope_blocks import RoPEBlock

from jepa.errors import PluginError

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


def _num_tokens(encoder: torch.nn.Module, input_shape: tuple[int, ...]) -> int:
    """Tokens ``encoder.embed_tokens`` makes of one sample: on a ``meta`` input for a ``meta`` build
    (nothing computed), else on one zero sample of the encoder's device and dtype."""
    param = next(encoder.parameters())
    with torch.no_grad():
        x = torch.zeros((1, *input_shape), device=param.device, dtype=param.dtype)
        return encoder.embed_tokens(x).shape[1]


def encoder_activation_bytes(encoder: torch.nn.Module, input_shape: tuple[int, ...], *, act_bytes: int,
                             checkpointing: bool) -> ActivationBytes:
    """Activation bytes of one sample of ``input_shape`` (no batch dimension) through every token of
    a :class:`~jepa.nn.transformer.TransformerEncoder` (built on any device; on ``meta`` nothing
    is computed, else the token count comes from ``embed_tokens`` on one zero sample).

    Counts the blocks, the patch embedding's input (its weight gradient) and the final norm.

    Raises:
        ValueError: ``encoder`` is not built on the core blocks (no ``blocks`` / ``embed_tokens``).
    """
    blocks = getattr(encoder, "blocks", None)
    if blocks is None or not hasattr(encoder, "embed_tokens") or len(blocks) == 0:
        raise PluginError(f"{type(encoder).__name__} is not a jepa.nn TransformerEncoder (no blocks / embed_tokens); "
                          "its activation memory cannot be estimated")
    tokens = _num_tokens(encoder, input_shape)
    width = encoder.embed_dim
    block = tokens * _block_bytes(blocks[0], width, act_bytes)
    outside = math.prod(input_shape) * act_bytes + tokens * (FP32 * width + 8)
    if checkpointing:
        return ActivationBytes(len(blocks) * tokens * FP32 * width + outside, block)
    return ActivationBytes(len(blocks) * block + outside, 0.0)


#: Extra bytes per token and activation byte of width a RoPE block saves (the rotated q and k and
#: the rotation's intermediate: 3 a D, measured; the cos / sin tables are per batch and left out).
ROPE_EXTRA = 3


def _block_bytes(block: torch.nn.Module, width: int, act_bytes: int) -> float:
    """Bytes a core block (timm's ``Block`` or :class:`~jepa.nn.rope_blocks.RoPEBlock`) saves per token."""
    heads, mlp = block.attn.num_heads, block.mlp.fc1.out_features
    extra = ROPE_EXTRA * act_bytes * width if isinstance(block, RoPEBlock) else 0
    return block_bytes_per_token(width, mlp, heads, act_bytes) + extra


def masked_step_activation_bytes(encoder: torch.nn.Module, predictor: torch.nn.Module, input_shape: tuple[int, ...],
                                 pairs: list[tuple[float, int, float]], *, act_bytes: int,
                                 checkpointing: bool) -> ActivationBytes:
    """Activation bytes of one sample of an I-JEPA / V-JEPA step on core-block models: for every
    (context, target) pair the context encoder runs on K tokens and the predictor on the context
    repeated per target block plus T tokens per block; the target encoder runs without gradients.

    Args:
        encoder, predictor: :class:`~jepa.nn.transformer.TransformerEncoder` /
            :class:`~jepa.nn.transformer.TransformerPredictor` (``meta`` builds are fine).
        input_shape: one sample's input shape (no batch dimension).
        pairs: ``(K, M, T)`` per pair: context tokens, target blocks, tokens per block (means over
            collated batches, e.g. from the mask sampler).
        act_bytes: bytes of an activation in the compute dtype.
        checkpointing: ``engine.activation_checkpointing``.

    Outside the blocks, per pair: the patch embedding's input and all N embedded tokens (the
    context gather keeps its input), the final norms, the predictor's input and output projections
    and the loss's two operands, and the gather indices.
    """
    n = _num_tokens(encoder, input_shape)
    d, p = encoder.embed_dim, predictor.predictor_dim
    e_token, p_token = _block_bytes(encoder.blocks[0], d, act_bytes), _block_bytes(predictor.predictor_blocks[0], p, act_bytes)
    e_depth, p_depth = len(encoder.blocks), len(predictor.predictor_blocks)
    saved = peak = 0.0
    for k, m, t in pairs:
        enc_block = k * e_token
        pred_block = m * (k + t) * p_token
        outside = (math.prod(input_shape) * act_bytes       # patch-embedding input (weight gradient)
                   + n * FP32 * d                            # all N tokens, kept by the context gather
                   + k * (FP32 * d + 8) + 8                  # final encoder norm input + stats
                   + m * k * act_bytes * d                   # predictor_embed input (context repeated M times)
                   + m * t * (FP32 * p + 8)                  # predictor norm input (the targets' slice) + stats
                   + m * t * act_bytes * p                   # predictor_proj input
                   + 2 * m * t * FP32 * d                    # loss operands (prediction, target)
                   + 8 * (m * (k + t) + k))                  # int64 gather indices
        if checkpointing:
            saved += e_depth * k * FP32 * d + p_depth * m * (k + t) * FP32 * p + outside
            peak = max(peak, enc_block, pred_block)
        else:
            saved += e_depth * enc_block + p_depth * pred_block + outside
    return ActivationBytes(saved, peak)
