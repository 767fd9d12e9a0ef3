"""Wiring of the JEPA parts into the online model and the target computation.

This is the only place that knows how context, targets and predictor fit together; it is
modality-agnostic and works on :class:`~jepa.interfaces.MaskSet` indices.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from jepa.interfaces import Encoder, MaskSet, Predictor
from jepa.loss import normalize_targets


def gather_tokens(tokens_BND: Tensor, idx_BK: Tensor) -> Tensor:
    """(B, N, D) tokens, (B, K) indices -> (B, K, D) selected tokens."""
    return torch.gather(tokens_BND, 1, idx_BK.unsqueeze(-1).expand(-1, -1, tokens_BND.shape[-1]))


class JEPA(nn.Module):
    """The trained (online) part: context encoder + predictor.

    ``forward`` handles one (context, target) pair: it encodes the context once and predicts every
    target block; with M blocks the context is repeated along the batch, so predictions are
    (B*M, T, D) in row order (b0m0, b0m1, ..., b1m0, ...), the same order as :func:`cut_targets`.
    A sampler with several pairs calls it once per pair with ``mask_index`` the pair's position.
    """

    def __init__(self, encoder: Encoder, predictor: Predictor):
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor

    def forward(self, x: Tensor, masks: MaskSet, mask_index: int = 0) -> Tensor:
        m = masks.num_targets
        valid = masks.context_valid_BK
        # Padded contexts only reach encoders and predictors that take the validity mask (the ViT
        # bases); unpadded ones call them exactly as before.
        context_BKD = self.encoder(x, masks.context_idx_BK) if valid is None else \
            self.encoder(x, masks.context_idx_BK, keep_valid_BK=valid)
        context = context_BKD.repeat_interleave(m, dim=0)
        context_idx = masks.context_idx_BK.repeat_interleave(m, dim=0)
        target_idx = masks.target_idx_BMT.flatten(0, 1)
        if valid is None:
            return self.predictor(context, context_idx, target_idx, mask_index=mask_index)
        return self.predictor(context, context_idx, target_idx, mask_index=mask_index,
                              context_valid_BK=valid.repeat_interleave(m, dim=0))


@torch.no_grad()
def target_representations(target_encoder: Encoder, x: Tensor, normalize: bool = True) -> Tensor:
    """(B, N, D) target-encoder tokens of the whole input, (layer-normed); computed once per batch
    and cut by every (context, target) pair with :func:`cut_targets`."""
    h_BND = target_encoder(x)
    return normalize_targets(h_BND) if normalize else h_BND


@torch.no_grad()
def cut_targets(h_BND: Tensor, masks: MaskSet) -> Tensor:
    """The target blocks of one pair, (B*M, T, D) in the row order of :class:`JEPA` predictions.

    Masking happens after the target encoder, as in I-JEPA.
    """
    idx_BMT = masks.target_idx_BMT
    (b, m, t), (n, d) = idx_BMT.shape, h_BND.shape[1:]
    # gathered from a broadcast view: the M copies of h are never materialised
    h_BMND = h_BND.unsqueeze(1).expand(b, m, n, d)
    return torch.gather(h_BMND, 2, idx_BMT.unsqueeze(-1).expand(b, m, t, d)).reshape(b * m, t, d)


def target_tokens(target_encoder: Encoder, x: Tensor, masks: MaskSet, normalize: bool = True) -> Tensor:
    """Target representations (B*M, T, D) of one pair: encode the whole input, (layer-norm), cut the blocks."""
    return cut_targets(target_representations(target_encoder, x, normalize), masks)


def representation_spread(tokens_BND: Tensor) -> Tensor:
    """Collapse signal: mean over features of the std across the batch of mean-pooled tokens (scalar).

    Near zero when every input maps to the same representation.
    """
    pooled = tokens_BND.float().mean(dim=1)
    return pooled.std(dim=0).mean()
