"""The V-JEPA Vision Transformer: tubelet patch embedding, context/target encoder, predictor
(docs/method/vjepa.md, "Tubelets").

Both models subclass the core's transformer bases (:mod:`jepa.nn.transformer`): timm's pre-norm
``Block`` with fused scaled-dot-product attention, the final norm, the keep-index gather and the
predictor's forward come from there, as for the image ViT. What is video-specific lives here: clips
``(B, C, T, H, W)`` are cut into tubelets of ``tubelet_size`` frames x ``patch_size`` x ``patch_size``
pixels, giving a token grid ``T' x H' x W'`` in raster order (time slowest), with fixed 3-D sin-cos
positions (:func:`jepa.nn.pos_embed.sincos_3d`), and one mask token per mask generator.

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
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jepa.nn.geometry import check_heads, check_patch_tiles, check_sincos_width, check_stack
from jepa.nn.init import init_weights
from jepa.nn.pos_embed import sincos_3d
from jepa.nn.transformer import TransformerEncoder, TransformerPredictor


def _check_width(where: str, dim: int, num_heads: int, uniform_power: bool) -> None:
    check_heads(where, dim, num_heads)
    check_sincos_width(where, dim, num_axes=3, uniform_power=uniform_power)


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
                 uniform_power: bool = True):
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

    def embed_tokens(self, x: Tensor) -> Tensor:
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
    """

    grid_t: int
    grid_size: int
    num_patches: int
    num_heads: int
    num_mask_tokens: int

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
        self.num_heads = num_heads
        self.num_mask_tokens = num_mask_tokens

        self.mask_tokens = nn.Parameter(torch.zeros(num_mask_tokens, 1, predictor_dim))
        table = sincos_3d(predictor_dim, grid_t, grid_size, grid_size, uniform_power)
        self.register_buffer("predictor_pos_embed", table.unsqueeze(0))
        self.build_layers(embed_dim, predictor_dim, depth, num_heads, mlp_ratio)
        self.apply(init_weights)  # mask tokens stay zero

    def mask_token_for(self, mask_index: int) -> Tensor:
        """The (1, P) mask token of generator ``mask_index``."""
        if mask_index < 0 or mask_index >= self.num_mask_tokens:
            raise ValueError("VideoViTPredictor: mask_index=" + str(mask_index) + " must be in 0.."
                             + str(self.num_mask_tokens - 1) + " (one mask token per mask generator)")
        return self.mask_tokens[mask_index]
