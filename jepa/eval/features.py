"""Frozen features: run an encoder once over a labelled split and cache what the probes need.

The encoder is run under ``torch.no_grad`` (not inference mode: the probes train on the results) and every output is moved to the CPU, so a
split is encoded exactly once however many probes follow. Patch tokens (needed only by the
attentive probe) are kept in half precision to halve their memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from torch import Tensor

LayersFn = Callable[[Tensor, int], list[Tensor]]


@dataclass
class Features:
    """Cached frozen features of one split.

    Attributes:
        labels_N: (N,) int64 class labels.
        pooled_ND: (N, D) average over tokens of the last layer (the paper's linear-probe input).
        pooled_last4_NE: (N, L*D) average-pooled outputs of the last L layers (4, or the depth
            when shallower), concatenated shallowest first; None when not requested.
        tokens_NTD: (N, T, D) float16 last-layer patch tokens, or None when not requested.
    """

    labels_N: Tensor
    pooled_ND: Tensor
    pooled_last4_NE: Tensor | None = None
    tokens_NTD: Tensor | None = None

    def __len__(self) -> int:
        return self.labels_N.shape[0]

    def subset(self, idx_M: Tensor) -> "Features":
        """The rows ``idx_M`` (low-shot training subsets)."""
        return Features(
            self.labels_N[idx_M], self.pooled_ND[idx_M],
            None if self.pooled_last4_NE is None else self.pooled_last4_NE[idx_M],
            None if self.tokens_NTD is None else self.tokens_NTD[idx_M],
        )


def progress_bar(console: Console | None = None) -> Progress:
    """The rich progress bar used by every evaluation stage (written to stderr by default)."""
    return Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console or Console(stderr=True), transient=False,
    )


@torch.no_grad()
def extract_features(
    layers_fn: LayersFn, batches: Iterable[tuple[Tensor, Tensor]], *, num_last: int = 1,
    keep_tokens: bool = False, description: str = "features", total: int | None = None,
    progress: Progress | None = None, device: torch.device | str = "cpu",
) -> Features:
    """Encode every batch once and cache pooled features (and optionally tokens).

    Args:
        layers_fn: ``(x, num_last) -> [(B, T, D)] * num_last``, the last entry being the final
            (normed) output; e.g. ``encoder.forward_layers``.
        batches: ``(inputs, labels)`` pairs in evaluation view, labels (B,) int64.
        num_last: when > 1, also cache the concatenated average-pooled last ``num_last``
            layers (``linear4``).
        keep_tokens: also cache last-layer tokens (attentive probe).
        description: label of the progress task.
        total: number of samples if known (sizes the progress bar).
        progress: a running :func:`progress_bar` to add the task to (a new one when None).
        device: where the encoder runs; features come back on the CPU.

    Raises:
        ValueError: ``batches`` yields nothing.
    """
    last4 = num_last > 1
    labels, pooled, pooled4, tokens = [], [], [], []
    owned = progress is None
    progress = progress or progress_bar()
    if owned:
        progress.start()
    try:
        task = progress.add_task(description, total=total)
        for x, y in batches:
            layers = layers_fn(x.to(device), num_last)
            last = layers[-1].float()
            labels.append(y.to(torch.int64).cpu())
            pooled.append(last.mean(dim=1).cpu())
            if last4:
                pooled4.append(torch.cat([h.float().mean(dim=1) for h in layers], dim=1).cpu())
            if keep_tokens:
                tokens.append(last.to(torch.float16).cpu())
            progress.advance(task, y.shape[0])
    finally:
        if owned:
            progress.stop()
    if not labels:
        raise ValueError(f"{description}: the shards yielded no samples; check the shard pattern")
    return Features(
        torch.cat(labels), torch.cat(pooled),
        torch.cat(pooled4) if last4 else None,
        torch.cat(tokens) if keep_tokens else None,
    )
