"""The labelled evaluation reader: one deterministic pass over labelled shards, in the
modality's evaluation view, every sample once (no shuffling, no skipping)."""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from jepa.data import SHARD_ERRORS, collate_as_is, expand_shards, read_shard
from jepa.interfaces import Modality


class _LabelledBatches(IterableDataset):
    """Shards ``worker::num_workers`` read in order, decoded, evaluation view, ``(inputs, labels)``."""

    def __init__(self, urls: list[str], modality: Modality, batch_size: int):
        self.urls, self.modality, self.batch_size = urls, modality, batch_size

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        info = get_worker_info()
        urls = self.urls[info.id::info.num_workers] if info is not None else self.urls
        items: list[Any] = []
        labels: list[int] = []
        for url in urls:
            try:
                for sample in read_shard(url):
                    labels.append(_label_of(sample))
                    items.append(self.modality.decode(sample))
                    if len(items) == self.batch_size:
                        yield self.modality.eval_batch(items), torch.tensor(labels, dtype=torch.int64)
                        items, labels = [], []
            except SHARD_ERRORS as exc:
                raise RuntimeError(f"evaluation shard {url} is unreadable ({type(exc).__name__}: {exc}); "
                                   "evaluation needs every sample: rewrite the shard") from exc
        if items:
            yield self.modality.eval_batch(items), torch.tensor(labels, dtype=torch.int64)


def _label_of(sample: dict[str, Any]) -> int:
    if "cls" not in sample:
        raise ValueError(f"shards have no labels (no 'cls' key in sample {sample['__key__']!r} of {sample['__url__']}); "
                         "write labelled shards with `jepa shards` from a folder of class sub-folders")
    try:
        return int(bytes(sample["cls"]).decode().strip())
    except ValueError as exc:
        raise ValueError(f"sample {sample['__key__']!r} of {sample['__url__']}: 'cls' is not an integer "
                         f"({bytes(sample['cls'])[:20]!r})") from exc


def labelled_batches(shards: str, modality: Modality, batch_size: int,
                     num_workers: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
    """One pass over labelled shards, in a deterministic order, no shuffling, every sample once.

    Args:
        shards: shard spec (see :func:`expand_shards`).
        modality: provides ``decode`` and ``eval_batch``.
        batch_size: rows per batch (each worker's last batch may be smaller).
        num_workers: loader processes (shards are dealt out round-robin).

    Yields:
        ``(inputs, labels)``: (B, ...) from ``eval_batch`` and (B,) int64 from the ``cls`` key.

    Raises:
        ValueError: shards have no labels, a sample does not decode, or the spec is bad.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    dataset = _LabelledBatches(expand_shards(shards), modality, batch_size)
    if num_workers == 0:
        yield from dataset
        return
    yield from DataLoader(dataset, batch_size=None, num_workers=min(num_workers, len(dataset.urls)), collate_fn=collate_as_is)
