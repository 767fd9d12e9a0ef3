"""Labelled evaluation inputs: labelled shards or a folder of class sub-folders, read in passes.

Two readers live here:

* :func:`labelled_batches`: one deterministic pass over labelled shards, in the modality's
  evaluation view, every sample once (no shuffling); samples that do not decode or carry a bad
  label are skipped and counted (the online k-NN of pretraining uses it: no sample may stop a run).
* :class:`LabelledData` (:class:`ShardData`, :class:`FolderData`, made by :func:`open_labelled`):
  what ``jepa eval`` reads. A split is first *scanned* (labels of every sample, no decoding of
  shards; a folder's files are listed and each is checked to decode in a child process, as
  ``jepa shards`` does, so corrupt files are skipped and counted before anything is trained).
  Then any number of *passes* read a chosen subset of the samples (``keep_N``: the held-out part,
  the training part, a low-shot subset), in file order or shuffled per epoch, in the evaluation
  view or augmented. Every batch carries the samples' positions in the scan (``idx_B``), so a
  pass can fill a feature cache row by row. Samples that fail to decode during a pass are
  skipped and counted, never fatal.

Labels are data, not trusted (:func:`label_of`): a ``cls`` value must be a class number in ASCII
digits, ``0 <= label < C`` with ``C`` the number of class names of the split's manifest, or
:data:`MAX_CLASSES` when no manifest names them; nothing is ever sized by a label's value before
it is checked. A scan refuses a split holding a bad label (one line naming the sample and its shard:
evaluating on a split with a corrupt label would score the wrong thing); the online k-NN skips it.
The splits of an evaluation are numbered by class *name* (:func:`align_classes`): the validation
split's labels are mapped to the training split's numbering, so a validation split holding a
subset of the classes scores right, and one holding a class the training split lacks is refused.

Shuffling is seeded by (seed, epoch, worker): shards are read in a per-epoch permutation,
``open_shards`` of them interleaved at random, through a buffer of ``shuffle_buffer`` raw samples
(class-sorted shards, as ``jepa shards`` writes from class folders, still mix well). A folder is
shuffled exactly (a permutation of its files).
"""

from __future__ import annotations

import os
import random
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from jepa.data import SHARD_ERRORS, SkippedFile, collate_as_is, expand_shards, read_shard
from jepa.interfaces import Modality


class _LabelledBatches(IterableDataset):
    """Shards ``worker::num_workers`` read in order, decoded, evaluation view, ``(inputs, labels, skipped)``:
    ``skipped`` holds why each sample left out since the previous batch was (a batch of no rows
    carries the last ones)."""

    def __init__(self, urls: list[str], modality: Modality, batch_size: int, num_classes: int | None):
        self.urls, self.modality, self.batch_size, self.num_classes = urls, modality, batch_size, num_classes

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, list[str]]]:
        info = get_worker_info()
        urls = self.urls[info.id::info.num_workers] if info is not None else self.urls
        items: list[Any] = []
        labels: list[int] = []
        skipped: list[str] = []
        for url in urls:
            try:
                for sample in read_shard(url):
                    if "cls" not in sample:  # unlabelled shards: the set is wrong, not one sample
                        label_of(sample)
                    try:
                        label = label_of(sample, self.num_classes)
                        items.append(self.modality.decode(sample))
                    except ValueError as exc:
                        skipped.append(str(exc))
                        continue
                    labels.append(label)
                    if len(items) == self.batch_size:
                        yield self.modality.eval_batch(items), torch.tensor(labels, dtype=torch.int64), skipped
                        items, labels, skipped = [], [], []
            except SHARD_ERRORS as exc:
                raise RuntimeError(f"evaluation shard {url} is unreadable ({type(exc).__name__}: {exc}); "
                                   "evaluation needs every sample: rewrite the shard") from exc
        if items:
            yield self.modality.eval_batch(items), torch.tensor(labels, dtype=torch.int64), skipped
        elif skipped:
            yield torch.empty(0), torch.empty(0, dtype=torch.int64), skipped


MAX_CLASSES = 1 << 20
"""Most classes (1,048,576) a split may have when no class names bound it: without a manifest the
class count is the largest label + 1, and it sizes the label counts, the probes' heads and the k-NN
votes, so one corrupt label (``cls`` = 10**12) would otherwise ask for terabytes. Far above any
labelled set in use (ImageNet-21k: 21,841 classes); ``jepa eval``'s memory plan covers what a
class count up to it costs."""

_LABEL_TEXT = re.compile(rb"[+-]?[0-9]{1,30}")


def label_of(sample: dict[str, Any], num_classes: int | None = None) -> int:
    """The class number a labelled shard sample carries (its ``cls`` key), checked.

    Args:
        sample: a raw shard sample.
        num_classes: the split's class count (its manifest's class names); None: :data:`MAX_CLASSES`.

    Raises:
        ValueError: no ``cls`` key, a value that is not a class number in ASCII digits, or one
            outside ``0 .. num_classes - 1``; the message names the sample and its shard.
    """
    where = f"sample {sample.get('__key__')!r} of {sample.get('__url__')}"
    if "cls" not in sample:
        raise ValueError(f"shards have no labels (no 'cls' key in {where}); write labelled shards with "
                         "`jepa shards` from a folder of class sub-folders")
    raw = sample["cls"]
    text = bytes(raw).strip() if isinstance(raw, (bytes, bytearray, memoryview)) else None
    if text is None or not _LABEL_TEXT.fullmatch(text):
        shown = repr(bytes(raw)[:20]) if text is not None else type(raw).__name__
        raise ValueError(f"{where}: 'cls' is {shown}, not a class number (ASCII digits); rewrite the shard with "
                         "`jepa shards`")
    label, bound = int(text), MAX_CLASSES if num_classes is None else num_classes
    if not 0 <= label < bound:
        named = f"its manifest names {num_classes} classes" if num_classes is not None else \
            f"without a manifest naming the classes at most {MAX_CLASSES:,} are allowed"
        raise ValueError(f"{where}: label {label} is outside 0..{bound - 1} ({named}); rewrite the shard with "
                         "`jepa shards`")
    return label


def labelled_batches(shards: str, modality: Modality, batch_size: int, num_workers: int = 0, *,
                     num_classes: int | None = None,
                     skipped: list[str] | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """One pass over labelled shards, in a deterministic order, no shuffling, every readable sample once.

    Args:
        shards: shard spec (see :func:`expand_shards`).
        modality: provides ``decode`` and ``eval_batch``.
        batch_size: rows per batch (each worker's last batch may be smaller).
        num_workers: loader processes (shards are dealt out round-robin).
        num_classes: labels must be below it (:func:`label_of`; None: :data:`MAX_CLASSES`).
        skipped: when given, why each sample that was left out was (it does not decode, or its
            label is bad) is appended to it as the pass goes.

    Yields:
        ``(inputs, labels)``: (B, ...) from ``eval_batch`` and (B,) int64 from the ``cls`` key.

    Raises:
        ValueError: shards have no labels, or the spec is bad.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    dataset = _LabelledBatches(expand_shards(shards), modality, batch_size, num_classes)
    batches = iter(dataset) if num_workers == 0 else iter(DataLoader(
        dataset, batch_size=None, num_workers=min(num_workers, len(dataset.urls)), collate_fn=collate_as_is))
    for x, y, left_out in batches:
        if skipped is not None:
            skipped.extend(left_out)
        if y.numel():
            yield x, y


# --------------------------------------------------------------------------- splits read in passes

AUGMENTS: tuple[str, ...] = ("none", "crop", "flip", "crop+flip")
"""Training-pass views: ``none`` is the evaluation view (``Modality.eval_batch``); ``crop`` the
modality's training view (``Modality.train_batch``: for images a random resized crop with the
recipe's ``input.crop_scale``); ``flip`` mirrors the last input axis (image / frame width) of a
random half of the batch."""


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
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.augment not in AUGMENTS:
            raise ValueError(f"--augment {self.augment!r}: choose from {', '.join(AUGMENTS)}")


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
        from jepa.data import derive_seed

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
            flip = torch.rand(x.shape[0], generator=gen) < 0.5
            x[flip] = x[flip].flip(-1)
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
        raise ValueError(f"{self.spec}: no sample decodes; check the data")


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
            raise ValueError(f"{split.spec}: class {twice[0]!r} is named twice in its class list; rewrite the "
                             "manifest (or the shards with `jepa shards`) so every class has one name")
    position = {name: i for i, name in enumerate(t.classes)}
    used = torch.bincount(v.labels_N, minlength=len(v.classes))[:len(v.classes)] > 0
    unknown = [c for c, u in zip(v.classes, used.tolist()) if u and c not in position]
    if unknown:
        shown = ", ".join(map(repr, unknown[:5])) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ValueError(f"{val.spec}: class{'es' if len(unknown) > 1 else ''} {shown} not among the "
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
        from jepa.data import read_manifest

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
                raise ValueError(problem)
            found[u] = labels
        counts = [found[u].numel() for u in range(len(self.urls))]
        self.offsets = [sum(counts[:u]) for u in range(len(self.urls))]
        labels_N = torch.cat([found[u] for u in range(len(self.urls))])
        if labels_N.numel() == 0:
            raise ValueError(f"{self.spec}: the shards hold no samples; check the shard pattern")
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
                raise ValueError(f"evaluation shard {self.urls[u]} is unreadable ({type(exc).__name__}: {exc}); "
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


class FolderData(LabelledData):
    """A folder of class sub-folders (label = index of the sorted class names), read directly.

    The scan lists the modality's files (:func:`jepa.data.list_folder`) and checks that each one
    decodes, in a child process (:class:`jepa.data.screening.DecodeScreen`), so a file that
    crashes or hangs the decoder is skipped like one that raises; skipped files are counted and
    reported, and never read again.
    """

    kind = "folder"

    def __init__(self, spec: str, modality: Modality):
        super().__init__(spec, modality)
        self.root = Path(spec)
        self.files: list[str] = []
        self.exts: list[str] = []
        self.keys: list[str] = []

    def _max_workers(self) -> int:
        return max(1, len(self.files))

    def scan(self, num_workers: int = 0) -> LabelIndex:
        from jepa.data import list_folder, sample_keys

        listing = list_folder(self.root, self.modality.file_suffixes(), self.modality.name)
        if listing.labels is None:
            raise ValueError(f"{self.root} holds files but no class sub-folders, so it has no labels; evaluation "
                             "needs a folder of class sub-folders (one per class) holding the files")
        files = [str(f) for f in listing.files]
        keys = sample_keys(listing.files)
        problems = _screen_files(self.modality, self.root, files, listing.exts, keys, num_workers)
        ok = [i for i, p in enumerate(problems) if p is None]
        skipped = [SkippedFile(files[i], p) for i, p in enumerate(problems) if p is not None]
        if not ok:
            raise ValueError(f"{self.root}: none of its {len(files)} files decodes (first: {skipped[0].path}: "
                             f"{skipped[0].error})")
        self.files = [files[i] for i in ok]
        self.exts = [listing.exts[i] for i in ok]
        self.keys = [keys[i] for i in ok]
        labels = torch.tensor([listing.labels[i] for i in ok], dtype=torch.int64)
        self.index = LabelIndex(labels, listing.classes, skipped)
        return self.index

    def _dataset(self, spec: PassSpec) -> _PassDataset:
        assert self.index is not None
        return _FolderPass(self.modality, spec, self.index.labels_N, self.root, self.files, self.exts, self.keys)


SCREEN_CHUNK = 256
"""Files per screening job (one child decoder process per job)."""


def _screen_chunk(modality: Modality, root: str, files: Sequence[str], exts: Sequence[str],
                  keys: Sequence[str]) -> list[str | None]:
    """None for each file that decodes, else why not (read error, decoder error, crash or hang)."""
    from jepa.data.screening import DecodeScreen

    problems: list[str | None] = []
    with DecodeScreen(modality) as screen:
        for rel, ext, key in zip(files, exts, keys):
            try:
                data = Path(root, rel).read_bytes()
            except OSError as exc:
                problems.append(f"{type(exc).__name__}: {exc.strerror or exc}")
                continue
            problems.append(screen.check({"__key__": key, "__url__": str(Path(root, rel)), ext: data}))
    return problems


def _one_thread() -> None:
    """Screening processes use one intra-op thread each: the processes are the parallelism."""
    torch.set_num_threads(1)


def _screen_files(modality: Modality, root: Path, files: list[str], exts: list[str], keys: list[str],
                  num_workers: int) -> list[str | None]:
    """:func:`_screen_chunk` over every file, in ``num_workers`` processes (at least one child decoder)."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from jepa.eval.features import progress_bar

    chunks = [range(s, min(s + SCREEN_CHUNK, len(files))) for s in range(0, len(files), SCREEN_CHUNK)]
    out: list[list[str | None]] = [[] for _ in chunks]
    with progress_bar() as progress:
        task = progress.add_task(f"checking {root.name}/ decodes", total=len(files))

        def args(c: range) -> tuple:
            return (modality, str(root), files[c.start:c.stop], exts[c.start:c.stop], keys[c.start:c.stop])

        if num_workers <= 1 or len(chunks) == 1:
            for i, c in enumerate(chunks):
                out[i] = _screen_chunk(*args(c))
                progress.advance(task, len(c))
        else:
            with ProcessPoolExecutor(max_workers=min(num_workers, len(chunks)), initializer=_one_thread) as pool:
                futures = {pool.submit(_screen_chunk, *args(c)): i for i, c in enumerate(chunks)}
                for fut in as_completed(futures):
                    i = futures[fut]
                    out[i] = fut.result()
                    progress.advance(task, len(chunks[i]))
    return [p for chunk in out for p in chunk]


class _FolderPass(_PassDataset):
    def __init__(self, modality: Modality, spec: PassSpec, labels_N: Tensor, root: Path, files: list[str],
                 exts: list[str], keys: list[str]):
        super().__init__(modality, spec, labels_N)
        self.root, self.files, self.exts, self.keys = root, files, exts, keys

    def _samples(self, worker: int, num_workers: int, rng: random.Random | None) -> Iterator[tuple[int, dict | None]]:
        order = list(range(len(self.files))) if self.keep is None else self.keep.nonzero()[0].tolist()
        if rng is not None:
            rng.shuffle(order)
        for idx in order[worker::num_workers]:
            path = os.path.join(self.root, self.files[idx])
            try:
                data = Path(path).read_bytes()
            except OSError:
                yield idx, None
                continue
            yield idx, {"__key__": self.keys[idx], "__url__": path, self.exts[idx]: data}


def open_labelled(spec: str, modality: Modality) -> LabelledData:
    """The reader for what ``--train-data`` / ``--val-data`` name: a folder of class sub-folders
    (:class:`FolderData`), or labelled shards (:class:`ShardData`: a shard folder, a brace
    pattern, URLs, several joined with ``'::'``).

    Raises:
        ValueError: the path does not exist, or a folder holds neither shards nor class folders.
    """
    from jepa.data import MANIFEST_NAME, is_local

    path = Path(spec)
    if "::" not in spec and is_local(spec) and path.is_dir():
        entries = [p for p in path.iterdir() if not p.name.startswith(".")]
        if (path / MANIFEST_NAME).is_file() or any(p.is_file() and p.name.endswith(".tar") for p in entries):
            return ShardData(spec, modality)
        suffixes = tuple(modality.file_suffixes()) if modality is not None else ()
        if any(p.is_dir() or p.name.lower().endswith(suffixes) for p in entries):
            return FolderData(spec, modality)
        raise ValueError(f"{spec}: a folder with neither shards (*.tar, {MANIFEST_NAME}) nor class sub-folders; "
                         "pass labelled shards (`jepa shards` writes them) or a folder of class sub-folders")
    return ShardData(spec, modality)
