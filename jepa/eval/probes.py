"""Probes trained on frozen features: linear, k-NN and attentive, plus low-shot subsets.

Every probe takes cached features (tensors in memory) and returns class scores for the
validation set; :func:`topk_accuracy` turns scores into top-1/top-5. The probes are kept
small and deterministic under a seed so the numbers are comparable between runs on a CPU.

Shape vocabulary: N samples, D feature width, T tokens per sample, C classes.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def topk_accuracy(scores_NC: Tensor, labels_N: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose label is among the ``k`` highest scores, for each ``k`` in ``ks``.

    Args:
        scores_NC: (N, C) class scores (logits, votes, ...).
        labels_N: (N,) int64 labels in ``[0, C)``.
        ks: the ``k`` values; each must be <= C.

    Returns:
        ``{k: accuracy in [0, 1]}``.
    """
    if scores_NC.shape[0] != labels_N.shape[0]:
        raise ValueError(f"{scores_NC.shape[0]} score rows but {labels_N.shape[0]} labels")
    if scores_NC.shape[0] == 0:
        raise ValueError("no samples to score: the validation set is empty")
    top = scores_NC.topk(max(ks), dim=1).indices
    hits = top == labels_N.unsqueeze(1)
    return {k: hits[:, :k].any(dim=1).float().mean().item() for k in ks}


def standardize(train_ND: Tensor, *others_ND: Tensor, eps: float = 1e-6) -> tuple[Tensor, ...]:
    """Zero mean, unit variance per feature, with statistics from ``train_ND`` only.

    Returns:
        The standardised ``train_ND`` followed by each of ``others_ND``, all float32.
    """
    train = train_ND.float()
    mean = train.mean(dim=0, keepdim=True)
    std = train.std(dim=0, keepdim=True).clamp_min(eps)
    return tuple((t.float() - mean) / std for t in (train, *others_ND))


def low_shot_indices(labels_N: Tensor, fraction: float, seed: int = 0) -> Tensor:
    """Indices of a seeded, class-balanced subset holding ``fraction`` of each class's samples.

    Every class keeps ``max(1, round(fraction * count))`` samples, so rare classes stay present
    (the paper's 1 % ImageNet split keeps ~13 images per class).

    Args:
        labels_N: (N,) int64 labels.
        fraction: share of each class to keep, in (0, 1].
        seed: seed of the draw; the same seed gives the same subset.

    Returns:
        (M,) int64 sorted indices into ``labels_N``.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"--low-shot must be a fraction in (0, 1], got {fraction}; e.g. 0.01 for 1 % of labels per class")
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for cls in labels_N.unique(sorted=True):
        members = (labels_N == cls).nonzero().flatten()
        n_keep = max(1, round(fraction * members.numel()))
        picked.append(members[torch.randperm(members.numel(), generator=gen)[:n_keep]])
    return torch.cat(picked).sort().values


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


class AttentiveProbe(nn.Module):
    """Cross-attention pooling with one learned query, then a linear classifier.

    The query attends over the (layer-normed) frozen patch tokens; the pooled vector is
    layer-normed and classified. This lets the probe weight informative tokens instead of
    averaging all of them.
    """

    def __init__(self, dim: int, num_classes: int, num_heads: int | None = None):
        super().__init__()
        heads = num_heads or max(1, dim // 64)
        while dim % heads:
            heads -= 1
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.token_norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.head_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens_BTD: Tensor) -> Tensor:
        """(B, T, D) frozen tokens -> (B, C) logits."""
        kv = self.token_norm(tokens_BTD)
        pooled_B1D, _ = self.attn(self.query.expand(kv.shape[0], -1, -1), kv, kv, need_weights=False)
        return self.head(self.head_norm(pooled_B1D[:, 0]))


def _minibatches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[Tensor]:
    order = torch.randperm(n, generator=gen)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def _fit(
    model: nn.Module, inputs: Tensor, labels: Tensor, *, epochs: int, batch_size: int,
    lr: float, weight_decay: float, seed: int, on_epoch: Callable[[int], None] | None = None,
) -> nn.Module:
    """Cross-entropy training with AdamW and a cosine learning rate over all steps."""
    if epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {epochs}")
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(inputs.shape[0] / batch_size)
    total = epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    model.train()
    for epoch in range(epochs):
        for idx in _minibatches(inputs.shape[0], batch_size, gen):
            loss = F.cross_entropy(model(inputs[idx].float()), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if on_epoch is not None:
            on_epoch(epoch)
    return model.eval()


def linear_probe_scores(
    train_ND: Tensor, train_labels_N: Tensor, val_ND: Tensor, num_classes: int, *,
    epochs: int = 100, batch_size: int = 256, lr: float = 1e-3, weight_decay: float = 1e-4,
    seed: int = 0, on_epoch: Callable[[int], None] | None = None,
) -> Tensor:
    """Train a linear classifier on standardised features; return validation logits.

    Standardising (train statistics) makes one learning rate work across encoders whose
    feature scales differ by orders of magnitude.

    Returns:
        (Nval, C) logits.
    """
    train, val = standardize(train_ND, val_ND)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(train.shape[1], num_classes)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    with torch.enable_grad():
        _fit(head, train, train_labels_N, epochs=epochs, batch_size=batch_size, lr=lr,
             weight_decay=weight_decay, seed=seed, on_epoch=on_epoch)
    with torch.no_grad():
        return head(val)


def attentive_probe_scores(
    train_NTD: Tensor, train_labels_N: Tensor, val_NTD: Tensor, num_classes: int, *,
    epochs: int = 20, batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 1e-2,
    seed: int = 0, on_epoch: Callable[[int], None] | None = None,
) -> Tensor:
    """Train an :class:`AttentiveProbe` on frozen patch tokens; return validation logits.

    Args:
        train_NTD: (N, T, D) frozen tokens (may be stored in half precision; used as float32).
        val_NTD: (Nval, T, D).

    Returns:
        (Nval, C) logits.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = AttentiveProbe(train_NTD.shape[-1], num_classes)
    with torch.enable_grad():
        _fit(probe, train_NTD, train_labels_N, epochs=epochs, batch_size=batch_size, lr=lr,
             weight_decay=weight_decay, seed=seed, on_epoch=on_epoch)
    with torch.no_grad():
        return torch.cat([probe(val_NTD[i:i + 512].float()) for i in range(0, val_NTD.shape[0], 512)])
