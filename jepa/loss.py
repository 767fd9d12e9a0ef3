"""Regression in latent space: the I-JEPA / V-JEPA losses, their mean over mask pairs, and the target normalisation
(docs/method/ijepa.md, "Loss"; docs/method/vjepa.md, "Loss and predictor")."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from jepa.errors import ConfigError


def normalize_targets(tokens_BND: Tensor) -> Tensor:
    """Layer-norm each token over the feature dimension, without affine parameters."""
    return F.layer_norm(tokens_BND, tokens_BND.shape[-1:])


def latent_loss(pred: Tensor, target: Tensor, kind: Literal["l2", "smooth_l1", "l1"] = "l2") -> Tensor:
    """Mean distance between predicted and target representations (any matching shapes).

    ``l2`` is the I-JEPA paper's squared error averaged over elements; ``smooth_l1`` (beta 1) is
    what the I-JEPA authors' code trains with; ``l1`` is V-JEPA's mean absolute error.
    """
    pred, target = pred.float(), target.float()
    if kind == "l2":
        return F.mse_loss(pred, target)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=1.0)
    if kind == "l1":
        return F.l1_loss(pred, target)
    raise ConfigError(f"unknown loss kind {kind!r}; expected 'l2', 'smooth_l1' or 'l1'")


def mean_over_pairs(losses: list[Tensor]) -> Tensor:
    """The loss of a batch with several (context, target) pairs: the mean of the pairs' losses
    (exactly the single loss when there is one pair)."""
    return torch.stack(losses).mean()
