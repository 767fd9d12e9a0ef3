"""The pre-norm transformer block with rotary positions (:mod:`jepa.nn.rope`), and how a stack of them runs.

The block is :func:`jepa.nn.blocks.transformer_block`'s (LayerNorm eps 1e-6 -> attention with fused
qkv with bias and fused scaled-dot-product attention -> LayerNorm -> exact-GELU MLP, residuals,
optional stochastic depth), except that the attention rotates its queries and keys by the tokens'
grid positions before the product. The positions arrive as the ``(cos, sin)`` tables of
:func:`jepa.nn.rope.grid_rope`, computed once per forward for the whole stack. Parameter names
(``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``) are those of the
V-JEPA 2 checkpoints (the authors' ``Block`` with ``RoPEAttention``).

Padded rows run with the boolean key mask of :func:`jepa.nn.blocks.key_padding_mask`, as the
sin-cos blocks do.
"""

# No ``from __future__ import annotations``: TorchScript compiles these modules.
from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from jepa.errors import ConfigError
from jepa.nn.blocks import LAYER_NORM_EPS
from jepa.nn.rope import apply_rope


class RoPEAttention(nn.Module):
    """Multi-head self-attention whose queries and keys are rotated by the tokens' grid positions."""

    num_heads: int
    head_dim: int

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"RoPEAttention: {num_heads} heads do not divide the width {dim}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        """(B, N, D) tokens, (B or 1, 1, N, R) rotation tables, optional (B, 1, 1, N) bool key mask -> (B, N, D)."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, N, head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class RoPEBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``, with rotary attention."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = RoPEAttention(dim, num_heads)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, hidden_features=mlp_dim, act_layer=nn.GELU)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), cos, sin, attn_mask))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


def rope_block_stack(dim: int, depth: int, num_heads: int, mlp_dim: int, drop_path: float = 0.0) -> nn.ModuleList:
    """``depth`` :class:`RoPEBlock` s, drop-path rising linearly from 0 to ``drop_path`` (as the sin-cos stacks)."""
    rates = torch.linspace(0, drop_path, depth, device="cpu").tolist() if depth > 1 else [drop_path]
    return nn.ModuleList([RoPEBlock(dim, num_heads, mlp_dim, r) for r in rates])


def checkpoint_rope_blocks(blocks: nn.ModuleList, x: Tensor, cos: Tensor, sin: Tensor,
                           attn_mask: Optional[Tensor] = None) -> Tensor:
    """Run ``blocks`` in order, each recomputed in the backward pass (non-reentrant checkpoint). Eager only."""
    for blk in blocks:
        x = checkpoint(blk, x, cos, sin, attn_mask, use_reentrant=False)
    return x
