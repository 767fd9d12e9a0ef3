"""Regression in latent space: the I-JEPA loss and the target normalisation."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor


def normalize_targets(tokens_BND: Tensor) -> Tensor:
    """Layer-norm each token over the feature dimension, without affine parameters."""
    return F.layer_norm(tokens_BND, tokens_BND.shape[-1:])


def latent_loss(pred: Tensor, target: Tensor, kind: Literal["l2", "smooth_l1"] = "l2") -> Tensor:
    """Mean distance between predicted and target representations (any matching shapes).

    ``l2`` is the paper's squared error averaged over elements; ``smooth_l1`` (beta 1) is what
    the authors' code trains with.
    """
    pred, target = pred.float(), target.float()
    if kind == "l2":
        return F.mse_loss(pred, target)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=1.0)
    raise ValueError(f"unknown loss kind {kind!r}; expected 'l2' or 'smooth_l1'")
