"""Training and scoring a grid of probe heads on a stream of (features, labels) batches.

The stream is whatever the caller feeds: the frozen encoder run on every batch of an epoch
(augmented or not), or pooled features read back from a :class:`~jepa.eval.features.PooledStore`.
One optimiser step per batch updates every head (:class:`~jepa.eval.heads.GridAdamW`); the
learning rate of every head follows the same schedule (:func:`lr_scale`): linear warmup from 0,
then a cosine to 0 at the last step. Nothing leaves the device inside the loop; per-head losses
are read once per epoch for the progress bar.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from rich.progress import Progress
from torch import Tensor, nn

from jepa.eval.features import autocast_for
from jepa.eval.grid import Grid, GridScores
from jepa.eval.heads import GridAdamW, grid_loss
from jepa.eval.probes import threads_for

Feed = Callable[[int], Iterable[tuple[Tensor, Tensor]]]
"""``epoch -> (probe inputs on the device, labels)`` batches of that epoch."""


def lr_scale(step: int, total_steps: int, warmup_steps: int) -> float:
    """Factor on the peak learning rate at optimiser step ``step`` (0-based): linear warmup from 0
    over ``warmup_steps``, then a cosine from 1 to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def train_grid(heads: nn.Module, grid: Grid, feed: Feed, *, epochs: int, steps_per_epoch: int, warmup_epochs: float,
               device: torch.device, precision: str, progress: Progress, description: str) -> list[float]:
    """Train every head of ``heads`` (a :class:`~jepa.eval.heads.LinearGrid` or
    :class:`~jepa.eval.heads.AttentiveGrid` on ``device``) for ``epochs`` epochs of ``feed``.

    Args:
        heads: the grid; ``heads.decayed()`` names the parameters that take weight decay.
        grid: the (lr, wd) of each head.
        feed: the epoch's batches (see :data:`Feed`); batches of fewer than 2 samples are skipped
            (batch statistics need two).
        epochs: passes over the feed.
        steps_per_epoch: expected optimiser steps per epoch (sizes the schedule and the bar).
        warmup_epochs: linear warmup length.
        device, precision: where and how (``bf16`` autocast on CUDA) the heads run.
        progress: the running progress bar.
        description: its label.

    Returns:
        Each head's mean training loss over the last epoch.
    """
    lr_G, wd_G = grid.tensors()
    opt = GridAdamW(heads.parameters(), heads.decayed(), lr_G, wd_G)
    total = max(1, epochs * steps_per_epoch)
    warmup = int(round(warmup_epochs * steps_per_epoch))
    task = progress.add_task(f"{description}: epoch 1/{epochs}", total=total)
    heads.train()
    step = 0
    last = torch.zeros(len(grid), device=device)
    for epoch in range(epochs):
        epoch_loss = torch.zeros(len(grid), device=device)
        batches = 0
        for x, y in feed(epoch):
            if y.shape[0] < 2:
                continue
            with threads_for(x.numel()), autocast_for(device, precision):  # small CPU steps: one thread
                logits = heads(x)
                loss, per_head = grid_loss(logits, y)
                opt.zero_grad()
                loss.backward()
                opt.step(lr_scale(step, total, warmup))
            epoch_loss += per_head
            batches += 1
            step += 1
            progress.update(task, completed=min(step, total))
        last = epoch_loss / max(1, batches)
        progress.update(task, description=f"{description}: epoch {epoch + 1}/{epochs}, loss "
                                          f"{last.min().item():.3f} (best head)")
    progress.update(task, completed=total)
    heads.eval()
    return last.tolist()


@torch.no_grad()
def score_grid(heads: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], ks: tuple[int, ...], device: torch.device,
               precision: str) -> dict[str, list[float]]:
    """Top-k accuracies and mean loss of every head on ``batches`` (heads in eval mode)."""
    heads.eval()
    scores = GridScores(heads.num_heads, device, ks)
    for x, y in batches:
        with threads_for(x.numel()), autocast_for(device, precision):
            logits = heads(x)
            scores.add(logits.float(), y)
    return scores.result()
