"""The time-series transformer: context/target encoder and the narrow predictor.

Built from timm's pre-norm ``Block`` (fused scaled-dot-product attention, ``Mlp``); only the
JEPA-specific parts live here: a 1-D patch embedding along time (a strided ``Conv1d``: each token
is ``patch_size`` consecutive steps of every channel), fixed sin-cos positions, keep-index
gathering of context tokens, and the predictor's mask token. No class token.

Initialisation follows the I-JEPA convention: Linear and Conv1d weights truncated normal with
std 0.02, biases zero, LayerNorm weight 1 / bias 0, mask token truncated normal std 0.02.

Both modules are TorchScript-scriptable (``torch.jit.script``), which ``jepa export`` relies on.
"""

# No ``from __future__ import annotations`` here: TorchScript needs the class-level attribute
# annotations below as real types, not strings.
from functools import partial
from typing import List, Optional

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from jepa.interfaces import Encoder, Predictor
from jepa.model import gather_tokens
from jepa_timeseries.pos_embed import sincos_1d

INIT_STD = 0.02
LAYER_NORM_EPS = 1e-6


def _block(dim: int, num_heads: int, mlp_ratio: float, drop_path: float) -> Block:
    """One pre-norm transformer block: LN -> attention (fused qkv with bias) -> LN -> GELU MLP."""
    return Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=drop_path,
                 norm_layer=partial(nn.LayerNorm, eps=LAYER_NORM_EPS), act_layer=nn.GELU)


def init_weights(module: nn.Module) -> None:
    """The I-JEPA initialisation for one module (use with ``nn.Module.apply``)."""
    if isinstance(module, (nn.Linear, nn.Conv1d)):
        nn.init.trunc_normal_(module.weight, std=INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _check_width(where: str, dim: int, num_heads: int) -> None:
    if num_heads <= 0 or dim % num_heads:
        raise ValueError(f"{where}: num_heads={num_heads} must divide the width {dim}; pick a divisor of {dim}")
    if dim % 2:
        raise ValueError(f"{where}: width {dim} must be even for the 1-D sin-cos positions")


class TimeSeriesEncoder(Encoder):
    """Transformer over time tokens: the context encoder (with ``keep_idx_BK``) and the target encoder.

    The stored ``pos_embed`` buffer (1, N, D) is the sin-cos table of the training length; any
    other length divisible by the patch gets the table of its own token count, computed on the fly.

    Args:
        seq_len: L, training sequence length in time steps (a multiple of ``patch_size``).
        patch_size: P, time steps per token.
        in_chans: C, channels.
        embed_dim: D, token width.
        depth: transformer blocks.
        num_heads: attention heads (must divide ``embed_dim``).
        mlp_ratio: MLP hidden width as a multiple of ``embed_dim``.
        drop_path: stochastic-depth rate of the last block; block ``i`` uses ``drop_path * i / (depth - 1)``.

    Attributes:
        embed_dim, patch_size, seq_len, in_chans, depth, num_heads: as given.
        num_patches: N = seq_len // patch_size.
    """

    embed_dim: int
    patch_size: int
    seq_len: int
    in_chans: int
    depth: int
    num_heads: int
    num_patches: int
    grad_checkpointing: bool

    def __init__(self, seq_len: int, patch_size: int, in_chans: int, embed_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        if patch_size <= 0 or seq_len % patch_size or seq_len < patch_size:
            raise ValueError(f"TimeSeriesEncoder: seq_len={seq_len} must be a positive multiple of patch_size={patch_size}")
        _check_width("TimeSeriesEncoder", embed_dim, num_heads)
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.seq_len = seq_len
        self.in_chans = in_chans
        self.depth = depth
        self.num_heads = num_heads
        self.num_patches = seq_len // patch_size
        self.grad_checkpointing = False

        self.patch_embed = nn.Conv1d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.register_buffer("pos_embed", sincos_1d(embed_dim, self.num_patches).unsqueeze(0))
        rates = torch.linspace(0, drop_path, depth, device="cpu").tolist() if depth > 1 else [drop_path]
        self.blocks = nn.ModuleList([_block(embed_dim, num_heads, mlp_ratio, r) for r in rates])
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.apply(init_weights)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (non-reentrant) while training (eager only)."""
        self.grad_checkpointing = enable

    def _tokens(self, x: Tensor) -> Tensor:
        """(B, C, L) -> (B, N, D) patch embeddings plus the positions of N = L / P tokens."""
        length = x.shape[-1]
        p = self.patch_size
        if length % p != 0 or length < p:
            raise ValueError("TimeSeriesEncoder: sequence length " + str(length) + " is not a positive multiple of the "
                             "patch size " + str(p) + "; crop to a multiple of " + str(p))
        tokens = self.patch_embed(x).transpose(1, 2)
        n = length // p
        if n == self.num_patches:
            pos = self.pos_embed
        else:
            pos = sincos_1d(self.embed_dim, n, device=tokens.device).to(self.pos_embed.dtype).unsqueeze(0)
        return tokens + pos

    @torch.jit.unused
    def _blocks_checkpointed(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = checkpoint(blk, x, use_reentrant=False)
        return x

    def _run_blocks(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing and self.training:
            return self._blocks_checkpointed(x)
        for blk in self.blocks:
            x = blk(x)
        return x

    def forward(self, x: Tensor, keep_idx_BK: Optional[Tensor] = None) -> Tensor:
        """Encode sequences, optionally only the kept (context) tokens.

        Args:
            x: (B, C, L) sequences, L a multiple of the patch size.
            keep_idx_BK: (B, K) int64 token indices to keep; None keeps all.

        Returns:
            (B, K, D) or (B, N, D) final-normed tokens, N = L / P.
        """
        tokens = self._tokens(x)
        if keep_idx_BK is not None:
            tokens = gather_tokens(tokens, keep_idx_BK)
        return self.norm(self._run_blocks(tokens))

    @torch.jit.export
    def forward_layers(self, x: Tensor, num_last: int = 1) -> List[Tensor]:
        """Outputs of the last ``num_last`` blocks on all tokens, each normed with the final norm.

        Returns:
            ``num_last`` tensors (B, N, D), shallowest first; the last equals ``forward(x)``.
        """
        if num_last < 1 or num_last > self.depth:
            raise ValueError("TimeSeriesEncoder.forward_layers: num_last=" + str(num_last) + " must be in 1.."
                             + str(self.depth) + " (the encoder depth)")
        tokens = self._tokens(x)
        outputs: List[Tensor] = []
        first = self.depth - num_last
        for i, blk in enumerate(self.blocks):
            tokens = blk(tokens)
            if i >= first:
                outputs.append(self.norm(tokens))
        return outputs


class TimeSeriesPredictor(Predictor):
    """Narrow predictor: context tokens + one mask token per target position -> target representations.

    Args:
        num_tokens: N, tokens of a training sequence (positions are indices into them).
        embed_dim: D, the encoder width (input and output width).
        predictor_dim: the predictor's own width.
        depth: predictor blocks.
        num_heads: attention heads (must divide ``predictor_dim``).
        mlp_ratio: MLP hidden width as a multiple of ``predictor_dim``.
    """

    num_tokens: int
    embed_dim: int
    predictor_dim: int
    depth: int
    grad_checkpointing: bool

    def __init__(self, num_tokens: int, embed_dim: int, predictor_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0):
        super().__init__()
        _check_width("TimeSeriesPredictor", predictor_dim, num_heads)
        self.num_tokens = num_tokens
        self.embed_dim = embed_dim
        self.predictor_dim = predictor_dim
        self.depth = depth
        self.grad_checkpointing = False

        self.predictor_embed = nn.Linear(embed_dim, predictor_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, predictor_dim))
        self.register_buffer("predictor_pos_embed", sincos_1d(predictor_dim, num_tokens).unsqueeze(0))
        self.predictor_blocks = nn.ModuleList([_block(predictor_dim, num_heads, mlp_ratio, 0.0) for _ in range(depth)])
        self.predictor_norm = nn.LayerNorm(predictor_dim, eps=LAYER_NORM_EPS)
        self.predictor_proj = nn.Linear(predictor_dim, embed_dim)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.mask_token, std=INIT_STD)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (non-reentrant) while training (eager only)."""
        self.grad_checkpointing = enable

    @torch.jit.unused
    def _blocks_checkpointed(self, x: Tensor) -> Tensor:
        for blk in self.predictor_blocks:
            x = checkpoint(blk, x, use_reentrant=False)
        return x

    def forward(self, context_BKD: Tensor, context_idx_BK: Tensor, target_idx_BT: Tensor,
                mask_index: int = 0) -> Tensor:
        """Predict the tokens of one target span per row (one mask pair: ``mask_index`` is unused).

        Args:
            context_BKD: (B, K, D) context-encoder outputs.
            context_idx_BK: (B, K) int64 token positions of the context.
            target_idx_BT: (B, T) int64 token positions to predict.

        Returns:
            (B, T, D) predictions, in the order of ``target_idx_BT``.
        """
        b, k = context_idx_BK.shape
        pos_BNP = self.predictor_pos_embed.expand(b, -1, -1)
        context = self.predictor_embed(context_BKD) + gather_tokens(pos_BNP, context_idx_BK)
        queries = self.mask_token + gather_tokens(pos_BNP, target_idx_BT)  # (B, T, P)
        x = torch.cat([context, queries], dim=1)
        if self.grad_checkpointing and self.training:
            x = self._blocks_checkpointed(x)
        else:
            for blk in self.predictor_blocks:
                x = blk(x)
        return self.predictor_proj(self.predictor_norm(x[:, k:]))
