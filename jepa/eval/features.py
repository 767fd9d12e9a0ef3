"""Frozen features: what the probes read from the encoder, and the pooled-feature store.

* :func:`encoder_features`: one batch through the frozen encoder (no gradients, autocast on
  CUDA) -> the probe inputs it asks for: last-layer tokens (attentive probe), the average over
  tokens of the last layer (``linear``, ``knn``, ``logreg``) or of the last L layers,
  concatenated (``linear4``, ``logreg4``).
* :class:`PooledStore`: pooled features of one split, (N, E) float32, in host memory or in a
  memory-mapped file on disk. Rows of samples that did not decode stay unfilled and are left out
  (``filled_N``). The attentive probe also keeps last-layer tokens in one (flattened to ``T * D``
  columns, host memory only) when they fit (``jepa.eval.evaluate``).
* :func:`fill_pooled`: one pass over a split into a store, with a progress bar.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from torch import Tensor

LayersFn = Callable[[Tensor, int], list[Tensor]]


def progress_bar(console: Console | None = None) -> Progress:
    """The rich progress bar used by every evaluation stage (written to stderr by default)."""
    return Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console or Console(stderr=True), transient=False,
    )


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``precision == "bf16"``; nothing otherwise."""
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass(frozen=True)
class FeatureSpec:
    """What a probe reads from the encoder.

    Attributes:
        kind: ``tokens`` (last layer, (B, T, D)) or ``pooled`` (average over tokens, (B, L*D)).
        num_layers: pooled only: the last ``num_layers`` layers, concatenated shallowest first.
    """

    kind: str
    num_layers: int = 1


def pool_layers(layers: list[Tensor], num_layers: int) -> Tensor:
    """(B, L*D) float32: the average over tokens of each of the last ``num_layers`` layers, concatenated."""
    return torch.cat([h.float().mean(dim=1) for h in layers[-num_layers:]], dim=1)


@torch.no_grad()
def encoder_features(layers_fn: LayersFn, x: Tensor, spec: FeatureSpec, device: torch.device,
                     precision: str = "fp32") -> Tensor:
    """One batch through the frozen encoder -> the probe input ``spec`` names, on ``device``."""
    with autocast_for(device, precision):
        layers = layers_fn(x.to(device, non_blocking=True), spec.num_layers if spec.kind == "pooled" else 1)
    if spec.kind == "tokens":
        return layers[-1]
    return pool_layers(layers, spec.num_layers)


class PooledStore:
    """(N, E) float32 pooled features of one split, in host memory or memory-mapped from a file.

    Args:
        num_rows: N, samples in the split's scan.
        width: E.
        directory: None keeps the features in host memory; else a file in this folder holds
            them (deleted by :meth:`close`).
    """

    def __init__(self, num_rows: int, width: int, directory: str | Path | None = None):
        self.path: Path | None = None
        if directory is None:
            self.rows_NE = torch.empty(num_rows, width)
        else:
            fd, name = tempfile.mkstemp(prefix="jepa-eval-pooled-", suffix=".f32", dir=directory)
            os.close(fd)
            self.path = Path(name)
            self._mm = np.memmap(self.path, dtype=np.float32, mode="w+", shape=(num_rows, width))
            self.rows_NE = torch.from_numpy(self._mm)
        self.filled_N = torch.zeros(num_rows, dtype=torch.bool)

    @property
    def width(self) -> int:
        return int(self.rows_NE.shape[1])

    def write(self, idx_B: Tensor, feats_BE: Tensor) -> None:
        self.rows_NE[idx_B] = feats_BE.float().cpu()
        self.filled_N[idx_B] = True

    def rows(self, idx: Tensor, columns: slice = slice(None)) -> Tensor:
        """Rows ``idx`` (int64), columns ``columns``, as a float32 host tensor."""
        return self.rows_NE[idx][:, columns]

    def close(self) -> None:
        """Free the features (and delete the file of a disk store)."""
        self.rows_NE = torch.empty(0, self.width)
        if self.path is not None:
            del self._mm
            self.path.unlink(missing_ok=True)
            self.path = None


def fill_pooled(store: PooledStore, batches: Iterable[tuple[Tensor, Tensor, Tensor]], layers_fn: LayersFn,
                num_layers: int, device: torch.device, precision: str, progress: Progress, description: str,
                total: int | None, on_batch: Callable[[Tensor, Tensor, Tensor], None] | None = None) -> None:
    """Encode ``(inputs, labels, idx)`` batches into ``store`` (and hand each batch's pooled
    features, labels and indices to ``on_batch``, e.g. a streaming k-NN)."""
    task = progress.add_task(description, total=total)
    spec = FeatureSpec("pooled", num_layers)
    for x, y, idx in batches:
        feats = encoder_features(layers_fn, x, spec, device, precision)
        store.write(idx, feats)
        if on_batch is not None:
            on_batch(feats, y, idx)
        progress.advance(task, y.shape[0])


def iterate_rows(store: PooledStore, idx_N: Tensor, batch_size: int, columns: slice = slice(None),
                 generator: torch.Generator | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Minibatches of stored rows: ``(idx_B, feats_BE)`` over ``idx_N``, shuffled when ``generator`` is given."""
    order = idx_N if generator is None else idx_N[torch.randperm(idx_N.numel(), generator=generator)]
    for chunk in order.split(batch_size):
        yield chunk, store.rows(chunk, columns)
