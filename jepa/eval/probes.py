"""Probes trained on frozen features: linear, k-NN and attentive, plus low-shot subsets.

Every probe takes cached features (tensors in memory) and returns class scores for the
validation set; :func:`topk_accuracy` turns scores into top-1/top-5. The probes are kept
small and deterministic under a seed so the numbers are comparable between runs on a CPU:
the linear probe is a convex, full-batch L-BFGS fit with its L2 strength chosen on a
hold-out of the training split; the attentive probe is trained with minibatch AdamW.

Shape vocabulary: N samples, D feature width, T tokens per sample, C classes.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn


SMALL_OP_ELEMENTS = 1 << 22
"""Below this many elements per tensor operation a probe runs single-threaded (see :func:`threads_for`)."""


@contextlib.contextmanager
def threads_for(elements_per_op: int) -> Iterator[None]:
    """Run small-tensor work on one intra-op thread, restoring the thread count afterwards.

    Probe steps on small tensors gain nothing from threads, and when other processes compete
    for the cores the threads' synchronisation makes them many times slower (measured 10x on
    2 busy cores); large problems keep every thread.
    """
    before = torch.get_num_threads()
    if elements_per_op >= SMALL_OP_ELEMENTS or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    with threads_for(min(chunk_size, query.shape[0]) * train.shape[0]):
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


WEIGHT_DECAYS: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
"""L2 strengths the linear probe chooses from on a held-out part of the training split."""


def fit_linear(train_ND: Tensor, labels_N: Tensor, num_classes: int, weight_decay: float, max_iter: int = 100) -> nn.Linear:
    """Multinomial logistic regression, full batch, by L-BFGS with a strong-Wolfe line search.

    Minimises ``mean cross-entropy + weight_decay / 2 * ||W||^2`` (bias not penalised) from a
    zero start: a convex problem, so the result depends on neither a seed nor a learning rate.

    Args:
        train_ND: (N, D) float32 features (standardise them first).
        labels_N: (N,) int64 labels.
        num_classes: C.
        weight_decay: L2 strength on the weights.
        max_iter: L-BFGS iterations (each costs about one pass over the features).

    Returns:
        The fitted (D -> C) layer.
    """
    if max_iter < 1:
        raise ValueError(f"--epochs (L-BFGS iterations of the linear probe) must be >= 1, got {max_iter}")
    head = nn.Linear(train_ND.shape[1], num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(head(train_ND), labels_N) + 0.5 * weight_decay * head.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return head.eval()


def choose_weight_decay(
    train_ND: Tensor, labels_N: Tensor, num_classes: int, weight_decays: tuple[float, ...] = WEIGHT_DECAYS,
    holdout: float = 0.2, max_iter: int = 100, seed: int = 0,
) -> float:
    """The L2 strength with the best accuracy on a seeded hold-out of the training split.

    Ties go to the stronger regularisation. With fewer than 20 held-out samples the choice
    would be noise, so the middle of ``weight_decays`` is returned instead.
    """
    n_hold = int(holdout * train_ND.shape[0])
    if len(weight_decays) == 1 or n_hold < 20:
        return weight_decays[len(weight_decays) // 2]
    perm = torch.randperm(train_ND.shape[0], generator=torch.Generator().manual_seed(seed))
    hold, fit = perm[:n_hold], perm[n_hold:]
    best, best_acc = weight_decays[0], -1.0
    for wd in weight_decays:
        head = fit_linear(train_ND[fit], labels_N[fit], num_classes, wd, max_iter)
        with torch.no_grad():
            acc = (head(train_ND[hold]).argmax(dim=1) == labels_N[hold]).float().mean().item()
        if acc >= best_acc:
            best, best_acc = wd, acc
    return best


def linear_probe_scores(
    train_ND: Tensor, train_labels_N: Tensor, val_ND: Tensor, num_classes: int, *,
    max_iter: int = 100, weight_decays: tuple[float, ...] = WEIGHT_DECAYS, seed: int = 0,
) -> tuple[Tensor, float]:
    """Fit a linear classifier on standardised features; return validation logits.

    Standardising (train statistics) puts every encoder's features on one scale, so one grid
    of L2 strengths suits all; the strength is picked on a hold-out of the training split
    (:func:`choose_weight_decay`) and the final classifier refitted on the whole split.

    Returns:
        (Nval, C) logits and the chosen weight decay.
    """
    train, val = standardize(train_ND, val_ND)
    with threads_for(train.numel()):  # full batch: every op spans the training features
        wd = choose_weight_decay(train, train_labels_N, num_classes, weight_decays, max_iter=max_iter, seed=seed)
        head = fit_linear(train, train_labels_N, num_classes, wd, max_iter)
        with torch.no_grad():
            return head(val), wd


MIN_ATTENTIVE_STEPS = 300
"""Fewest optimiser steps of the attentive probe: small (e.g. low-shot) training sets get more epochs."""


def attentive_probe_scores(
    train_NTD: Tensor, train_labels_N: Tensor, val_NTD: Tensor, num_classes: int, *,
    epochs: int = 20, batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 1e-2,
    seed: int = 0, min_steps: int = MIN_ATTENTIVE_STEPS,
) -> tuple[Tensor, int]:
    """Train an :class:`AttentiveProbe` on frozen patch tokens with AdamW; return validation logits.

    The learning rate follows a cosine from ``lr`` to 0 over all steps. Training runs
    ``epochs`` epochs, or more when that would be fewer than ``min_steps`` optimiser steps.

    Args:
        train_NTD: (N, T, D) frozen tokens (may be stored in half precision; used as float32).
        train_labels_N: (N,) int64 labels.
        val_NTD: (Nval, T, D).
        num_classes: C.

    Returns:
        (Nval, C) logits and the number of epochs run.
    """
    if epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {epochs}")
    n = train_NTD.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    epochs = max(epochs, math.ceil(min_steps / steps_per_epoch))
    total = epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = AttentiveProbe(train_NTD.shape[-1], num_classes)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
    probe.train()
    with torch.enable_grad(), threads_for(min(batch_size, n) * train_NTD[0].numel()):
        for _ in range(epochs):
            for idx in torch.randperm(n, generator=gen).split(batch_size):
                loss = F.cross_entropy(probe(train_NTD[idx].float()), train_labels_N[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    probe.eval()
    with torch.no_grad():
        logits = torch.cat([probe(val_NTD[i:i + 512].float()) for i in range(0, val_NTD.shape[0], 512)])
    return logits, epochs
