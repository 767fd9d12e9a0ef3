"""The V-JEPA Vision Transformer: tubelet patch embedding, context/target encoder, predictor.

The transformer blocks, their initialisation and the keep-index gather are the image ViT's
(:mod:`jepa.modalities.image.vit`): timm's pre-norm ``Block`` with fused scaled-dot-product
attention. What is video-specific lives here: clips ``(B, C, T, H, W)`` are cut into tubelets of
``tubelet_size`` frames x ``patch_size`` x ``patch_size`` pixels, giving a token grid
``T' x H' x W'`` in raster order (time slowest), with fixed 3-D sin-cos positions
(:func:`jepa.modalities.video.pos_embed.sincos_3d`).

Initialisation, as in the authors' code once ``init_video_model`` has re-initialised the modules:
every Linear and the tubelet convolution truncated normal std 0.02 with zero bias, LayerNorm 1 / 0,
no depth-dependent rescale; the predictor's mask tokens start at zero (``zero_init_mask_tokens``).

Parameter names follow the authors' layout (``patch_embed.proj``, ``blocks.i``, ``norm``;
``predictor_embed``, ``predictor_blocks.i``, ``predictor_norm``, ``predictor_proj``), except
that the predictor's per-generator mask tokens are one ``(G, 1, P)`` parameter ``mask_tokens``
(theirs: a list ``mask_tokens.g`` of ``(1, 1, P)``), so TorchScript can index it at run time.
"""

# No ``from __future__ import annotations``: TorchScript needs the class attribute annotations.
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from jepa.interfaces import Encoder, Predictor
from jepa.model import gather_tokens
from jepa.modalities.image.vit import INIT_STD, LAYER_NORM_EPS, _block, init_weights
from jepa.modalities.video.pos_embed import axis_widths, sincos_3d


def _init_video_weights(module: nn.Module) -> None:
    """The image ViT initialisation, extended to the tubelet convolution."""
    init_weights(module)
    if isinstance(module, nn.Conv3d):
        nn.init.trunc_normal_(module.weight, std=INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _check_width(where: str, dim: int, num_heads: int, uniform_power: bool) -> None:
    if num_heads <= 0 or dim % num_heads:
        raise ValueError(f"{where}: num_heads={num_heads} must divide the width {dim}; pick a divisor of {dim}")
    axis_widths(dim, uniform_power)  # raises for widths the sin-cos split cannot use


class TubeletEmbed(nn.Module):
    """Tubelet embedding: a ``Conv3d`` with kernel = stride = ``(tubelet, p, p)``.

    The forward computes the convolution as what it is, a Linear over flattened non-overlapping
    tubelets (``C * tubelet * p * p`` values, channel-major like the conv weight): identical
    results, and about 4x faster than ``conv3d`` on CPU at ViT-L size.
    """

    tubelet_size: int
    patch_size: int

    def __init__(self, in_chans: int, embed_dim: int, tubelet_size: int, patch_size: int):
        super().__init__()
        self.tubelet_size = tubelet_size
        self.patch_size = patch_size
        k = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=k, stride=k)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) -> (B, T/t * H/p * W/p, D), raster order (time slowest)."""
        b, c, t, h, w = x.shape
        tt, p = self.tubelet_size, self.patch_size
        x = x.reshape(b, c, t // tt, tt, h // p, p, w // p, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
        x = x.reshape(b, (t // tt) * (h // p) * (w // p), c * tt * p * p)
        return F.linear(x, self.proj.weight.reshape(self.proj.weight.shape[0], -1), self.proj.bias)


class VideoViTEncoder(Encoder):
    """Video ViT without class token: the context encoder (with ``keep_idx_BK``) and the target encoder.

    The stored ``pos_embed`` buffer (1, N, D) is the table of the training grid; a clip with
    another frame count (divisible by the tubelet) or resolution (divisible by the patch) gets
    the table of its own grid, computed on the fly.

    Args:
        num_frames: frames of a training clip (a multiple of ``tubelet_size``).
        img_size: side of the square training crop in pixels (a multiple of ``patch_size``).
        patch_size: side of a square patch in pixels.
        tubelet_size: frames per token.
        in_chans: input channels C.
        embed_dim: token width D.
        depth: number of transformer blocks.
        num_heads: attention heads (must divide ``embed_dim``).
        mlp_dim: hidden width of each block's MLP.
        drop_path: stochastic-depth rate of the last block (0 in V-JEPA).
        uniform_power: the sin-cos channel split (see :mod:`jepa.modalities.video.pos_embed`).

    Attributes:
        grid_t, grid_size: token time steps and patches per side of a training clip.
        num_patches: N = grid_t * grid_size ** 2.
    """

    embed_dim: int
    patch_size: int
    tubelet_size: int
    num_frames: int
    img_size: int
    in_chans: int
    depth: int
    num_heads: int
    grid_t: int
    grid_size: int
    num_patches: int
    uniform_power: bool
    grad_checkpointing: bool

    def __init__(self, num_frames: int, img_size: int, patch_size: int, tubelet_size: int, in_chans: int,
                 embed_dim: int, depth: int, num_heads: int, mlp_dim: int, drop_path: float = 0.0,
                 uniform_power: bool = True):
        super().__init__()
        if patch_size <= 0 or img_size % patch_size or img_size < patch_size:
            raise ValueError(f"VideoViTEncoder: img_size={img_size} must be a positive multiple of patch_size={patch_size}")
        if tubelet_size <= 0 or num_frames % tubelet_size or num_frames < tubelet_size:
            raise ValueError(f"VideoViTEncoder: num_frames={num_frames} must be a positive multiple of "
                             f"tubelet_size={tubelet_size}")
        _check_width("VideoViTEncoder", embed_dim, num_heads, uniform_power)
        if depth <= 0:
            raise ValueError(f"VideoViTEncoder: depth must be positive, got {depth}")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"VideoViTEncoder: drop_path must be in [0, 1), got {drop_path}")
        self.embed_dim, self.depth, self.num_heads = embed_dim, depth, num_heads
        self.patch_size, self.tubelet_size, self.in_chans = patch_size, tubelet_size, in_chans
        self.num_frames, self.img_size, self.uniform_power = num_frames, img_size, uniform_power
        self.grid_t, self.grid_size = num_frames // tubelet_size, img_size // patch_size
        self.num_patches = self.grid_t * self.grid_size ** 2
        self.grad_checkpointing = False

        self.patch_embed = TubeletEmbed(in_chans, embed_dim, tubelet_size, patch_size)
        table = sincos_3d(embed_dim, self.grid_t, self.grid_size, self.grid_size, uniform_power)
        self.register_buffer("pos_embed", table.unsqueeze(0))
        rates = torch.linspace(0, drop_path, depth, device="cpu").tolist() if depth > 1 else [drop_path]
        self.blocks = nn.ModuleList([_block(embed_dim, num_heads, mlp_dim, r) for r in rates])
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.apply(_init_video_weights)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (non-reentrant) while training; eager only."""
        self.grad_checkpointing = enable

    def _tokens(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) -> (B, N, D) tubelet embeddings plus positions of the actual grid."""
        if x.dim() != 5:
            raise ValueError("VideoViTEncoder: expected clips (B, C, T, H, W), got " + str(x.dim()) + " dimensions")
        t, h, w = x.shape[2], x.shape[3], x.shape[4]
        p, tt = self.patch_size, self.tubelet_size
        if t % tt != 0 or h % p != 0 or w % p != 0 or t == 0 or h == 0 or w == 0:
            raise ValueError("VideoViTEncoder: clip of " + str(t) + " frames at " + str(h) + "x" + str(w)
                             + " does not split into tubelets of " + str(tt) + " frames x " + str(p) + "x" + str(p)
                             + " pixels; use a frame count divisible by " + str(tt) + " and sides divisible by "
                             + str(p))
        tokens = self.patch_embed(x)
        if t // tt == self.grid_t and h // p == self.grid_size and w // p == self.grid_size:
            pos = self.pos_embed
        else:
            pos = sincos_3d(self.embed_dim, t // tt, h // p, w // p, self.uniform_power,
                            device=tokens.device).to(self.pos_embed.dtype).unsqueeze(0)
        return tokens + pos  # float32 under autocast, as with the stored table

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
        """Encode clips, optionally only the kept (context) tokens.

        Args:
            x: (B, C, T, H, W) clips; T a multiple of the tubelet, H and W of the patch.
            keep_idx_BK: (B, K) int64 raster indices of the tokens to keep; None keeps all.

        Returns:
            (B, K, D) or (B, N, D) final-normed tokens, N = (T / t) * (H / p) * (W / p).
        """
        tokens = self._tokens(x)
        if keep_idx_BK is not None:
            tokens = gather_tokens(tokens, keep_idx_BK)
        return self.norm(self._run_blocks(tokens))

    @torch.jit.export
    def forward_layers(self, x: Tensor, num_last: int = 1) -> List[Tensor]:
        """Outputs of the last ``num_last`` blocks on all tokens, each (B, N, D), normed with the
        final norm, shallowest first; the last equals ``forward(x)``."""
        if num_last < 1 or num_last > self.depth:
            raise ValueError("VideoViTEncoder.forward_layers: num_last=" + str(num_last) + " must be in 1.."
                             + str(self.depth) + " (the encoder depth)")
        tokens = self._tokens(x)
        outputs: List[Tensor] = []
        first = self.depth - num_last
        for i, blk in enumerate(self.blocks):
            tokens = blk(tokens)
            if i >= first:
                outputs.append(self.norm(tokens))
        return outputs


class VideoViTPredictor(Predictor):
    """The narrow V-JEPA predictor: context tokens + one mask token per target token -> targets.

    Args:
        grid_t, grid_size: token time steps and patches per side of the training grid
            (positions are raster indices into it).
        embed_dim: D, the encoder width (input and output width).
        predictor_dim: P, the predictor's width (384 in V-JEPA).
        depth: number of blocks (12 in V-JEPA).
        num_heads: attention heads (V-JEPA: the encoder's head count); must divide P.
        mlp_ratio: MLP hidden width as a multiple of P.
        num_mask_tokens: learned mask tokens, one per mask generator (V-JEPA: 2).
        uniform_power: the sin-cos channel split.
    """

    grid_t: int
    grid_size: int
    num_patches: int
    embed_dim: int
    predictor_dim: int
    depth: int
    num_heads: int
    num_mask_tokens: int
    grad_checkpointing: bool

    def __init__(self, grid_t: int, grid_size: int, embed_dim: int, predictor_dim: int = 384, depth: int = 12,
                 num_heads: int = 16, mlp_ratio: float = 4.0, num_mask_tokens: int = 2, uniform_power: bool = True):
        super().__init__()
        if grid_t <= 0 or grid_size <= 0:
            raise ValueError(f"VideoViTPredictor: the grid must be non-empty, got {grid_t}x{grid_size}x{grid_size}")
        if depth <= 0 or num_mask_tokens <= 0:
            raise ValueError(f"VideoViTPredictor: depth ({depth}) and num_mask_tokens ({num_mask_tokens}) must be positive")
        _check_width("VideoViTPredictor", predictor_dim, num_heads, uniform_power)
        self.grid_t, self.grid_size = grid_t, grid_size
        self.num_patches = grid_t * grid_size ** 2
        self.embed_dim, self.predictor_dim, self.depth, self.num_heads = embed_dim, predictor_dim, depth, num_heads
        self.num_mask_tokens = num_mask_tokens
        self.grad_checkpointing = False

        self.predictor_embed = nn.Linear(embed_dim, predictor_dim)
        self.mask_tokens = nn.Parameter(torch.zeros(num_mask_tokens, 1, predictor_dim))
        table = sincos_3d(predictor_dim, grid_t, grid_size, grid_size, uniform_power)
        self.register_buffer("predictor_pos_embed", table.unsqueeze(0))
        mlp_dim = int(predictor_dim * mlp_ratio)
        self.predictor_blocks = nn.ModuleList([_block(predictor_dim, num_heads, mlp_dim, 0.0) for _ in range(depth)])
        self.predictor_norm = nn.LayerNorm(predictor_dim, eps=LAYER_NORM_EPS)
        self.predictor_proj = nn.Linear(predictor_dim, embed_dim)
        self.apply(_init_video_weights)  # mask tokens stay zero

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (non-reentrant) while training; eager only."""
        self.grad_checkpointing = enable

    @torch.jit.unused
    def _blocks_checkpointed(self, x: Tensor) -> Tensor:
        for blk in self.predictor_blocks:
            x = checkpoint(blk, x, use_reentrant=False)
        return x

    def forward(self, context_BKD: Tensor, context_idx_BK: Tensor, target_idx_BT: Tensor,
                mask_index: int = 0) -> Tensor:
        """Predict the target tokens of one target set per row.

        Args:
            context_BKD: (B, K, D) context-encoder outputs.
            context_idx_BK: (B, K) int64 raster positions of the context tokens.
            target_idx_BT: (B, T) int64 raster positions to predict.
            mask_index: which mask generator produced the masks; selects its mask token.

        Returns:
            (B, T, D) predictions, in the order of ``target_idx_BT``.
        """
        if mask_index < 0 or mask_index >= self.num_mask_tokens:
            raise ValueError("VideoViTPredictor: mask_index=" + str(mask_index) + " must be in 0.."
                             + str(self.num_mask_tokens - 1) + " (one mask token per mask generator)")
        b, k = context_idx_BK.shape
        pos_BNP = self.predictor_pos_embed.expand(b, -1, -1)
        context = self.predictor_embed(context_BKD) + gather_tokens(pos_BNP, context_idx_BK)
        queries = self.mask_tokens[mask_index] + gather_tokens(pos_BNP, target_idx_BT)  # (B, T, P)
        x = torch.cat([context, queries], dim=1)
        if self.grad_checkpointing and self.training:
            x = self._blocks_checkpointed(x)
        else:
            for blk in self.predictor_blocks:
                x = blk(x)
        return self.predictor_proj(self.predictor_norm(x[:, k:]))  # the norm is per token
