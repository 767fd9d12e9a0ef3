"""The transformer block the JEPA models stack, and how a stack of them runs.

The block is timm's pre-norm ``Block``: LayerNorm -> attention (fused qkv with bias, fused
scaled-dot-product attention) -> LayerNorm -> GELU MLP, each with a residual and optional
stochastic depth. Padded rows (``MaskSet.context_valid_BK``) run with a boolean key mask
(:func:`key_padding_mask`) so that no token attends to a padding entry; without padding the blocks
run with no mask, on the fused kernel.
"""

# No ``from __future__ import annotations``: these functions are compiled by TorchScript when a
# scripted model calls them.
from functools import partial
from typing import Optional

from timm.layers import Mlp
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

LAYER_NORM_EPS = 1e-6


def _mlp_of_width(*, width: int, hidden_features: int, **kwargs) -> Mlp:
    # timm's Block derives the hidden width as int(dim * mlp_ratio), which float rounding can
    # make one short for widths that are not a multiple of dim (ViT-g: 6144 / 1408); pin it.
    del hidden_features
    return Mlp(hidden_features=width, **kwargs)


def transformer_block(dim: int, num_heads: int, mlp_dim: int, drop_path: float) -> Block:
    """One pre-norm transformer block of width ``dim`` with an MLP of exactly ``mlp_dim`` hidden units.

    Its parameter names (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``)
    are those of the released I-JEPA and V-JEPA checkpoints.
    """
    return Block(
        dim, num_heads, mlp_ratio=mlp_dim / dim, qkv_bias=True, drop_path=drop_path,
        norm_layer=partial(nn.LayerNorm, eps=LAYER_NORM_EPS), act_layer=nn.GELU,
        mlp_layer=partial(_mlp_of_width, width=mlp_dim),
    )


def key_padding_mask(valid_BK: Tensor) -> Tensor:
    """(B, K) bool validity -> (B, 1, 1, K) boolean attention mask (True: may be attended to), which
    scaled-dot-product attention broadcasts over heads and queries."""
    return valid_BK[:, None, None, :]


def checkpoint_blocks(blocks: nn.ModuleList, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
    """Run ``blocks`` in order, each recomputed in the backward pass (non-reentrant checkpoint). Eager only."""
    for blk in blocks:
        x = checkpoint(blk, x, use_reentrant=False) if attn_mask is None else \
            checkpoint(blk, x, attn_mask, use_reentrant=False)
    return x
