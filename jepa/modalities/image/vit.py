"""The I-JEPA Vision Transformer: context/target encoder and the narrow predictor.

Both subclass the core's transformer bases (:mod:`jepa.nn.transformer`), which own the blocks
(timm's pre-norm ``Block`` with fused scaled-dot-product attention), the final norm, the
keep-index gather of context tokens, padded contexts and the predictor's forward. What is
image-specific lives here: timm's ``PatchEmbed`` over square patches, the fixed 2-D sin-cos
positions (:func:`jepa.nn.pos_embed.sincos_2d`), I-JEPA's one mask token. No class token.

Parameter and buffer names equal the layout of the authors' released checkpoints, so a
released state dict loads with ``load_state_dict(strict=True)`` once the ``module.`` prefix
is removed (see :mod:`jepa.modalities.image.released`).

Initialisation (docs/method/ijepa.md, "Initialisation"; :mod:`jepa.nn.init`): every Linear weight
truncated normal std 0.02 (bounds +-2 in absolute value, i.e. effectively untruncated), biases
zero, LayerNorm weight 1 / bias 0, mask token truncated normal std 0.02, no depth-dependent rescale. Decision for the patch
embedding: its convolution is a Linear over flattened ``C*p*p`` patches, so it gets the same
init as the other Linears (trunc-normal std 0.02 weight, zero bias), which is also how we read
the authors' code to treat ``Conv2d``.
"""

# No ``from __future__ import annotations`` here: TorchScript needs the class-level attribute
# annotations below as real types, not strings.
import torch
from timm.layers import PatchEmbed
from torch import Tensor, nn

from jepa.errors import ConfigError
from jepa.nn.blocks import LAYER_NORM_EPS
from jepa.nn.geometry import check_heads, check_patch_tiles, check_sincos_width, check_stack
from jepa.nn.init import INIT_STD, init_weights
from jepa.nn.pos_embed import sincos_2d
from jepa.nn.transformer import TransformerEncoder, TransformerPredictor

__all__ = ["LAYER_NORM_EPS", "ViTEncoder", "ViTPredictor"]  # LAYER_NORM_EPS: for the Hugging Face export


class ViTEncoder(TransformerEncoder):
    """ViT without class token: the context encoder (with ``keep_idx_BK``) and the target encoder.

    The stored ``pos_embed`` buffer (1, N, D) is the sin-cos table of the training grid; any
    other input size divisible by the patch gets the table of its own grid, computed on the fly.

    Args:
        img_size: side of the square training image in pixels (a multiple of ``patch_size``).
        patch_size: side of a square patch in pixels.
        in_chans: input channels C.
        embed_dim: token width D.
        depth: number of transformer blocks.
        num_heads: attention heads (must divide ``embed_dim``).
        mlp_dim: hidden width of each block's MLP.
        drop_path: stochastic-depth rate of the last block; block ``i`` uses
            ``drop_path * i / (depth - 1)`` (0 in I-JEPA).

    Attributes:
        embed_dim, patch_size, img_size, in_chans, depth, num_heads: as given.
        grid_size: patches per side at ``img_size``.
        num_patches: N = grid_size ** 2.
    """

    patch_size: int
    img_size: int
    in_chans: int
    num_heads: int
    grid_size: int
    num_patches: int

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, depth: int,
                 num_heads: int, mlp_dim: int, drop_path: float = 0.0):
        super().__init__()
        check_patch_tiles("ViTEncoder", "img_size", img_size, "patch_size", patch_size)
        check_stack("ViTEncoder", depth, drop_path)
        check_heads("ViTEncoder", embed_dim, num_heads)
        check_sincos_width("ViTEncoder", embed_dim, num_axes=2)
        self.patch_size = patch_size
        self.img_size = img_size
        self.in_chans = in_chans
        self.num_heads = num_heads
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size ** 2

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, strict_img_size=False)
        self.register_buffer("pos_embed", sincos_2d(embed_dim, self.grid_size, self.grid_size).unsqueeze(0))
        self.build_blocks(embed_dim, depth, num_heads, mlp_dim, drop_path)
        self.apply(init_weights)

    def embed_tokens(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, N, D) patch embeddings plus positions of the actual grid."""
        h, w = x.shape[-2], x.shape[-1]
        p = self.patch_size
        if h % p != 0 or w % p != 0:
            raise ConfigError("ViTEncoder: input size " + str(h) + "x" + str(w) + " is not divisible by the patch size "
                             + str(p) + "; resize or crop to a multiple of " + str(p))
        tokens = self.patch_embed(x)
        if h // p == self.grid_size and w // p == self.grid_size:
            pos = self.pos_embed
        else:
            pos = sincos_2d(self.embed_dim, h // p, w // p, device=tokens.device).to(self.pos_embed.dtype).unsqueeze(0)
        # No cast to the tokens' dtype: under autocast the sum (and so the residual stream)
        # stays float32, as with the stored table.
        return tokens + pos


class ViTPredictor(TransformerPredictor):
    """The narrow I-JEPA predictor: context tokens + one mask token per target patch -> targets.

    Args:
        grid_size: patches per side of the training grid (positions are indices into it).
        embed_dim: D, the encoder width (input and output width).
        predictor_dim: P, the predictor's own width (384 in I-JEPA).
        depth: number of blocks (12 for ViT-H/14, 16 for ViT-g/16).
        num_heads: attention heads (I-JEPA: the encoder's head count); must divide P.
        mlp_ratio: MLP hidden width as a multiple of P.

    Attributes:
        grid_size, num_heads: as given; embed_dim, predictor_dim, depth: as given (set by ``build_layers``).
        num_patches: N = grid_size ** 2.
    """

    grid_size: int
    num_patches: int
    num_heads: int

    def __init__(self, grid_size: int, embed_dim: int, predictor_dim: int = 384, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0):
        super().__init__()
        if grid_size <= 0:
            raise ConfigError(f"ViTPredictor: grid_size must be positive, got {grid_size}")
        if depth <= 0:
            raise ConfigError(f"ViTPredictor: depth must be positive, got {depth}")
        check_heads("ViTPredictor", predictor_dim, num_heads)
        check_sincos_width("ViTPredictor", predictor_dim, num_axes=2)
        self.grid_size = grid_size
        self.num_patches = grid_size ** 2
        self.num_heads = num_heads

        self.mask_token = nn.Parameter(torch.zeros(1, 1, predictor_dim))
        self.register_buffer("predictor_pos_embed", sincos_2d(predictor_dim, grid_size, grid_size).unsqueeze(0))
        self.build_layers(embed_dim, predictor_dim, depth, num_heads, mlp_ratio)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.mask_token, std=INIT_STD)

    def mask_token_for(self, mask_index: int) -> Tensor:
        """The one mask token (I-JEPA has one (context, target) pair): ``mask_index`` is unused."""
        return self.mask_token
