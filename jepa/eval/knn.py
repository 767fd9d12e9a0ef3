"""Streaming k-nearest-neighbour classification under cosine similarity, on any device.

The queries (validation features, Q x E) are held; the training features stream past in
batches, and each query keeps only its ``k`` most similar training samples so far (similarity
and label). Memory is ``Q x (k + chunk)`` similarities, never a ``N_train x Q`` matrix, and the
training features are never held all at once. Neighbour ``j`` votes for its label with weight
``exp(sim_j / temperature)`` (the weighted vote of DINO's k-NN evaluation).

:func:`knn_accuracy` is the one-call form for callers that hold an encoder and two labelled
batch iterables (e.g. health checks during pretraining).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

QUERY_CHUNK_ELEMENTS = 1 << 24
"""Largest query-chunk x training-batch similarity block computed at once (64 MiB in float32)."""


class StreamingKNN:
    """Running top-k neighbours of fixed queries over streamed training features.

    Args:
        queries_QE: (Q, E) query features (any scale; L2-normalised here), on the device to use.
        k: neighbours per query.
        temperature: softness of the vote weights.
    """

    def __init__(self, queries_QE: Tensor, k: int = 20, temperature: float = 0.07):
        if k < 1:
            raise ValueError(f"--k must be >= 1, got {k}")
        if temperature <= 0:
            raise ValueError(f"--temperature must be > 0, got {temperature}")
        self.queries = F.normalize(queries_QE.float(), dim=1)
        self.k, self.temperature = k, temperature
        q, device = queries_QE.shape[0], queries_QE.device
        self.top_sim_QK = torch.full((q, 0), float("-inf"), device=device)
        self.top_label_QK = torch.zeros((q, 0), dtype=torch.int64, device=device)
        self.max_label = torch.zeros((), dtype=torch.int64, device=device)
        self.seen = 0

    @torch.no_grad()
    def add(self, train_BE: Tensor, labels_B: Tensor) -> None:
        """Merge one batch of training features (and their labels) into every query's top-k."""
        train = F.normalize(train_BE.to(self.queries.device, torch.float32), dim=1)
        labels = labels_B.to(self.queries.device)
        self.max_label = torch.maximum(self.max_label, labels.max())
        q = self.queries.shape[0]
        rows = max(1, QUERY_CHUNK_ELEMENTS // max(1, train.shape[0]))
        sims, idx = [], []
        for start in range(0, q, rows):  # chunks of queries bound the similarity block
            sim = torch.cat([self.top_sim_QK[start:start + rows], self.queries[start:start + rows] @ train.T], dim=1)
            lab = torch.cat([self.top_label_QK[start:start + rows],
                             labels.expand(min(rows, q - start), -1)], dim=1)
            top, pos = sim.topk(min(self.k, sim.shape[1]), dim=1)
            sims.append(top)
            idx.append(lab.gather(1, pos))
        self.top_sim_QK, self.top_label_QK = torch.cat(sims), torch.cat(idx)
        self.seen += train.shape[0]

    def scores(self, num_classes: int | None = None) -> Tensor:
        """(Q, C) summed vote weights of each query's neighbours (C: ``num_classes`` or the largest label + 1)."""
        if self.seen == 0:
            raise ValueError("k-NN: no training samples were added")
        c = int(self.max_label.item()) + 1 if num_classes is None else num_classes
        out = torch.zeros(self.queries.shape[0], c, device=self.queries.device)
        return out.scatter_add_(1, self.top_label_QK, (self.top_sim_QK / self.temperature).exp())


def _pooled(out: Tensor) -> Tensor:
    """An encoder output as (B, E): tokens (B, T, D) are averaged, (B, E) is kept."""
    return out.float().mean(dim=1) if out.dim() == 3 else out.float()


@torch.no_grad()
def knn_accuracy(encoder_fn: Callable[[Tensor], Tensor], train_batches: Iterable[tuple[Tensor, Tensor]],
                 val_batches: Iterable[tuple[Tensor, Tensor]], k: int = 20, device: torch.device | str = "cpu",
                 *, temperature: float = 0.07) -> float:
    """Top-1 accuracy of the weighted k-NN classifier, streaming: nothing N_train-sized is kept.

    ``val_batches`` are encoded first and held as queries ((Q, E) on ``device``); then
    ``train_batches`` stream past (:class:`StreamingKNN`). Features are ``encoder_fn``'s output
    averaged over tokens ((B, T, D) -> (B, D)), or the output itself when it is (B, E).

    Args:
        encoder_fn: frozen encoder, inputs on ``device`` -> (B, T, D) tokens or (B, E) features;
            called under ``torch.no_grad`` (autocast, eval mode: the caller's choice).
        train_batches: ``(inputs, labels)`` of the labelled bank.
        val_batches: ``(inputs, labels)`` to classify.
        k: neighbours per query.
        device: where the encoder and the similarities run.
        temperature: vote temperature.

    Returns:
        Top-1 accuracy in [0, 1].

    Raises:
        ValueError: either iterable yields nothing.
    """
    device = torch.device(device)
    feats, labels = [], []
    for x, y in val_batches:
        feats.append(_pooled(encoder_fn(x.to(device, non_blocking=True))))
        labels.append(y.to(device))
    if not labels:
        raise ValueError("k-NN: the validation batches yielded no samples")
    knn = StreamingKNN(torch.cat(feats), k, temperature)
    del feats
    val_labels = torch.cat(labels)
    for x, y in train_batches:
        knn.add(_pooled(encoder_fn(x.to(device, non_blocking=True))), y)
    c = int(torch.maximum(knn.max_label, val_labels.max()).item()) + 1
    return (knn.scores(c).argmax(dim=1) == val_labels).float().mean().item()
