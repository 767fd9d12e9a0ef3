"""The V-JEPA Vision Transformer: tubelet patch embedding, context/target encoder, predictor
(docs/method/vjepa.md, "Tubelets").

Both models subclass the core's transformer bases (:mod:`jepa.nn.transformer`): timm's pre-norm
``Block`` with fused scaled-dot-product attention, the final norm, the keep-index gather and the
predictor's forward come from there, as for the image ViT. What is video-specific lives here: clips
``(B, C, T, H, W)`` are cut into tubelets of ``tubelet_size`` frames x ``patch_size`` x ``patch_size``
pixels, giving a token grid ``T' x H' x W'`` in raster order (time slowest), with fixed 3-D sin-cos
positions (:func:`jepa.nn.pos_embed.sincos_3d`), and one mask token per mask generator.

With ``encoder.pos_embed: rope`` the V-JEPA 2 models replace them (:class:`VideoRoPEEncoder`,
:class:`VideoRoPEPredictor`): no table, 3-D rotary positions in every block (:mod:`jepa.nn.rope`;
docs/method/vjepa.md, "V-JEPA 2").

Initialisation, as in the authors' code once ``init_video_model`` has re-initialised the modules
(:func:`jepa.nn.init.init_weights`): every Linear and the tubelet convolution truncated normal std
0.02 with zero bias, LayerNorm 1 / 0, no depth-dependent rescale; the predictor's mask tokens start
at zero (``zero_init_mask_tokens``).

Parameter names follow the authors' layout (``patch_embed.proj``, ``blocks.i``, ``norm``;
``predictor_embed``, ``predictor_blocks.i``, ``predictor_norm``, ``predictor_proj``), except
that the predictor's per-generator mask tokens are one ``(G, 1, P)`` parameter ``mask_tokens``
(theirs: a list ``mask_tokens.g`` of ``(1, 1, P)``), so TorchScript can index it at run time.
"""

# No ``from __future__ import annotations``: TorchScript needs the class attribute annotations.
import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jepa.errors import ConfigError
from jepa.model import gather_tokens
from jepa.nn.blocks import LAYER_NORM_EPS, key_padding_mask
from jepa.nn.geometry import check_heads, check_patch_tiles, check_sincos_width, check_stack
from jepa.nn.init import INIT_STD, init_weights
from jepa.nn.pos_embed import sincos_3d
from jepa.nn.rope import grid_rope, rope_axis_width
from jepa.nn.rope_blocks import checkpoint_rope_blocks, rope_block_stack
from jepa.nn.transformer import TransformerEncoder, TransformerPredictor


def _check_width(where: str, dim: int, num_heads: int, uniform_power: bool) -> None:
    check_heads(where, dim, num_heads)
    check_sincos_width(where, dim, num_axes=3, uniform_power=uniform_power)


def scale_residual_projections(blocks: nn.ModuleList) -> None:
    """V-JEPA 2's depth-scaled init: block ``i`` (from 0) has its ``attn.proj`` and ``mlp.fc2`` weights divided
    by ``sqrt(2 (i + 1))`` (the authors' ``_rescale_blocks``, which V-JEPA 2 keeps and V-JEPA 1's
    ``init_video_model`` overwrote by re-initialising every module)."""
    with torch.no_grad():
        for i, blk in enumerate(blocks):
            blk.attn.proj.weight.div_(math.sqrt(2.0 * (i + 1)))
            blk.mlp.fc2.weight.div_(math.sqrt(2.0 * (i + 1)))


def init_mask_tokens(tokens: Tensor, zero: bool) -> None:
    """Zero (V-JEPA's ``zero_init_mask_tokens``) or truncated normal std 0.02."""
    with torch.no_grad():
        if zero:
            tokens.zero_()
        else:
            nn.init.trunc_normal_(tokens, std=INIT_STD)


def init_predictor(predictor: nn.Module, zero_mask_tokens: bool, depth_scaled: bool) -> None:
    """A predictor's initialisation, in the authors' order: mask tokens (:func:`init_mask_tokens`), every module
    (:func:`~jepa.nn.init.init_weights`), then the depth-scaled residual projections when asked for."""
    init_mask_tokens(predictor.mask_tokens, zero_mask_tokens)
    predictor.apply(init_weights)
    if depth_scaled:
        scale_residual_projections(predictor.predictor_blocks)


def clip_grid(where: str, x: Tensor, tubelet_size: int, patch_size: int) -> Tuple[int, int, int]:
    """The token grid ``(T', H', W')`` of clips ``x`` (B, C, T, H, W); raises unless they split into whole
    tubelets (TorchScript-compatible)."""
    if x.dim() != 5:
        raise ConfigError(where + ": expected clips (B, C, T, H, W), got " + str(x.dim()) + " dimensions")
    t, h, w = x.shape[2], x.shape[3], x.shape[4]
    p, tt = patch_size, tubelet_size
    if t % tt != 0 or h % p != 0 or w % p != 0 or t == 0 or h == 0 or w == 0:
        raise ConfigError(where + ": clip of " + str(t) + " frames at " + str(h) + "x" + str(w)
                          + " does not split into tubelets of " + str(tt) + " frames x " + str(p) + "x" + str(p)
                          + " pixels; use a frame count divisible by " + str(tt) + " and sides divisible by "
                          + str(p))
    return t // tt, h // p, w // p


def _check_predictor_size(where: str, grid_t: int, grid_size: int, depth: int, num_mask_tokens: int) -> None:
    if grid_t <= 0 or grid_size <= 0:
        raise ConfigError(f"{where}: the grid must be non-empty, got {grid_t}x{grid_size}x{grid_size}")
    if depth <= 0 or num_mask_tokens <= 0:
        raise ConfigError(f"{where}: depth ({depth}) and num_mask_tokens ({num_mask_tokens}) must be positive")


def select_mask_token(where: str, mask_tokens: Tensor, mask_index: int, shared: bool) -> Tensor:
    """The (1, P) token of generator ``mask_index`` among ``mask_tokens`` (G, 1, P); token 0 for every
    generator when ``shared`` (TorchScript-compatible)."""
    if shared:
        mask_index = 0
    num_mask_tokens = mask_tokens.shape[0]
    if mask_index < 0 or mask_index >= num_mask_tokens:
        raise ConfigError(where + ": mask_index=" + str(mask_index) + " must be in 0.."
                          + str(num_mask_tokens - 1) + " (one mask token per mask generator)")
    return mask_tokens[mask_index]


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


class VideoViTEncoder(TransformerEncoder):
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
        uniform_power: the sin-cos channel split (see :mod:`jepa.nn.pos_embed`).
        depth_scaled_init: divide block ``i``'s ``attn.proj`` and ``mlp.fc2`` weights by ``sqrt(2 (i + 1))``
            after the init (V-JEPA 2; :func:`scale_residual_projections`).

    Attributes:
        grid_t, grid_size: token time steps and patches per side of a training clip.
        num_patches: N = grid_t * grid_size ** 2.
    """

    patch_size: int
    tubelet_size: int
    img_size: int
    in_chans: int
    num_frames: int
    num_heads: int
    grid_t: int
    grid_size: int
    num_patches: int
    uniform_power: bool

    def __init__(self, num_frames: int, img_size: int, patch_size: int, tubelet_size: int, in_chans: int,
                 embed_dim: int, depth: int, num_heads: int, mlp_dim: int, drop_path: float = 0.0,
                 uniform_power: bool = True, depth_scaled_init: bool = False):
        super().__init__()
        check_patch_tiles("VideoViTEncoder", "img_size", img_size, "patch_size", patch_size)
        check_stack("VideoViTEncoder", depth, drop_path)
        check_patch_tiles("VideoViTEncoder", "num_frames", num_frames, "tubelet_size", tubelet_size)
        _check_width("VideoViTEncoder", embed_dim, num_heads, uniform_power)
        self.num_heads = num_heads
        self.patch_size, self.tubelet_size, self.in_chans = patch_size, tubelet_size, in_chans
        self.num_frames, self.img_size, self.uniform_power = num_frames, img_size, uniform_power
        self.grid_t, self.grid_size = num_frames // tubelet_size, img_size // patch_size
        self.num_patches = self.grid_t * self.grid_size ** 2

        self.patch_embed = TubeletEmbed(in_chans, embed_dim, tubelet_size, patch_size)
        table = sincos_3d(embed_dim, self.grid_t, self.grid_size, self.grid_size, uniform_power)
        self.register_buffer("pos_embed", table.unsqueeze(0))
        self.build_blocks(embed_dim, depth, num_heads, mlp_dim, drop_path)
        self.apply(init_weights)
        if depth_scaled_init:
            scale_residual_projections(self.blocks)

    def embed_tokens(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) -> (B, N, D) tubelet embeddings plus positions of the actual grid."""
        grid_t, grid_h, grid_w = clip_grid("VideoViTEncoder", x, self.tubelet_size, self.patch_size)
        tokens = self.patch_embed(x)
        if grid_t == self.grid_t and grid_h == self.grid_size and grid_w == self.grid_size:
            pos = self.pos_embed
        else:
            pos = sincos_3d(self.embed_dim, grid_t, grid_h, grid_w, self.uniform_power,
                            device=tokens.device).to(self.pos_embed.dtype).unsqueeze(0)
        return tokens + pos  # float32 under autocast, as with the stored table


class VideoViTPredictor(TransformerPredictor):
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
        zero_init_mask_tokens: mask tokens start at zero (V-JEPA); else truncated normal std 0.02.
        shared_mask_token: every generator uses mask token 0 (V-JEPA 2 with one clip length).
        depth_scaled_init: as for :class:`VideoViTEncoder` (V-JEPA 2).
    """

    grid_t: int
    grid_size: int
    num_patches: int
    num_heads: int
    num_mask_tokens: int
    shared_mask_token: bool

    def __init__(self, grid_t: int, grid_size: int, embed_dim: int, predictor_dim: int = 384, depth: int = 12,
                 num_heads: int = 16, mlp_ratio: float = 4.0, num_mask_tokens: int = 2, uniform_power: bool = True,
                 zero_init_mask_tokens: bool = True, shared_mask_token: bool = False, depth_scaled_init: bool = False):
        super().__init__()
        _check_predictor_size("VideoViTPredictor", grid_t, grid_size, depth, num_mask_tokens)
        _check_width("VideoViTPredictor", predictor_dim, num_heads, uniform_power)
        self.grid_t, self.grid_size = grid_t, grid_size
        self.num_patches = grid_t * grid_size ** 2
        self.num_heads = num_heads
        self.num_mask_tokens = num_mask_tokens
        self.shared_mask_token = shared_mask_token

        self.mask_tokens = nn.Parameter(torch.zeros(num_mask_tokens, 1, predictor_dim))
        table = sincos_3d(predictor_dim, grid_t, grid_size, grid_size, uniform_power)
        self.register_buffer("predictor_pos_embed", table.unsqueeze(0))
        self.build_layers(embed_dim, predictor_dim, depth, num_heads, mlp_ratio)
        init_predictor(self, zero_init_mask_tokens, depth_scaled_init)

    def mask_token_for(self, mask_index: int) -> Tensor:
        """The (1, P) mask token of generator ``mask_index`` (token 0 for every generator when shared)."""
        return select_mask_token("VideoViTPredictor", self.mask_tokens, mask_index, self.shared_mask_token)


# ---------------------------------------------------------------------------------------------- V-JEPA 2: RoPE
def _check_rope_width(where: str, dim: int, num_heads: int) -> None:
    check_heads(where, dim, num_heads)
    rope_axis_width(dim // num_heads, 3)  # raises for a head too narrow to rotate


class VideoRoPEEncoder(TransformerEncoder):
    """The V-JEPA 2 video ViT: tubelet embedding, no position table, 3-D rotary positions in every block.

    Positions are the tokens' (time, height, width) coordinates on the grid of the actual clip
    (:func:`jepa.nn.rope.grid_rope`), so any frame count divisible by the tubelet and any size divisible
    by the patch is encoded without a table to resize; the context encoder's kept tokens keep the
    coordinates of their raster indices. Parameter names are the authors' (``patch_embed.proj``,
    ``blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``), and with no
    ``pos_embed``.

    Args: as :class:`VideoViTEncoder`, without ``uniform_power``; ``num_heads`` must leave each head at
    least 6 channels (a rotated pair per axis).
    """

    patch_size: int
    tubelet_size: int
    img_size: int
    in_chans: int
    num_frames: int
    num_heads: int
    head_dim: int
    grid_t: int
    grid_size: int
    num_patches: int

    def __init__(self, num_frames: int, img_size: int, patch_size: int, tubelet_size: int, in_chans: int,
                 embed_dim: int, depth: int, num_heads: int, mlp_dim: int, drop_path: float = 0.0,
                 depth_scaled_init: bool = False):
        super().__init__()
        check_patch_tiles("VideoRoPEEncoder", "img_size", img_size, "patch_size", patch_size)
        check_stack("VideoRoPEEncoder", depth, drop_path)
        check_patch_tiles("VideoRoPEEncoder", "num_frames", num_frames, "tubelet_size", tubelet_size)
        _check_rope_width("VideoRoPEEncoder", embed_dim, num_heads)
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.patch_size, self.tubelet_size, self.in_chans = patch_size, tubelet_size, in_chans
        self.num_frames, self.img_size = num_frames, img_size
        self.grid_t, self.grid_size = num_frames // tubelet_size, img_size // patch_size
        self.num_patches = self.grid_t * self.grid_size ** 2

        self.patch_embed = TubeletEmbed(in_chans, embed_dim, tubelet_size, patch_size)
        self.embed_dim, self.depth, self.grad_checkpointing = embed_dim, depth, False
        self.blocks = rope_block_stack(embed_dim, depth, num_heads, mlp_dim, drop_path)
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.apply(init_weights)
        if depth_scaled_init:
            scale_residual_projections(self.blocks)

    def grid_of(self, x: Tensor) -> List[int]:
        """The token grid ``[T', H', W']`` of clips ``x`` (B, C, T, H, W)."""
        return [x.shape[2] // self.tubelet_size, x.shape[3] // self.patch_size, x.shape[4] // self.patch_size]

    def embed_tokens(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) -> (B, N, D) tubelet embeddings (positions enter in the attention)."""
        clip_grid("VideoRoPEEncoder", x, self.tubelet_size, self.patch_size)
        return self.patch_embed(x)

    def rope(self, x: Tensor, keep_idx_BK: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """The rotation tables of every token of ``x``'s grid, or of the kept ones: (1 or B, 1, N or K, R)."""
        grid = self.grid_of(x)
        index = keep_idx_BK if keep_idx_BK is not None else torch.arange(grid[0] * grid[1] * grid[2], device=x.device)
        return grid_rope(index, grid, self.head_dim)

    @torch.jit.unused
    def _rope_blocks_checkpointed(self, x: Tensor, cos: Tensor, sin: Tensor, attn_mask: Optional[Tensor]) -> Tensor:
        return checkpoint_rope_blocks(self.blocks, x, cos, sin, attn_mask)

    def run_rope_blocks(self, x: Tensor, cos: Tensor, sin: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        """The block stack on (B, L, D) tokens with their rotation tables, before the final norm."""
        if self.grad_checkpointing and self.training:
            return self._rope_blocks_checkpointed(x, cos, sin, attn_mask)
        for blk in self.blocks:
            x = blk(x, cos, sin, attn_mask)
        return x

    def forward(self, x: Tensor, keep_idx_BK: Optional[Tensor] = None, keep_valid_BK: Optional[Tensor] = None) -> Tensor:
        """As :meth:`TransformerEncoder.forward`: (B, C, T, H, W) -> (B, K or N, D) final-normed tokens."""
        tokens = self.embed(x)
        cos, sin = self.rope(x, keep_idx_BK)
        if keep_idx_BK is not None:
            tokens = gather_tokens(tokens, keep_idx_BK)
        attn_mask = None if keep_valid_BK is None else key_padding_mask(keep_valid_BK)
        return self.norm(self.run_rope_blocks(tokens, cos, sin, attn_mask))

    @torch.jit.export
    def forward_layers(self, x: Tensor, num_last: int = 1) -> List[Tensor]:
        """As :meth:`TransformerEncoder.forward_layers`."""
        if num_last < 1 or num_last > self.depth:
            raise ConfigError("forward_layers: num_last=" + str(num_last) + " must be in 1.."
                              + str(self.depth) + " (the encoder depth)")
        tokens = self.embed(x)
        cos, sin = self.rope(x, None)
        outputs: List[Tensor] = []
        first = self.depth - num_last
        for i, blk in enumerate(self.blocks):
            tokens = blk(tokens, cos, sin, None)
            if i >= first:
                outputs.append(self.norm(tokens))
        return outputs


class VideoRoPEPredictor(TransformerPredictor):
    """The V-JEPA 2 predictor: as :class:`VideoViTPredictor`, with 3-D rotary positions instead of a table.

    Context tokens and mask-token queries carry the coordinates of their raster positions on the training
    grid (``grid_t x grid_size x grid_size``), as in the authors' predictor. The authors sort the joint
    sequence by position before the blocks and unsort after; attention without a mask is
    permutation-equivariant once positions travel with their tokens, so this predictor skips the sort (the
    results differ only by float summation order).

    Args: as :class:`VideoViTPredictor`, without ``uniform_power``.
    """

    grid_t: int
    grid_size: int
    num_patches: int
    num_heads: int
    head_dim: int
    num_mask_tokens: int
    shared_mask_token: bool

    def __init__(self, grid_t: int, grid_size: int, embed_dim: int, predictor_dim: int = 384, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, num_mask_tokens: int = 2,
                 zero_init_mask_tokens: bool = True, shared_mask_token: bool = False, depth_scaled_init: bool = False):
        super().__init__()
        _check_predictor_size("VideoRoPEPredictor", grid_t, grid_size, depth, num_mask_tokens)
        _check_rope_width("VideoRoPEPredictor", predictor_dim, num_heads)
        self.grid_t, self.grid_size = grid_t, grid_size
        self.num_patches = grid_t * grid_size ** 2
        self.num_heads, self.head_dim = num_heads, predictor_dim // num_heads
        self.num_mask_tokens, self.shared_mask_token = num_mask_tokens, shared_mask_token

        # The authors' registration order: predictor_embed, mask_tokens, blocks, norm, proj.
        self.embed_dim, self.predictor_dim, self.depth, self.grad_checkpointing = embed_dim, predictor_dim, depth, False
        self.predictor_embed = nn.Linear(embed_dim, predictor_dim)
        self.mask_tokens = nn.Parameter(torch.zeros(num_mask_tokens, 1, predictor_dim))
        self.predictor_blocks = rope_block_stack(predictor_dim, depth, num_heads, int(predictor_dim * mlp_ratio))
        self.predictor_norm = nn.LayerNorm(predictor_dim, eps=LAYER_NORM_EPS)
        self.predictor_proj = nn.Linear(predictor_dim, embed_dim)
        init_predictor(self, zero_init_mask_tokens, depth_scaled_init)

    def mask_token_for(self, mask_index: int) -> Tensor:
        """The (1, P) mask token of generator ``mask_index`` (token 0 for every generator when shared)."""
        return select_mask_token("VideoRoPEPredictor", self.mask_tokens, mask_index, self.shared_mask_token)

    @torch.jit.unused
    def _rope_blocks_checkpointed(self, x: Tensor, cos: Tensor, sin: Tensor, attn_mask: Optional[Tensor]) -> Tensor:
        return checkpoint_rope_blocks(self.predictor_blocks, x, cos, sin, attn_mask)

    def forward(self, context_BKD: Tensor, context_idx_BK: Tensor, target_idx_BT: Tensor,
                mask_index: int = 0, context_valid_BK: Optional[Tensor] = None) -> Tensor:
        """As :meth:`TransformerPredictor.forward`: (B, K, D) context at (B, K) positions -> (B, T, D) predictions."""
        b, k = context_idx_BK.shape
        queries = self.mask_token_for(mask_index).expand(b, target_idx_BT.shape[1], -1)
        x = torch.cat([self.predictor_embed(context_BKD), queries], dim=1)
        positions = torch.cat([context_idx_BK, target_idx_BT], dim=1)
        cos, sin = grid_rope(positions, [self.grid_t, self.grid_size, self.grid_size], self.head_dim)
        attn_mask: Optional[Tensor] = None
        if context_valid_BK is not None:  # the queries are always valid
            attn_mask = key_padding_mask(torch.cat([context_valid_BK, context_valid_BK.new_ones(target_idx_BT.shape)], 1))
        if self.grad_checkpointing and self.training:
            x = self._rope_blocks_checkpointed(x, cos, sin, attn_mask)
        else:
            for blk in self.predictor_blocks:
                x = blk(x, cos, sin, attn_mask)
        return self.predictor_proj(self.predictor_norm(x[:, k:]))
