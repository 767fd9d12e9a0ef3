"""Labelled evaluation inputs for ``jepa eval``: labelled shards or a folder of class sub-folders, read in passes.

:class:`LabelledData` (:class:`ShardData` here, :class:`~jepa.eval.folder.FolderData`, made by
:func:`~jepa.eval.evaluate.open_labelled`) is what ``jepa eval`` reads. A split is first *scanned* (labels of every
sample, no decoding of shards; a folder's files are listed and each is checked to decode in a
child process, as ``jepa shards`` does, so corrupt files are skipped and counted before anything
is trained). Then any number of *passes* read a chosen subset of the samples (``keep_N``: the
held-out part, the training part, a low-shot subset), in file order or shuffled per epoch, in the
evaluation view or augmented (the augmentation is the modality's). Every batch carries the
samples' positions in the scan (``idx_B``), so a pass can fill a feature cache row by row.
Samples that fail to decode during a pass are skipped and counted, never fatal.

Labels are checked by :func:`jepa.eval.labels.label_of` (re-exported here with
:func:`labelled_batches`, the one-pass reader of the online k-NN). A scan refuses a split holding a
bad label (one line naming the sample and its shard: evaluating on a split with a corrupt label
would score the wrong thing). The splits of an evaluation are numbered by class *name*
(:func:`align_classes`): the validation split's labels are mapped to the training split's
numbering, so a validation split holding a subset of the classes scores right, and one holding a
class the training split lacks is refused.

Shuffling is seeded by (seed, epoch, worker): shards are read in a per-epoch permutation,
``open_shards`` of them interleaved at random, through a buffer of ``shuffle_buffer`` raw samples
(class-sorted shards, as ``jepa shards`` writes from class folders, still mix well). A folder is
shuffled exactly (a permutation of its files).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from jepa.data import SHARD_ERRORS, SkippedFile, collate_as_is, derive_seed, expand_shards, read_manifest, read_shard
from jepa.errors import ConfigError, DataError
from jepa.eval.labels import MAX_CLASSES, label_of, labelled_batches
from jepa.interfaces import Modality

__all__ = ["AUGMENTS", "MAX_CLASSES", "LabelIndex", "LabelledData", "PassSpec", "ShardData", "align_classes",
           "label_of", "labelled_batches"]


# --------------------------------------------------------------------------- splits read in passes

AUGMENTS: tuple[str, ...] = ("none", "crop", "flip", "crop+flip")
"""Training-pass views: ``none`` is the evaluation view (``Modality.eval_batch``); ``crop`` the
modality's training view (``Modality.train_batch``: for images a random resized crop with the
recipe's ``input.crop_scale``); ``flip`` the modality's evaluation augmentation of the batch
(``Modality.eval_augment``: images and videos mirror the width of a random half of the samples)."""


@dataclass
class LabelIndex:
    """What a scan found: one entry per readable sample, in reading order.

    Attributes:
        labels_N: (N,) int64 labels.
        classes: class names (folder names or the shard manifest's), or None when unknown.
        skipped: files left out because they do not decode (folders; shards are checked when written).
    """

    labels_N: Tensor
    classes: list[str] | None = None
    skipped: list[SkippedFile] = field(default_factory=list)

    @property
    def num_samples(self) -> int:
        return int(self.labels_N.shape[0])

    @property
    def num_classes(self) -> int:
        found = int(self.labels_N.max().item()) + 1 if self.num_samples else 0
        return max(found, len(self.classes or ()))


@dataclass(frozen=True)
class PassSpec:
    """How one pass reads a split.

    Attributes:
        batch_size: samples per batch (each loader worker's last batch may be smaller).
        keep_N: (N,) bool, read only these samples (others are not even decoded); None: all.
        shuffle_seed: None reads in file order; else shuffled by (seed, epoch, worker).
        epoch: mixed into the shuffling and augmentation seeds.
        augment: one of :data:`AUGMENTS`.
        shuffle_buffer: raw samples held for shuffling shards (per loader worker).
        open_shards: shards read at once, interleaved at random, when shuffling.
    """

    batch_size: int
    keep_N: Tensor | None = None
    shuffle_seed: int | None = None
    epoch: int = 0
    augment: str = "none"
    shuffle_buffer: int = 1000
    open_shards: int = 8

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.augment not in AUGMENTS:
            raise ConfigError(f"--augment {self.augment!r}: choose from {', '.join(AUGMENTS)}")


class _PassDataset(IterableDataset):
    """One pass: raw samples of this worker -> decode (failures skipped, counted) -> view -> batches.

    Yields ``(inputs, labels_B, idx_B, skipped)``: ``skipped`` counts the samples of this worker
    that did not decode since its previous batch (a batch with no rows carries the final count).
    """

    def __init__(self, modality: Modality, spec: PassSpec, labels_N: Tensor):
        self.modality, self.spec, self.labels_N = modality, spec, labels_N
        self.keep = None if spec.keep_N is None else spec.keep_N.numpy()

    def _samples(self, worker: int, num_workers: int, rng: random.Random | None) -> Iterator[tuple[int, dict | None]]:
        """``(index in the scan, raw sample or None when unreadable)`` for this worker."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor, int]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        spec = self.spec
        rng = None if spec.shuffle_seed is None else random.Random(derive_seed(spec.shuffle_seed, spec.epoch, worker))
        gen = torch.Generator().manual_seed(derive_seed(spec.shuffle_seed or 0, spec.epoch, worker, 1))
        items: list[Any] = []
        idxs: list[int] = []
        skipped = 0
        for idx, sample in self._samples(worker, num_workers, rng):
            if sample is None or "__error__" in sample:
                skipped += 1
                continue
            try:
                items.append(self.modality.decode(sample))
            except ValueError:
                skipped += 1
                continue
            idxs.append(idx)
            if len(items) == spec.batch_size:
                yield self._batch(items, idxs, gen) + (skipped,)
                items, idxs, skipped = [], [], 0
        if items:
            yield self._batch(items, idxs, gen) + (skipped,)
        elif skipped:
            yield torch.empty(0), torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64), skipped

    def _batch(self, items: list[Any], idxs: list[int], gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        augment = self.spec.augment
        x = self.modality.finish_batch(self.modality.train_batch(items, gen)) if "crop" in augment \
            else self.modality.eval_batch(items)
        if "flip" in augment:
            x = self.modality.eval_augment(x, gen)
        idx_B = torch.tensor(idxs, dtype=torch.int64)
        return x, self.labels_N[idx_B], idx_B


class LabelledData(ABC):
    """A labelled split read in passes (see the module docstring). Call :meth:`scan` first.

    Attributes:
        spec: what the user passed (for messages and the report).
        modality: decodes samples and builds the views.
        index: the scan's result (None before :meth:`scan`).
        skipped_last_pass: samples of the latest finished pass that did not decode.
    """

    kind = "?"

    def __init__(self, spec: str, modality: Modality):
        self.spec, self.modality = spec, modality
        self.index: LabelIndex | None = None
        self.skipped_last_pass = 0

    @abstractmethod
    def scan(self, num_workers: int = 0) -> LabelIndex:
        """Read every sample's label (see the module docstring); sets and returns :attr:`index`."""

    @abstractmethod
    def _dataset(self, spec: PassSpec) -> _PassDataset: ...

    @abstractmethod
    def _max_workers(self) -> int: ...

    def passes(self, spec: PassSpec, num_workers: int = 0) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """One pass: ``(inputs, labels_B, idx_B)`` batches; undecodable samples are counted in
        :attr:`skipped_last_pass` once the pass is complete.

        Args:
            spec: which samples, in which order and view.
            num_workers: loader processes (0: read in this process).
        """
        assert self.index is not None, "scan() first"
        dataset = self._dataset(spec)
        workers = min(num_workers, self._max_workers())
        batches = iter(dataset) if workers == 0 else iter(DataLoader(
            dataset, batch_size=None, num_workers=workers, collate_fn=collate_as_is))
        skipped = 0
        for x, y, idx, s in batches:
            skipped += s
            if idx.numel():
                yield x, y, idx
        self.skipped_last_pass = skipped

    def first_inputs(self, count: int = 2) -> Tensor:
        """Evaluation-view inputs of the first ``count`` readable samples (shapes and memory checks)."""
        assert self.index is not None, "scan() first"
        for x, _, _ in self.passes(PassSpec(batch_size=count)):
            return x
        raise DataError(f"{self.spec}: no sample decodes; check the data")


def align_classes(train: LabelledData, val: LabelledData) -> None:
    """Number the validation split's labels by the training split's class names (both scanned).

    Each split numbers its own class names (sorted folder names, a manifest's list), so a validation
    split lacking one class numbers the others differently, and scoring its numbers against a probe
    trained on the training split's would be silently wrong. When both splits name their classes,
    the validation labels are mapped to the training split's numbering (``val.index`` is replaced);
    when either does not, the numbers are taken as they are (nothing to compare).

    Raises:
        ValueError: a validation sample's class is not among the training split's (no probe trained
            there can predict it), or a split names a class twice.
    """
    t, v = train.index, val.index
    assert t is not None and v is not None, "scan() both splits first"
    if t.classes is None or v.classes is None or t.classes == v.classes:
        return
    for split, names in ((train, t.classes), (val, v.classes)):
        twice = sorted({c for c in names if names.count(c) > 1})
        if twice:
            raise DataError(f"{split.spec}: class {twice[0]!r} is named twice in its class list; rewrite the "
                             "manifest (or the shards with `jepa shards`) so every class has one name")
    position = {name: i for i, name in enumerate(t.classes)}
    used = torch.bincount(v.labels_N, minlength=len(v.classes))[:len(v.classes)] > 0
    unknown = [c for c, u in zip(v.classes, used.tolist()) if u and c not in position]
    if unknown:
        shown = ", ".join(map(repr, unknown[:5])) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise DataError(f"{val.spec}: class{'es' if len(unknown) > 1 else ''} {shown} not among the "
                         f"{len(t.classes)} classes of {train.spec}, so no probe trained there can predict "
                         f"{'them' if len(unknown) > 1 else 'it'}; evaluate on a split whose classes (folder or "
                         "manifest names) are the training split's or some of them")
    mapping = torch.tensor([position.get(c, -1) for c in v.classes], dtype=torch.int64)
    val.index = LabelIndex(mapping[v.labels_N], list(t.classes), v.skipped)

class ShardData(LabelledData):
    """Labelled WebDataset shards (``cls`` key): a shard spec, a shard folder or a pattern."""

    kind = "shards"

    def __init__(self, spec: str, modality: Modality):
        super().__init__(spec, modality)
        self.urls = expand_shards(spec)
        self.offsets: list[int] = []

    def _max_workers(self) -> int:
        return len(self.urls)

    def scan(self, num_workers: int = 0) -> LabelIndex:
        """Every sample's label (:func:`label_of`, below the manifest's class count when it names the classes).

        Raises:
            ValueError: an unreadable shard, or a sample without a valid label (one line naming it).
        """
        try:
            manifest = read_manifest(self.spec)
        except ValueError:
            manifest = None
        classes = manifest.classes if manifest is not None and manifest.classes else None
        found: dict[int, Tensor] = {}
        dataset = _ScanShards(self.urls, None if classes is None else len(classes))
        workers = min(num_workers, len(self.urls))
        for u, labels, problem in (dataset if workers == 0 else DataLoader(
                dataset, batch_size=None, num_workers=workers, collate_fn=collate_as_is)):
            if problem is not None:  # raised here, not in a loader worker: one line, not a worker's traceback
                raise DataError(problem)
            found[u] = labels
        counts = [found[u].numel() for u in range(len(self.urls))]
        self.offsets = [sum(counts[:u]) for u in range(len(self.urls))]
        labels_N = torch.cat([found[u] for u in range(len(self.urls))])
        if labels_N.numel() == 0:
            raise DataError(f"{self.spec}: the shards hold no samples; check the shard pattern")
        self.index = LabelIndex(labels_N, classes)
        return self.index

    def _dataset(self, spec: PassSpec) -> _PassDataset:
        assert self.index is not None
        return _ShardPass(self.modality, spec, self.index.labels_N, self.urls, self.offsets)


class _ScanShards(IterableDataset):
    """``(shard number, (n,) int64 labels, None)`` for every shard of this worker, or ``(shard number,
    None, why)`` for a shard with a bad label; images are not decoded."""

    def __init__(self, urls: list[str], num_classes: int | None = None):
        self.urls, self.num_classes = urls, num_classes

    def __iter__(self) -> Iterator[tuple[int, Tensor | None, str | None]]:
        info = get_worker_info()
        mine = range(len(self.urls))[info.id::info.num_workers] if info is not None else range(len(self.urls))
        for u in mine:
            try:
                labels = [label_of(sample, self.num_classes) for sample in read_shard(self.urls[u])]
            except SHARD_ERRORS as exc:
                raise DataError(f"evaluation shard {self.urls[u]} is unreadable ({type(exc).__name__}: {exc}); "
                                 "evaluation reads every sample: rewrite the shard") from exc
            except ValueError as exc:
                yield u, None, str(exc)
                return
            yield u, torch.tensor(labels, dtype=torch.int64), None


class _ShardPass(_PassDataset):
    def __init__(self, modality: Modality, spec: PassSpec, labels_N: Tensor, urls: list[str], offsets: list[int]):
        super().__init__(modality, spec, labels_N)
        self.urls, self.offsets = urls, offsets

    def _shard(self, u: int) -> Iterator[tuple[int, dict]]:
        try:
            for pos, sample in enumerate(read_shard(self.urls[u])):
                idx = self.offsets[u] + pos
                if self.keep is None or self.keep[idx]:
                    yield idx, sample
        except SHARD_ERRORS as exc:
            raise RuntimeError(f"evaluation shard {self.urls[u]} became unreadable ({type(exc).__name__}: {exc}); "
                               "evaluation reads every sample: check the storage or rewrite the shard") from exc

    def _samples(self, worker: int, num_workers: int, rng: random.Random | None) -> Iterator[tuple[int, dict | None]]:
        order = list(range(len(self.urls)))
        if rng is not None:
            rng.shuffle(order)
        mine = order[worker::num_workers]
        if rng is None:
            for u in mine:
                yield from self._shard(u)
            return
        pending = [self._shard(u) for u in mine]
        active = [pending.pop(0) for _ in range(min(self.spec.open_shards, len(pending)))]
        size = max(1, self.spec.shuffle_buffer)
        buffer: list[tuple[int, dict]] = []
        while active:
            j = rng.randrange(len(active))
            try:
                item = next(active[j])
            except StopIteration:
                if pending:
                    active[j] = pending.pop(0)
                else:
                    active.pop(j)
                continue
            if len(buffer) < size:
                buffer.append(item)
                continue
            k = rng.randrange(size)
            yield buffer[k]
            buffer[k] = item
        rng.shuffle(buffer)
        yield from buffer
