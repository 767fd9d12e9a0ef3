"""Probes on features held in memory: full-batch logistic regression (L-BFGS), low-shot subsets.

These serve the small-set protocols (``logreg``, ``logreg4``); the streaming probes that scale live in
:mod:`jepa.eval.heads`, :mod:`jepa.eval.training` and :mod:`jepa.eval.knn`.
:func:`topk_accuracy` turns scores into top-1/top-5. The logistic regression is convex and
deterministic: a full-batch L-BFGS fit with its L2 strength chosen on a hold-out of the
training split.

Shape vocabulary: N samples, D feature width, C classes.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jepa.errors import ConfigError, DataError


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
        raise DataError("no samples to score: the validation set is empty")
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


def class_balanced_subset(labels_N: Tensor, fraction: float, seed: int = 0) -> Tensor:
    """(N,) bool: a seeded, class-balanced subset holding ``fraction`` of each class's samples.

    Every class keeps ``max(1, round(fraction * count))`` samples, so rare classes stay present
    (the paper's 1 % ImageNet split keeps ~13 images per class). Vectorised: one permutation,
    one stable sort by class.

    Args:
        labels_N: (N,) int64 labels.
        fraction: share of each class to keep, in (0, 1].
        seed: seed of the draw; the same seed gives the same subset.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"--low-shot must be a fraction in (0, 1], got {fraction}; e.g. 0.01 for 1 % of labels per class")
    counts = torch.bincount(labels_N)
    n_keep = (counts.double() * fraction).round().long().clamp_min(1)
    order = torch.randperm(labels_N.numel(), generator=torch.Generator().manual_seed(seed))
    order = order[labels_N[order].argsort(stable=True)]  # grouped by class, random within a class
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(labels_N.numel()) - starts[labels_N[order]]
    keep = torch.zeros(labels_N.numel(), dtype=torch.bool)
    keep[order[rank < n_keep[labels_N[order]]]] = True
    return keep


def low_shot_indices(labels_N: Tensor, fraction: float, seed: int = 0) -> Tensor:
    """(M,) sorted int64 indices of :func:`class_balanced_subset`."""
    return class_balanced_subset(labels_N, fraction, seed).nonzero().flatten()


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
        raise ConfigError(f"--lbfgs-iters (L-BFGS iterations of logreg) must be >= 1, got {max_iter}")
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
