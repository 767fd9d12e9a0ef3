"""The transformer encoder and predictor bases that modality models subclass.

:class:`TransformerEncoder` (an :class:`~jepa.interfaces.Encoder`) owns the block stack, the final
norm, the keep-index gather of context tokens, padded contexts, activation checkpointing,
``forward`` and ``forward_layers``; a subclass only turns its input into position-embedded tokens.
:class:`TransformerPredictor` (a :class:`~jepa.interfaces.Predictor`) owns the narrow I-JEPA / V-JEPA
predictor: embed the context, append one mask-token query per target position, run its blocks,
project the queries back; a subclass gives the position table and its mask token(s). The ViTs of
the built-in image and video modalities and the transformer of the example plugin in ``examples/``
are such subclasses. No class token.

Parameter names are those of the released I-JEPA / V-JEPA checkpoints (``blocks.i.*``, ``norm``;
``predictor_embed``, ``predictor_blocks.i.*``, ``predictor_norm``, ``predictor_proj``): they are
checkpoint keys, so they are public API.

Padded contexts (``MaskSet.context_valid_BK``): the encoder takes ``keep_valid_BK`` and the
predictor ``context_valid_BK``; the blocks then run with a boolean key mask
(:func:`jepa.nn.blocks.key_padding_mask`) so no token attends to a padding entry, and every real
token's output equals that of its row run alone without padding. Without padding the blocks run
with no mask, on the fused kernel.

Export constraints (stated once, for every subclass):

* **TorchScript** (``jepa export`` scripts the encoder with ``torch.jit.script``): ``forward``,
  ``forward_layers`` and everything they call are compiled, so a subclass's ``embed_tokens`` and
  ``mask_token_for`` must be scriptable: the module defining the subclass must not use
  ``from __future__ import annotations``, and every attribute these methods read is declared at class
  level with a real type (``patch_size: int``; inherited string annotations do not script); build
  error messages by string concatenation (``"... " + str(n)``), and call only scriptable functions
  (the tables of :mod:`jepa.nn.pos_embed` are). Construction code (``__init__``, ``build_blocks``,
  ``build_layers``) is not compiled. Activation checkpointing is eager only: it sits behind a
  ``@torch.jit.unused`` method, and a scripted copy raises if run in training mode with it enabled.
* **torch.export**: shape-dependent Python branches (such as "the stored table at the training
  grid, else a table computed for the input's grid") are specialised to the example input's shape;
  a dynamic-shape export wraps the encoder and computes the table for every input, as the image
  modality's ``torch.export`` program does with ``patch_embed``, ``blocks`` and ``norm``.
"""

# No ``from __future__ import annotations`` here: TorchScript needs the class-level attribute
# annotations below as real types, not strings.
from typing import List, Optional

import torch
from torch import Tensor, nn

from jepa.errors import ConfigError
from jepa.interfaces import Encoder, Predictor
from jepa.model import gather_tokens
from jepa.nn.blocks import LAYER_NORM_EPS, checkpoint_blocks, key_padding_mask, transformer_block


class TransformerEncoder(Encoder):
    """Blocks and final norm over the embedded tokens of an input: the context and target encoder.

    Subclassing API. A subclass's ``__init__`` calls ``super().__init__()``, registers its input
    embedding and position table (in the order of the checkpoint layout it must match), calls
    :meth:`build_blocks` (parameters are created, and so the initialisation RNG drawn, in
    registration order), then initialises (``self.apply(jepa.nn.init.init_weights)``). It provides:

    * ``embed_tokens(x) -> Tensor``: the modality's input ``x`` (batch first) -> (B, N, D)
      tokens with their positions added, N in the raster order that mask indices refer to. It
      raises ``ValueError`` for an input it cannot tile. It may return a non-contiguous view:
      :meth:`embed` makes it contiguous once.

    Attributes the base reads (set by :meth:`build_blocks`): ``embed_dim`` (D), ``depth``,
    ``grad_checkpointing``, and the modules ``blocks`` and ``norm``. Everything else (patch sizes,
    grids, ``num_patches``, ...) is the subclass's own, for its own ``embed_tokens`` and for the
    modality's export and checkpoint code.

    Public methods for callers: ``forward``, ``forward_layers``, ``set_grad_checkpointing``,
    :meth:`embed` and :meth:`run_blocks` (the two halves of ``forward`` without the gather).
    """

    embed_dim: int
    depth: int
    grad_checkpointing: bool

    def build_blocks(self, embed_dim: int, depth: int, num_heads: int, mlp_dim: int, drop_path: float) -> None:
        """Register ``blocks`` (drop-path rising linearly from 0 to ``drop_path``) and the final ``norm``,
        and set ``embed_dim``, ``depth`` and ``grad_checkpointing`` (off).

        Args:
            embed_dim: D, the token width.
            depth: number of blocks.
            num_heads: attention heads (must divide ``embed_dim``).
            mlp_dim: hidden width of each block's MLP.
            drop_path: stochastic-depth rate of the last block; block ``i`` uses ``drop_path * i / (depth - 1)``.
        """
        self.embed_dim, self.depth, self.grad_checkpointing = embed_dim, depth, False
        rates = torch.linspace(0, drop_path, depth, device="cpu").tolist() if depth > 1 else [drop_path]
        self.blocks = nn.ModuleList([transformer_block(embed_dim, num_heads, mlp_dim, r) for r in rates])
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (non-reentrant) while training.

        Eager only: a TorchScript copy raises if run in training mode with it enabled.
        """
        self.grad_checkpointing = enable

    def embed_tokens(self, x: Tensor) -> Tensor:
        """Subclass hook: input -> (B, N, D) position-embedded tokens in raster order (see the class docstring)."""
        raise NotImplementedError("TransformerEncoder subclasses embed their input in embed_tokens")

    def embed(self, x: Tensor) -> Tensor:
        """:meth:`embed_tokens` in row-major layout, (B, N, D).

        A convolutional patch embedding gives (B, N, D) as a transposed view of (B, D, N);
        elementwise ops keep that layout, so every residual add would carry it and every LayerNorm
        and Linear would copy its input (measured: ~4 % of a ViT-Ti/4 training step, all in the
        full-input target encoder). One copy here instead.
        """
        return self.embed_tokens(x).contiguous()

    @torch.jit.unused
    def _blocks_checkpointed(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        return checkpoint_blocks(self.blocks, x, attn_mask)

    def run_blocks(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        """The block stack on (B, L, D) tokens (checkpointed when enabled and training), before the final norm.

        Args:
            x: (B, L, D) tokens.
            attn_mask: (B, 1, 1, L) bool from :func:`~jepa.nn.blocks.key_padding_mask`, or None.
        """
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
            x: the modality's input (images (B, C, H, W), clips (B, C, T, H, W), sequences
                (B, C, L), ...), which the subclass's ``embed_tokens`` tiles.
            keep_idx_BK: (B, K) int64 raster indices of the tokens to keep; None keeps all.
            keep_valid_BK: (B, K) bool, False where ``keep_idx_BK`` is padding (no token attends
                to those; their outputs are meaningless); None: no padding.

        Returns:
            (B, K, D) or (B, N, D) final-normed tokens, N the tokens of ``x``'s grid.
        """
        tokens = self.embed(x)
        if keep_idx_BK is not None:
            tokens = gather_tokens(tokens, keep_idx_BK)
        attn_mask = None if keep_valid_BK is None else key_padding_mask(keep_valid_BK)
        return self.norm(self.run_blocks(tokens, attn_mask))

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
            raise ConfigError("forward_layers: num_last=" + str(num_last) + " must be in 1.."
                             + str(self.depth) + " (the encoder depth)")
        tokens = self.embed(x)
        outputs: List[Tensor] = []
        first = self.depth - num_last
        for i, blk in enumerate(self.blocks):
            tokens = blk(tokens)
            if i >= first:
                outputs.append(self.norm(tokens))
        return outputs


class TransformerPredictor(Predictor):
    """The narrow JEPA predictor: context tokens + one mask-token query per target position -> targets.

    Subclassing API. A subclass's ``__init__`` calls ``super().__init__()``, registers its mask
    token(s) (a parameter of any name) and the position table ``predictor_pos_embed``, calls
    :meth:`build_layers`, then initialises (``self.apply(jepa.nn.init.init_weights)`` and its own
    mask-token init). It provides:

    * ``predictor_pos_embed``: a (1, N, P) tensor attribute (a buffer for a fixed table, or a
      parameter), row ``n`` the position of raster token ``n``; ``context_idx_BK`` and
      ``target_idx_BT`` index its rows;
    * ``mask_token_for(mask_index) -> Tensor``: the learned query of the masks of mask generator
      ``mask_index`` (an int, the position of the (context, target) pair in the sampler's output),
      (1, 1, P) or (1, P), broadcast to (B, T, P); it raises ``ValueError`` for an index it has no
      token for (a predictor with one token may ignore the index).

    Attributes the base reads (set by :meth:`build_layers`): ``grad_checkpointing`` and the modules
    ``predictor_embed``, ``predictor_blocks``, ``predictor_norm``, ``predictor_proj``; it also sets
    ``embed_dim`` (D), ``predictor_dim`` (P) and ``depth`` for callers.
    """

    embed_dim: int
    predictor_dim: int
    depth: int
    grad_checkpointing: bool

    def build_layers(self, embed_dim: int, predictor_dim: int, depth: int, num_heads: int, mlp_ratio: float) -> None:
        """Register ``predictor_embed`` (D -> P), ``predictor_blocks``, ``predictor_norm`` and
        ``predictor_proj`` (P -> D), and set ``embed_dim``, ``predictor_dim``, ``depth`` and
        ``grad_checkpointing`` (off).

        Args:
            embed_dim: D, the encoder width (input and output width).
            predictor_dim: P, the predictor's own width.
            depth: number of blocks.
            num_heads: attention heads (must divide P).
            mlp_ratio: MLP hidden width as a multiple of P (truncated to an int).
        """
        self.embed_dim, self.predictor_dim, self.depth, self.grad_checkpointing = embed_dim, predictor_dim, depth, False
        self.predictor_embed = nn.Linear(embed_dim, predictor_dim)
        mlp_dim = int(predictor_dim * mlp_ratio)
        self.predictor_blocks = nn.ModuleList([transformer_block(predictor_dim, num_heads, mlp_dim, 0.0)
                                               for _ in range(depth)])
        self.predictor_norm = nn.LayerNorm(predictor_dim, eps=LAYER_NORM_EPS)
        self.predictor_proj = nn.Linear(predictor_dim, embed_dim)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """As :meth:`TransformerEncoder.set_grad_checkpointing`, for the predictor blocks."""
        self.grad_checkpointing = enable

    @torch.jit.unused
    def _blocks_checkpointed(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        return checkpoint_blocks(self.predictor_blocks, x, attn_mask)

    def mask_token_for(self, mask_index: int) -> Tensor:
        """Subclass hook: the (1, 1, P) or (1, P) learned query for masks of generator ``mask_index``."""
        raise NotImplementedError("TransformerPredictor subclasses give their mask token in mask_token_for")

    def forward(self, context_BKD: Tensor, context_idx_BK: Tensor, target_idx_BT: Tensor,
                mask_index: int = 0, context_valid_BK: Optional[Tensor] = None) -> Tensor:
        """Predict the target tokens of one target set per row.

        Args:
            context_BKD: (B, K, D) context-encoder outputs.
            context_idx_BK: (B, K) int64 raster positions of the context tokens.
            target_idx_BT: (B, T) int64 raster positions to predict.
            mask_index: which mask generator produced the masks; selects its mask token.
            context_valid_BK: (B, K) bool, False on padding context entries (never attended
                to); None: no padding.

        Returns:
            (B, T, D) predictions, in the order of ``target_idx_BT``.
        """
        mask_token = self.mask_token_for(mask_index)
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
