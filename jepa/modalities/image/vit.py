"""The I-JEPA Vision Transformer: context/target encoder and the narrow predictor.

Both are assembled from timm layers (``PatchEmbed``, the pre-norm ``Block`` with fused
scaled-dot-product attention, ``Mlp``); only the JEPA-specific parts live here: no class
token, fixed sin-cos positions, keep-index gathering of context tokens, mask tokens.

Padded contexts (``MaskSet.context_valid_BK``, the ``fixed`` mask mode): the encoder takes
``keep_valid_BK`` and the predictor ``context_valid_BK``; the blocks then run with a boolean key
mask (:func:`key_padding_mask`) that no token attends through to a padding token, so every real
token's output equals that of its row run alone without padding. Without padding the blocks run
exactly as before, with no mask, on the fused kernel.

Parameter and buffer names equal the layout of the authors' released checkpoints, so a
released state dict loads with ``load_state_dict(strict=True)`` once the ``module.`` prefix
is removed (see :mod:`jepa.modalities.image.released`).

Initialisation (spec, "Init"): every Linear weight truncated normal std 0.02 (bounds +-2 in
absolute value, i.e. effectively untruncated), biases zero, LayerNorm weight 1 / bias 0,
mask token truncated normal std 0.02, no depth-dependent rescale. Decision for the patch
embedding: its convolution is a Linear over flattened ``C*p*p`` patches, so it gets the same
init as the other Linears (trunc-normal std 0.02 weight, zero bias), which is also how we read
the authors' code to treat ``Conv2d``.
"""

# No ``from __future__ import annotations`` here: TorchScript needs the class-level attribute
# annotations below as real types, not strings.
from functools import partial
from typing import List, Optional

import torch
from timm.layers import Mlp, PatchEmbed
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from jepa.interfaces import Encoder, Predictor
from jepa.model import gather_tokens
from jepa.modalities.image.pos_embed import sincos_2d

INIT_STD = 0.02
LAYER_NORM_EPS = 1e-6


def _mlp_of_width(*, width: int, hidden_features: int, **kwargs) -> Mlp:
    # timm's Block derives the hidden width as int(dim * mlp_ratio), which float rounding can
    # make one short for widths that are not a multiple of dim (ViT-g: 6144 / 1408); pin it.
    del hidden_features
    return Mlp(hidden_features=width, **kwargs)


def _block(dim: int, num_heads: int, mlp_dim: int, drop_path: float) -> Block:
    """One pre-norm transformer block: LN -> attention (fused qkv with bias) -> LN -> GELU MLP."""
    return Block(
        dim, num_heads, mlp_ratio=mlp_dim / dim, qkv_bias=True, drop_path=drop_path,
        norm_layer=partial(nn.LayerNorm, eps=LAYER_NORM_EPS), act_layer=nn.GELU,
        mlp_layer=partial(_mlp_of_width, width=mlp_dim),
    )


def init_weights(module: nn.Module) -> None:
    """The I-JEPA initialisation for one module (use with ``nn.Module.apply``)."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.trunc_normal_(module.weight, std=INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def checkpoint_blocks(blocks: nn.ModuleList, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
    """Run ``blocks`` in order, each recomputed in the backward pass (non-reentrant checkpoint)."""
    for blk in blocks:
        x = checkpoint(blk, x, use_reentrant=False) if attn_mask is None else \
            checkpoint(blk, x, attn_mask, use_reentrant=False)
    return x


def key_padding_mask(valid_BK: Tensor) -> Tensor:
    """(B, K) bool validity -> (B, 1, 1, K) boolean attention mask (True: may be attended to), which
    scaled-dot-product attention broadcasts over heads and queries."""
    return valid_BK[:, None, None, :]


def check_heads(where: str, dim: int, num_heads: int) -> None:
    """Raise unless ``num_heads`` divides the token width ``dim``."""
    if num_heads <= 0 or dim % num_heads:
        raise ValueError(f"{where}: num_heads={num_heads} must divide the width {dim}; pick a divisor of {dim}")


def _check_sincos_width(where: str, dim: int, num_heads: int) -> None:
    """Heads divide the width, and the width splits into the 2-D sin-cos table (a multiple of 4)."""
    check_heads(where, dim, num_heads)
    if dim % 4:
        raise ValueError(f"{where}: width {dim} must be a multiple of 4 for the 2-D sin-cos positions")


def check_encoder_args(where: str, img_size: int, patch_size: int, depth: int, drop_path: float) -> None:
    """Raise for a patch that does not tile the training size, an empty stack or a bad drop-path rate."""
    if patch_size <= 0 or img_size % patch_size or img_size < patch_size:
        raise ValueError(f"{where}: img_size={img_size} must be a positive multiple of patch_size={patch_size}")
    if depth <= 0:
        raise ValueError(f"{where}: depth must be positive, got {depth}")
    if not 0.0 <= drop_path < 1.0:
        raise ValueError(f"{where}: drop_path must be in [0, 1), got {drop_path}")


class TransformerEncoder(Encoder):
    """What the image and video ViT encoders share: blocks and final norm over embedded tokens.

    A subclass registers its patch embedding and ``pos_embed`` table, then calls
    :meth:`_build_blocks` (so parameters are created, and the RNG drawn, in the layout order),
    applies its initialisation, and implements ``_tokens``: input -> (B, N, D) tokens with
    positions, N in raster order.
    """

    embed_dim: int
    patch_size: int
    img_size: int
    in_chans: int
    depth: int
    num_heads: int
    grid_size: int
    num_patches: int
    grad_checkpointing: bool

    def _build_blocks(self, embed_dim: int, depth: int, num_heads: int, mlp_dim: int, drop_path: float) -> None:
        """Register ``blocks`` (drop-path rising linearly to ``drop_path``) and the final ``norm``."""
        rates = torch.linspace(0, drop_path, depth, device="cpu").tolist() if depth > 1 else [drop_path]
        self.blocks = nn.ModuleList([_block(embed_dim, num_heads, mlp_dim, r) for r in rates])
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (non-reentrant) while training.

        Eager only: a TorchScript copy raises if run in training mode with it enabled.
        """
        self.grad_checkpointing = enable

    def _tokens(self, x: Tensor) -> Tensor:
        raise NotImplementedError("TransformerEncoder subclasses embed their input in _tokens")

    def _embed(self, x: Tensor) -> Tensor:
        """``_tokens`` in row-major layout. A convolutional patch embedding gives (B, N, D) as a
        transposed view of (B, D, N); elementwise ops keep that layout, so every residual add would
        carry it and every LayerNorm and Linear would copy its input (measured: ~4 % of a ViT-Ti/4
        training step, all in the full-input target encoder). One copy here instead."""
        return self._tokens(x).contiguous()

    @torch.jit.unused
    def _blocks_checkpointed(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        return checkpoint_blocks(self.blocks, x, attn_mask)

    def _run_blocks(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        if self.grad_checkpointing and self.training:
            return self._blocks_checkpointed(x, attn_mask)
        if attn_mask is None:
            for blk in self.blocks:
                x = blk(x)
        else:
            for blk in self.blocks:
                x = blk(x, attn_mask=attn_mask)
        return x

    def forward(self, x: Tensor, keep_idx_BK: Optional[Tensor] = None, keep_valid_BK: Optional[Tensor] = None) -> Tensor:
        """Encode inputs, optionally only the kept (context) tokens.

        Args:
            x: the modality's input: images (B, C, H, W) or clips (B, C, T, H, W), sides
                multiples of the patch (and frames of the tubelet).
            keep_idx_BK: (B, K) int64 raster indices of the tokens to keep; None keeps all.
            keep_valid_BK: (B, K) bool, False where ``keep_idx_BK`` is padding (no token attends
                to those; their outputs are meaningless); None: no padding.

        Returns:
            (B, K, D) or (B, N, D) final-normed tokens, N the tokens of ``x``'s grid.
        """
        tokens = self._embed(x)
        if keep_idx_BK is not None:
            tokens = gather_tokens(tokens, keep_idx_BK)
        attn_mask = None if keep_valid_BK is None else key_padding_mask(keep_valid_BK)
        return self.norm(self._run_blocks(tokens, attn_mask))

    @torch.jit.export
    def forward_layers(self, x: Tensor, num_last: int = 1) -> List[Tensor]:
        """Outputs of the last ``num_last`` blocks on all tokens, each normed with the final norm.

        Args:
            x: the modality's input, as for ``forward``.
            num_last: how many of the last blocks to return (1 .. depth).

        Returns:
            ``num_last`` tensors (B, N, D), shallowest first; the last equals ``forward(x)``.
        """
        if num_last < 1 or num_last > self.depth:
            raise ValueError("forward_layers: num_last=" + str(num_last) + " must be in 1.."
                             + str(self.depth) + " (the encoder depth)")
        tokens = self._embed(x)
        outputs: List[Tensor] = []
        first = self.depth - num_last
        for i, blk in enumerate(self.blocks):
            tokens = blk(tokens)
            if i >= first:
                outputs.append(self.norm(tokens))
        return outputs


class TransformerPredictor(Predictor):
    """What the image and video predictors share: embed context, append mask-token queries, run
    the narrow blocks, project the queries back to the encoder width.

    A subclass registers its mask token(s) and ``predictor_pos_embed`` table (P wide, raster
    order), calls :meth:`_build_layers`, applies its initialisation, and implements
    ``_mask_token``: the learned query of a mask generator.
    """

    grid_size: int
    num_patches: int
    embed_dim: int
    predictor_dim: int
    depth: int
    num_heads: int
    grad_checkpointing: bool

    def _build_layers(self, embed_dim: int, predictor_dim: int, depth: int, num_heads: int,
                      mlp_ratio: float) -> None:
        """Register ``predictor_embed``, ``predictor_blocks``, ``predictor_norm``, ``predictor_proj``."""
        self.predictor_embed = nn.Linear(embed_dim, predictor_dim)
        mlp_dim = int(predictor_dim * mlp_ratio)
        self.predictor_blocks = nn.ModuleList([_block(predictor_dim, num_heads, mlp_dim, 0.0) for _ in range(depth)])
        self.predictor_norm = nn.LayerNorm(predictor_dim, eps=LAYER_NORM_EPS)
        self.predictor_proj = nn.Linear(predictor_dim, embed_dim)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """As :meth:`TransformerEncoder.set_grad_checkpointing`, for the predictor blocks."""
        self.grad_checkpointing = enable

    @torch.jit.unused
    def _blocks_checkpointed(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        return checkpoint_blocks(self.predictor_blocks, x, attn_mask)

    def _mask_token(self, mask_index: int) -> Tensor:
        """The (1, 1, P) or (1, P) learned query for masks of generator ``mask_index``."""
        raise NotImplementedError("TransformerPredictor subclasses give their mask token in _mask_token")

    def forward(self, context_BKD: Tensor, context_idx_BK: Tensor, target_idx_BT: Tensor,
                mask_index: int = 0, context_valid_BK: Optional[Tensor] = None) -> Tensor:
        """Predict the target tokens of one target set per row.

        Args:
            context_BKD: (B, K, D) context-encoder outputs.
            context_idx_BK: (B, K) int64 raster positions of the context tokens.
            target_idx_BT: (B, T) int64 raster positions to predict.
            mask_index: which mask generator produced the masks; selects its mask token
                (the image predictor has one and ignores it).
            context_valid_BK: (B, K) bool, False on padding context entries (never attended
                to); None: no padding.

        Returns:
            (B, T, D) predictions, in the order of ``target_idx_BT``.
        """
        mask_token = self._mask_token(mask_index)
        b, k = context_idx_BK.shape
        pos_BNP = self.predictor_pos_embed.expand(b, -1, -1)
        context = self.predictor_embed(context_BKD) + gather_tokens(pos_BNP, context_idx_BK)
        queries = mask_token + gather_tokens(pos_BNP, target_idx_BT)  # (B, T, P)
        x = torch.cat([context, queries], dim=1)
        attn_mask: Optional[Tensor] = None
        if context_valid_BK is not None:  # the queries are always valid
            attn_mask = key_padding_mask(torch.cat([context_valid_BK, context_valid_BK.new_ones(target_idx_BT.shape)], 1))
        if self.grad_checkpointing and self.training:
            x = self._blocks_checkpointed(x, attn_mask)
        elif attn_mask is None:
            for blk in self.predictor_blocks:
                x = blk(x)
        else:
            for blk in self.predictor_blocks:
                x = blk(x, attn_mask=attn_mask)
        # The norm is per token, so dropping the context outputs first changes nothing.
        return self.predictor_proj(self.predictor_norm(x[:, k:]))


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

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, depth: int,
                 num_heads: int, mlp_dim: int, drop_path: float = 0.0):
        super().__init__()
        check_encoder_args("ViTEncoder", img_size, patch_size, depth, drop_path)
        _check_sincos_width("ViTEncoder", embed_dim, num_heads)
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.img_size = img_size
        self.in_chans = in_chans
        self.depth = depth
        self.num_heads = num_heads
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size ** 2
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, strict_img_size=False)
        self.register_buffer("pos_embed", sincos_2d(embed_dim, self.grid_size, self.grid_size).unsqueeze(0))
        self._build_blocks(embed_dim, depth, num_heads, mlp_dim, drop_path)
        self.apply(init_weights)

    def _tokens(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, N, D) patch embeddings plus positions of the actual grid."""
        h, w = x.shape[-2], x.shape[-1]
        p = self.patch_size
        if h % p != 0 or w % p != 0:
            raise ValueError("ViTEncoder: input size " + str(h) + "x" + str(w) + " is not divisible by the patch size "
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
    """

    def __init__(self, grid_size: int, embed_dim: int, predictor_dim: int = 384, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0):
        super().__init__()
        if grid_size <= 0:
            raise ValueError(f"ViTPredictor: grid_size must be positive, got {grid_size}")
        if depth <= 0:
            raise ValueError(f"ViTPredictor: depth must be positive, got {depth}")
        _check_sincos_width("ViTPredictor", predictor_dim, num_heads)
        self.grid_size = grid_size
        self.num_patches = grid_size ** 2
        self.embed_dim = embed_dim
        self.predictor_dim = predictor_dim
        self.depth = depth
        self.num_heads = num_heads
        self.grad_checkpointing = False

        self.mask_token = nn.Parameter(torch.zeros(1, 1, predictor_dim))
        self.register_buffer("predictor_pos_embed", sincos_2d(predictor_dim, grid_size, grid_size).unsqueeze(0))
        self._build_layers(embed_dim, predictor_dim, depth, num_heads, mlp_ratio)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.mask_token, std=INIT_STD)

    def _mask_token(self, mask_index: int) -> Tensor:
        """The one mask token (I-JEPA has one (context, target) pair): ``mask_index`` is unused."""
        return self.mask_token
