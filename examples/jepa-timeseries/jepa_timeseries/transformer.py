"""The time-series transformer: context/target encoder and the narrow predictor.

Both subclass the core's transformer bases (:class:`jepa.nn.transformer.TransformerEncoder` and
:class:`~jepa.nn.transformer.TransformerPredictor`, which the image and video ViTs subclass too):
the blocks (timm's pre-norm ``Block``, fused scaled-dot-product attention), the final norm,
keep-index gathering of context tokens, gradient checkpointing, ``forward``, ``forward_layers`` and
the predictor's forward all come from there. What is time-series-specific lives here: a 1-D patch
embedding along time (a strided ``Conv1d``: each token is ``patch_size`` consecutive steps of every
channel, the base's ``embed_tokens`` hook), fixed 1-D sin-cos positions
(:func:`jepa.nn.pos_embed.sincos_1d`), and the predictor's one mask token (its ``mask_token_for``
hook). No class token.

Initialisation is the core's I-JEPA one (:func:`jepa.nn.init.init_weights`): Linear and ``Conv1d``
weights truncated normal with std 0.02, biases zero, LayerNorm weight 1 / bias 0; mask token
truncated normal std 0.02.

Both modules are TorchScript-scriptable (``torch.jit.script``), which ``jepa export`` relies on
(the constraints: :mod:`jepa.nn.transformer`).
"""

# No ``from __future__ import annotations`` here: TorchScript needs the class-level attribute
# annotations below as real types, not strings.
import torch
from torch import Tensor, nn

from jepa.nn.geometry import check_heads, check_patch_tiles, check_sincos_width
from jepa.nn.init import INIT_STD, init_weights
from jepa.nn.pos_embed import sincos_1d
from jepa.nn.transformer import TransformerEncoder, TransformerPredictor


def _check_width(where: str, dim: int, num_heads: int) -> None:
    """Heads divide the width, and the width splits into the sin and cos halves of the positions."""
    check_heads(where, dim, num_heads)
    check_sincos_width(where, dim, num_axes=1)


class TimeSeriesEncoder(TransformerEncoder):
    """Transformer over time tokens: the context encoder (with ``keep_idx_BK``) and the target encoder.

    ``forward(x, keep_idx_BK=None)`` takes sequences ``x`` (B, C, L), L a multiple of the patch,
    and returns (B, K, D) or (B, N, D) final-normed tokens, N = L / P; ``forward_layers(x,
    num_last)`` returns ``num_last`` tensors (B, N, D). Both are the core base's; this class only
    embeds the input (:meth:`embed_tokens`).

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

    patch_size: int
    seq_len: int
    in_chans: int
    num_heads: int
    num_patches: int

    def __init__(self, seq_len: int, patch_size: int, in_chans: int, embed_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        check_patch_tiles("TimeSeriesEncoder", "seq_len", seq_len, "patch_size", patch_size)
        _check_width("TimeSeriesEncoder", embed_dim, num_heads)
        self.patch_size, self.seq_len, self.in_chans, self.num_heads = patch_size, seq_len, in_chans, num_heads
        self.num_patches = seq_len // patch_size

        self.patch_embed = nn.Conv1d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.register_buffer("pos_embed", sincos_1d(embed_dim, self.num_patches).unsqueeze(0))
        self.build_blocks(embed_dim, depth, num_heads, int(embed_dim * mlp_ratio), drop_path)
        self.apply(init_weights)  # the patch Conv1d, the first module, is drawn first

    def embed_tokens(self, x: Tensor) -> Tensor:
        """(B, C, L) -> (B, N, D) patch embeddings plus the positions of N = L / P tokens."""
        length = x.shape[-1]
        p = self.patch_size
        if length % p != 0 or length < p:
            raise ValueError("TimeSeriesEncoder: sequence length " + str(length) + " is not a positive multiple of the "
                             "patch size " + str(p) + "; crop to a multiple of " + str(p))
        tokens = self.patch_embed(x).transpose(1, 2)  # a transposed view; the base's embed makes it contiguous
        n = length // p
        if n == self.num_patches:
            pos = self.pos_embed
        else:
            pos = sincos_1d(self.embed_dim, n, device=tokens.device).to(self.pos_embed.dtype).unsqueeze(0)
        return tokens + pos


def any_length_tokens(encoder: TimeSeriesEncoder, x: Tensor) -> Tensor:
    """``encoder(x)`` for (B, C, L) sequences with the positions always computed for L / P tokens: what a
    ``torch-export`` program with a dynamic length captures (the encoder's forward branches on the length)."""
    tokens = encoder.patch_embed(x).transpose(1, 2)
    n = x.shape[-1] // encoder.patch_size
    pos = sincos_1d(encoder.embed_dim, n, device=tokens.device).to(encoder.pos_embed.dtype).unsqueeze(0)
    return encoder.norm(encoder.run_blocks((tokens + pos).contiguous()))


class TimeSeriesPredictor(TransformerPredictor):
    """Narrow predictor: context tokens + one mask token per target position -> target representations.

    ``forward(context_BKD, context_idx_BK, target_idx_BT, mask_index=0)`` is the core base's:
    (B, K, D) context tokens at (B, K) token positions -> (B, T, D) predictions for the (B, T)
    target positions. One mask pair, so ``mask_index`` is unused.

    Args:
        num_tokens: N, tokens of a training sequence (positions are indices into them).
        embed_dim: D, the encoder width (input and output width).
        predictor_dim: the predictor's own width.
        depth: predictor blocks.
        num_heads: attention heads (must divide ``predictor_dim``).
        mlp_ratio: MLP hidden width as a multiple of ``predictor_dim``.
    """

    num_tokens: int
    num_heads: int

    def __init__(self, num_tokens: int, embed_dim: int, predictor_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0):
        super().__init__()
        _check_width("TimeSeriesPredictor", predictor_dim, num_heads)
        self.num_tokens, self.num_heads = num_tokens, num_heads

        self.mask_token = nn.Parameter(torch.zeros(1, 1, predictor_dim))
        self.register_buffer("predictor_pos_embed", sincos_1d(predictor_dim, num_tokens).unsqueeze(0))
        self.build_layers(embed_dim, predictor_dim, depth, num_heads, mlp_ratio)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.mask_token, std=INIT_STD)

    def mask_token_for(self, mask_index: int) -> Tensor:
        """The one (1, 1, P) mask token: ``mask_index`` is unused."""
        return self.mask_token
