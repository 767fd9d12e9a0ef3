"""Labels of labelled shards, read as data: :func:`label_of` checks one, :func:`labelled_batches`
reads a whole shard set in one deterministic pass (the online k-NN of pretraining uses it).

Labels are data, not trusted (:func:`label_of`): a ``cls`` value must be a class number in ASCII
digits, ``0 <= label < C`` with ``C`` the number of class names of the split's manifest, or
:data:`MAX_CLASSES` when no manifest names them; nothing is ever sized by a label's value before
it is checked. :func:`labelled_batches` skips and counts a sample that does not decode or carries a
bad label (no sample may stop a run); ``jepa eval``'s scan refuses a split holding a bad label
(:mod:`jepa.eval.reader`).
"""

from __future__ import annotations

import re
from typing import Any, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from jepa.data import SHARD_ERRORS, collate_as_is, expand_shards, read_shard
from jepa.errors import ConfigError, DataError
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
        raise DataError(f"shards have no labels (no 'cls' key in {where}); write labelled shards with "
                         "`jepa shards` from a folder of class sub-folders")
    raw = sample["cls"]
    text = bytes(raw).strip() if isinstance(raw, (bytes, bytearray, memoryview)) else None
    if text is None or not _LABEL_TEXT.fullmatch(text):
        shown = repr(bytes(raw)[:20]) if text is not None else type(raw).__name__
        raise DataError(f"{where}: 'cls' is {shown}, not a class number (ASCII digits); rewrite the shard with "
                         "`jepa shards`")
    label, bound = int(text), MAX_CLASSES if num_classes is None else num_classes
    if not 0 <= label < bound:
        named = f"its manifest names {num_classes} classes" if num_classes is not None else \
            f"without a manifest naming the classes at most {MAX_CLASSES:,} are allowed"
        raise DataError(f"{where}: label {label} is outside 0..{bound - 1} ({named}); rewrite the shard with "
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
        ValueError: shards have no labels, or the shard spec is bad.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1 (got {batch_size})")
    dataset = _LabelledBatches(expand_shards(shards), modality, batch_size, num_classes)
    batches = iter(dataset) if num_workers == 0 else iter(DataLoader(
        dataset, batch_size=None, num_workers=min(num_workers, len(dataset.urls)), collate_fn=collate_as_is))
    for x, y, left_out in batches:
        if skipped is not None:
            skipped.extend(left_out)
        if y.numel():
            yield x, y
