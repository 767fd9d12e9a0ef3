"""The dense k-NN the streaming one (:class:`jepa.eval.StreamingKNN`) is checked against."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def knn_scores(
    train_ND: Tensor, train_labels_N: Tensor, query_QD: Tensor, num_classes: int,
    k: int = 20, temperature: float = 0.07, chunk_size: int = 1024,
) -> Tensor:
    """Weighted k-nearest-neighbour votes under cosine similarity.

    Each query takes its ``k`` most similar training samples; neighbour ``j`` votes for its
    label with weight ``exp(sim_j / temperature)``.

    Args:
        train_ND: (N, D) training features (any scale; they are L2-normalised here).
        train_labels_N: (N,) int64 labels.
        query_QD: (Q, D) features to classify.
        num_classes: C.
        k: neighbours per query (capped at N).
        temperature: softness of the vote weights.
        chunk_size: queries per similarity matrix (bounds memory at chunk_size x N).

    Returns:
        (Q, C) summed vote weights.
    """
    if k < 1:
        raise ValueError(f"--k must be >= 1, got {k}")
    train = F.normalize(train_ND.float(), dim=1)
    query = F.normalize(query_QD.float(), dim=1)
    k = min(k, train.shape[0])
    out = torch.zeros(query.shape[0], num_classes)
    for start in range(0, query.shape[0], chunk_size):
        sim = query[start:start + chunk_size] @ train.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        out[start:start + chunk_size].scatter_add_(1, train_labels_N[top_idx], weights)
    return out
