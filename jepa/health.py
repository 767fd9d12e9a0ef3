"""RankMe: the effective rank of a set of representations, a collapse signal needing no labels.

Garrido et al., "RankMe: Assessing the downstream performance of pretrained self-supervised
representations by their rank" (ICML 2023): with ``sigma`` the singular values of the (n, D)
matrix of representations and ``p_k = sigma_k / sum(sigma) + eps``,
``RankMe = exp(-sum_k p_k log p_k)``. It lies in [1, min(n, D)]: about 1 when every
representation is the same vector (complete collapse), about ``min(n, D)`` when they spread
evenly over every direction. A drop during pretraining signals (dimensional) collapse before
the loss shows anything.

The training loop feeds it the step's target tokens (rows = tokens, not samples, so a small
per-rank batch still gives a meaningful rank): at most :data:`MAX_ROWS` rows, evenly spaced.
"""

from __future__ import annotations

import torch
from torch import Tensor

MAX_ROWS = 2048
"""Rows used at most (the SVD costs O(rows x D^2) once per log step)."""

EPS = 1e-7
"""Added to each normalised singular value, as in the paper."""


def rankme(features: Tensor, max_rows: int = MAX_ROWS) -> Tensor:
    """The RankMe of a set of representations (a 0-dim float32 tensor on the input's device; NaN
    when a representation is not finite).

    Args:
        features: (..., D) representations; every leading dimension is flattened into rows
            (e.g. (B, M, D) target tokens give B x M rows).
        max_rows: use at most this many rows, evenly spaced (deterministic).

    Raises:
        ValueError: fewer than 2 rows, or no feature dimension.
    """
    if features.dim() < 2:
        raise ValueError(f"rankme needs (..., D) representations with rows, got shape {tuple(features.shape)}")
    rows = features.reshape(-1, features.shape[-1])
    if rows.shape[0] < 2:
        raise ValueError(f"rankme needs at least 2 representations, got {rows.shape[0]}")
    if rows.shape[0] > max_rows:
        rows = rows[torch.linspace(0, rows.shape[0] - 1, max_rows, device=rows.device).long()]
    rows = rows.float()
    finite = torch.isfinite(rows).all()  # a NaN/Inf representation gives NaN (no host sync, no SVD error)
    sigma = torch.linalg.svdvals(torch.where(finite, rows, torch.zeros_like(rows)))
    p = sigma / sigma.sum().clamp_min(torch.finfo(torch.float32).tiny) + EPS
    return torch.where(finite, torch.exp(-(p * p.log()).sum()), torch.full((), float("nan"), device=rows.device))
