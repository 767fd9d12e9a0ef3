"""What the protocols of one evaluation share: the splits, the encoder's output shape, the memory
plan's inputs, and the running state (:class:`EvalRun`: passes through the encoder, the stores).

A protocol (:mod:`jepa.eval.protocols`) sees only these: it plans with :class:`PlanInput` and
runs with :class:`EvalRun`; :func:`jepa.eval.evaluate.evaluate` builds both and owns the order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import torch
from torch import Tensor

from jepa.eval.features import FeatureSpec, PooledStore, encoder_features, iterate_rows
from jepa.eval.memory import place_of
from jepa.eval.reader import LabelledData, PassSpec
from jepa.sources import EncoderSource

if TYPE_CHECKING:
    from jepa.eval.settings import EvalSettings


@dataclass
class Splits:
    """Which training samples each protocol uses (all (N,) bool over the training scan)."""

    eligible: Tensor  # after low-shot subsetting
    held: Tensor  # held out for choosing among heads
    fit: Tensor  # eligible and not held out

    @property
    def num_fit(self) -> int:
        return int(self.fit.sum())


@dataclass
class Shapes:
    """The frozen encoder's output on the evaluation view (measured on two samples)."""

    tokens: int
    dim: int
    depth: int
    input_numel: int
    encoder_bytes: int

    def layers(self, spec: FeatureSpec) -> int:
        """Layers ``spec`` reads from this encoder: pooled ``L`` means the last ``min(L, depth)``."""
        return min(spec.num_layers, self.depth) if spec.kind == "pooled" else 1

    def width(self, spec: FeatureSpec) -> int:
        """Feature width of ``spec``: ``layers * D`` (pooled) or ``D`` per token."""
        return self.layers(spec) * self.dim


@dataclass
class PlanInput:
    """What a protocol's memory needs depend on (:meth:`jepa.eval.protocols.Protocol.needs`).

    Attributes:
        settings: the run's settings.
        shapes: the encoder's output.
        num_classes: C.
        num_train, num_val: eligible training samples, validation samples.
        host_bytes: host memory free when the plan was made.
    """

    settings: EvalSettings
    shapes: Shapes
    num_classes: int
    num_train: int
    num_val: int
    host_bytes: int

    @property
    def device_place(self) -> str:
        return place_of(self.settings.torch_device)

    @property
    def cuda(self) -> bool:
        return self.settings.torch_device.type == "cuda"


class EvalRun:
    """State shared by the protocols of one evaluation (the flat steps live in :func:`jepa.eval.evaluate.evaluate`).

    Attributes:
        store_train, store_val: pooled features of the layers :attr:`store_layers`, when a protocol reads them stored.
        tokens_train, tokens_val: last-layer tokens flattened to ``T * D`` columns, when a protocol stores them.
    """

    def __init__(self, source: EncoderSource, train: LabelledData, val: LabelledData, settings: EvalSettings,
                 splits: Splits, num_classes: int, shapes: Shapes, progress):
        self.source, self.train, self.val, self.settings = source, train, val, settings
        self.splits, self.num_classes, self.shapes, self.progress = splits, num_classes, shapes, progress
        self.device, self.precision = settings.torch_device, settings.autocast
        self.ks = (1, 5) if num_classes >= 10 else (1,)
        assert train.index is not None and val.index is not None
        self.train_labels, self.val_labels = train.index.labels_N, val.index.labels_N
        self.store_train: PooledStore | None = None
        self.store_val: PooledStore | None = None
        self.tokens_train: PooledStore | None = None
        self.tokens_val: PooledStore | None = None

    def passes(self, data: LabelledData, keep: Tensor | None, *, epoch: int = 0, shuffle_seed: int | None = None,
               augment: str = "none"):
        spec = PassSpec(self.settings.batch_size, keep, shuffle_seed, epoch, augment, self.settings.shuffle_buffer)
        return data.passes(spec, self.settings.num_workers)

    def encoded(self, data: LabelledData, keep: Tensor | None, spec: FeatureSpec, description: str, *,
                epoch: int = 0, shuffle_seed: int | None = None, augment: str = "none", total: int | None = None):
        """``(probe inputs on the device, labels on the device)`` of one pass through the encoder."""
        task = None if description == "" else self.progress.add_task(description, total=total)
        for x, y, _ in self.passes(data, keep, epoch=epoch, shuffle_seed=shuffle_seed, augment=augment):
            yield encoder_features(self.source.layers, x, spec, self.device, self.precision), y.to(self.device)
            if task is not None:
                self.progress.advance(task, y.shape[0])

    def store_tokens(self, description: str) -> None:
        """Encode the eligible training samples and the validation split once and keep their
        last-layer tokens, flattened to ``T * D`` columns, in host-memory stores."""
        spec, shapes = FeatureSpec("tokens"), self.shapes
        for split, data, keep, labels in (("train", self.train, self.splits.eligible, self.train_labels),
                                          ("val", self.val, None, self.val_labels)):
            store = PooledStore(labels.numel(), shapes.tokens * shapes.dim)
            setattr(self, f"tokens_{split}", store)
            task = self.progress.add_task(f"{description}: {split} tokens",
                                          total=labels.numel() if keep is None else int(keep.sum()))
            for x, y, idx in self.passes(data, keep):
                store.write(idx, encoder_features(self.source.layers, x, spec, self.device, self.precision).flatten(1))
                self.progress.advance(task, y.shape[0])

    def decoded(self, split: str, keep: Tensor) -> int:
        """Samples of ``keep`` that a probe reads: with features or tokens stored, those that decoded
        (an undecodable sample leaves its row unfilled and out of every probe); else all of them."""
        for store in (getattr(self, f"store_{split}"), getattr(self, f"tokens_{split}")):
            if store is not None:
                return int((keep & store.filled_N).sum())
        return int(keep.sum())

    def stored_tokens(self, split: str, keep: Tensor | None, generator: torch.Generator | None = None):
        """Batches ``(tokens_BTD, labels_B)`` of the stored tokens, on the device, shuffled when
        ``generator`` is given."""
        store = self.tokens_train if split == "train" else self.tokens_val
        assert store is not None
        labels = self.train_labels if split == "train" else self.val_labels
        keep = torch.ones_like(store.filled_N) if keep is None else keep
        for feats, y in self.stored(store, labels, keep, slice(None), generator):
            yield feats.view(feats.shape[0], -1, self.shapes.dim), y

    def stored(self, store: PooledStore, labels_N: Tensor, keep: Tensor, columns: slice,
               generator=None) -> Iterator[tuple[Tensor, Tensor]]:
        idx = (keep & store.filled_N).nonzero().flatten()
        for rows, feats in iterate_rows(store, idx, self.settings.batch_size, columns, generator):
            yield feats.to(self.device, non_blocking=True), labels_N[rows].to(self.device, non_blocking=True)

    def pooled_columns(self, spec: FeatureSpec) -> slice:
        """The columns of the pooled store that ``spec`` reads: its last ``layers * D`` (the store holds
        the deepest layers any protocol reads, shallowest first)."""
        assert self.store_train is not None
        return slice(self.store_train.width - self.shapes.width(spec), None)

    def steps_per_epoch(self) -> int:
        workers = self.settings.num_workers
        return math.ceil(self.splits.num_fit / self.settings.batch_size) + max(0, workers - 1)
