"""Streaming k-nearest-neighbour classification under cosine similarity, on any device.

The queries (validation features, Q x E) are held; the training features stream past in
batches, and each query keeps only its ``k`` most similar training samples so far (similarity
and label). Memory is ``Q x (k + chunk)`` similarities, never a ``N_train x Q`` matrix, and the
training features are never held all at once. Neighbour ``j`` votes for its label with weight
``exp(sim_j / temperature)`` (the weighted vote of DINO's k-NN evaluation).
The online probe of pretraining (:mod:`jepa.online_eval`) uses it too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from jepa.errors import ConfigError, DataError

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
            raise ConfigError(f"--k must be >= 1, got {k}")
        if temperature <= 0:
            raise ConfigError(f"--temperature must be > 0, got {temperature}")
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
            raise DataError("k-NN: no training samples were added")
        c = int(self.max_label.item()) + 1 if num_classes is None else num_classes
        out = torch.zeros(self.queries.shape[0], c, device=self.queries.device)
        return out.scatter_add_(1, self.top_label_QK, (self.top_sim_QK / self.temperature).exp())
