"""The WebDataset training loader of one rank: per-worker decoding and batching over
:class:`~jepa.data.stream.WorkerStream`, and the position of every worker.

In each loader worker, after the shuffle buffer (:mod:`jepa.data.stream`), each sample is
decoded (``modality.decode``); a ``ValueError`` skips it and is counted. Every
``micro_batch_size`` decoded items make a batch (the objective's
:class:`~jepa.objective.BatchMaker`): one ``torch.Generator`` seeded by (seed, rank, w, batch index)
drives the augmentation (``modality.train_batch`` or ``train_views``) and the mask sampler, whose
per-step draws (image block sizes) come from the step's shared generator: the rank's micro batch number is
``batch index x num_workers + w`` (the DataLoader takes batches round-robin), its step that number
over the accumulation steps (:func:`~jepa.data.loader.sample_masks`).

So a worker's batches are a pure function of its *position* (the stream's, plus batches made
and cumulative counts). Each batch carries its worker's position; :class:`ShardTrainLoader`
keeps the last one handed out per worker plus whose turn is next (torch's DataLoader takes
batches from its workers round-robin), and a loader built from that state rotates the logical
worker ids so that the first batch comes from the right worker. With the stream's replay of its
shuffle buffer, a resumed loader yields bitwise the batches the uninterrupted run would have.
A state written by another number of ranks or workers is first re-dealt (:mod:`jepa.data.redeal`):
the state then also holds the shard-epoch the new layout starts at (``from_epoch``) and each
worker's carry-over pieces.

A broken shard is warned about once with its URL; skipped samples are warned about at 1, 2, 4,
... skips, and a skip rate above ``data.max_skip_rate`` stops training (:class:`DataStreamError`).
Loader workers ignore SIGTERM until the loader is closed (:func:`jepa.preemption.ignore_sigterm_until`):
the main process saves a checkpoint first, then :meth:`ShardTrainLoader.close` lets them stop.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import multiprocessing
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from jepa.data.loader import (STATE_VERSION, Batch, TrainLoader, accumulation_steps, collate_as_is,
                              step_generator)
from jepa.data.manifest import shards_total
from jepa.data.pieces import Piece
from jepa.data.stream import WorkerStream, derive_seed, initial_position
from jepa.errors import CheckpointError, DataError
from jepa.interfaces import Modality
from jepa.objective import BatchMaker
from jepa.preemption import ignore_sigterm_until
from jepa.recipe import DataConfig
from jepa.run_stopped import DataStreamError
from jepa.text import printable

log = logging.getLogger(__name__)


class _ShardBatches(IterableDataset):
    """The per-worker pipeline: raw stream -> decode -> batch -> augment + masks (or views). Yields
    ``(Batch, report)`` where the report carries the worker's position and new problems."""

    def __init__(self, urls: list[str], data_cfg: DataConfig, modality: Modality,
                 batch_maker: BatchMaker, *, seed: int, rank: int, world_size: int, batch_size: int,
                 positions: list[dict[str, Any]], rotation: int, from_epoch: int, carry: list[list[Piece]]):
        self.urls, self.data_cfg, self.modality = urls, data_cfg, modality
        self.batch_maker, self.seed, self.rank, self.world_size = batch_maker, seed, rank, world_size
        self.batch_size, self.positions, self.rotation = batch_size, positions, rotation
        self.from_epoch, self.carry = from_epoch, carry
        self.num_logical = max(1, data_cfg.num_workers)
        self.stop = multiprocessing.get_context("fork").Event()  # set when the workers are to shut down

    def __iter__(self) -> Iterator[tuple[Batch, dict[str, Any]]]:
        info = get_worker_info()
        worker = ((info.id if info is not None else 0) + self.rotation) % self.num_logical
        pos = self.positions[worker]
        stream = WorkerStream(self.urls, seed=self.seed, rank=self.rank, worker=worker, num_workers=self.num_logical,
                              world_size=self.world_size, buffer_size=self.data_cfg.shuffle_buffer, position=pos,
                              from_epoch=self.from_epoch, carry=self.carry[worker])
        batches, seen, skipped = pos["batches"], pos["seen"], pos["skipped"]
        window_seen = window_skipped = 0
        last_error: str | None = None
        items: list[Any] = []
        for sample in stream:
            seen += 1
            window_seen += 1
            try:
                if "__error__" in sample:
                    raise DataError(sample["__error__"])
                items.append(self.modality.decode(sample))
            except ValueError as exc:
                skipped += 1
                window_skipped += 1
                last_error = printable(f"{sample['__url__']} sample {sample['__key__']!r}: {exc}")
                self._check_window(window_seen, window_skipped, last_error)
                continue
            if len(items) < self.batch_size:
                continue
            gen = torch.Generator().manual_seed(derive_seed(self.seed, self.rank, worker, batches))
            accum = accumulation_steps(self.data_cfg.global_batch_size, self.world_size, self.batch_size)
            batch = self.batch_maker.from_items(
                items, gen, step_generator(self.seed, (batches * self.num_logical + worker) // accum))
            items = []
            batches += 1
            report = {
                "worker": worker,
                "position": {**stream.position(), "batches": batches, "seen": seen, "skipped": skipped},
                "last_error": last_error,
                "broken_shards": stream.take_new_broken(),
            }
            yield batch, report
            window_seen = window_skipped = 0
            last_error = None

    def _check_window(self, seen: int, skipped: int, last_error: str) -> None:
        """A worker that decodes almost nothing never reaches a batch boundary, where the main
        process checks the skip rate; it applies the same rule to the samples since its last batch."""
        d = self.data_cfg
        if seen >= d.min_samples_for_skip_check and skipped / seen > d.max_skip_rate:
            raise DataStreamError(_skip_rate_message(self.rank, seen, skipped, d.max_skip_rate, last_error))


def fingerprint(urls: list[str], data_cfg: DataConfig, *, seed: int, rank: int, world_size: int,
                micro_batch_size: int) -> dict[str, Any]:
    """What a saved shard-loader state must match to be resumed by this loader."""
    return {
        "source": "shards", "seed": seed, "rank": rank, "world_size": world_size,
        "num_workers": data_cfg.num_workers, "micro_batch_size": micro_batch_size,
        "shuffle_buffer": data_cfg.shuffle_buffer, "num_shards": len(urls),
        "shards_digest": hashlib.sha1("\n".join(urls).encode()).hexdigest()[:16],
    }


_HINTS = {"num_workers": "data.num_workers", "micro_batch_size": "the micro-batch size",
          "shuffle_buffer": "data.shuffle_buffer", "num_shards": "data.train_shards",
          "shards_digest": "data.train_shards", "world_size": "the number of processes", "seed": "seed",
          "rank": "the rank (each rank loads its own loader state)", "source": "data.source"}


def check_fingerprint(state: dict[str, Any], expected: dict[str, Any], ignore: tuple[str, ...] = ()) -> None:
    """Raise when a saved loader state does not match ``expected`` (:func:`fingerprint`) in a key not in ``ignore``."""
    if state.get("version") != STATE_VERSION:
        raise CheckpointError(f"data-loader state has version {state.get('version')!r}, this jepa reads version "
                         f"{STATE_VERSION}; resume with the jepa version that wrote the checkpoint")
    for key, value in expected.items():
        if key not in ignore and state.get(key) != value:
            raise CheckpointError(f"cannot resume the data stream exactly: {key} was {state.get(key)!r} when the "
                             f"checkpoint was written, now {value!r}; restore {_HINTS[key]}")


def _init_worker(worker_id: int) -> None:
    info = get_worker_info()
    assert info is not None
    ignore_sigterm_until(info.dataset.stop)


def _skip_rate_message(rank: int, seen: int, skipped: int, max_rate: float, last_error: str | None) -> str:
    return (f"rank {rank}: {skipped} of {seen} samples ({skipped / seen:.2%}) could not be decoded, more than "
            f"data.max_skip_rate={max_rate:g}; last: {last_error}. Rebuild the shards with `jepa shards` (it checks "
            "every sample) or raise data.max_skip_rate")


class ShardTrainLoader(TrainLoader):
    """The WebDataset training stream of one rank (see the module docstring and :mod:`jepa.data.stream`)."""

    def __init__(self, urls: list[str], data_cfg: DataConfig, modality: Modality,
                 batch_maker: BatchMaker, *, seed: int, rank: int, world_size: int, micro_batch_size: int,
                 state: dict[str, Any] | None = None):
        self.urls, self.data_cfg, self.modality = urls, data_cfg, modality
        self.batch_maker, self.seed, self.rank, self.world_size = batch_maker, seed, rank, world_size
        self.micro_batch_size = micro_batch_size
        self.num_logical = max(1, data_cfg.num_workers)
        self._fingerprint = fingerprint(urls, data_cfg, seed=seed, rank=rank, world_size=world_size,
                                        micro_batch_size=micro_batch_size)
        self._positions = [initial_position() for _ in range(self.num_logical)]
        self._next_worker = 0
        self._from_epoch = 0
        self._carry: list[list[Piece]] = [[] for _ in range(self.num_logical)]
        self._warned_urls: set[str] = set()
        self._warned_skips = 0
        self._stops: list[Any] = []
        if state is not None:
            self._load(state)
        total = shards_total(urls)
        if rank == 0 and total is not None and abs(total - data_cfg.samples_per_epoch) > 0.01 * total:
            log.warning("the shards hold %d samples but data.samples_per_epoch is %d (it sets the length of an "
                        "epoch for the schedules); set data.samples_per_epoch=%d if one pass over these shards "
                        "should be an epoch", total, data_cfg.samples_per_epoch, total)
        if len(urls) < world_size * self.num_logical:
            log.warning("rank %d: only %d shards for %d loader workers (world_size x data.num_workers): each worker "
                        "draws shards at random, so ranks overlap; write more, smaller shards (jepa shards --max-count)",
                        rank, len(urls), world_size * self.num_logical)

    def _load(self, state: dict[str, Any]) -> None:
        check_fingerprint(state, self._fingerprint)
        self._positions = [dict(p) for p in state["workers"]]
        self._next_worker = state["next_worker"]
        self._from_epoch = state.get("from_epoch", 0)
        carry = state.get("carry") or [[] for _ in range(self.num_logical)]  # absent in states of jepa before re-dealing
        self._carry = [[Piece.from_state(p) for p in pieces] for pieces in carry]

    def state_dict(self) -> dict[str, Any]:
        carry = [[p.to_state() for p in pieces] if pos["epoch"] < self._from_epoch else []
                 for pieces, pos in zip(self._carry, self._positions)]
        return {"version": STATE_VERSION, **self._fingerprint, "next_worker": self._next_worker,
                "from_epoch": self._from_epoch, "carry": carry,
                "workers": [dict(p, shard_counts=list(p["shard_counts"])) for p in self._positions]}

    @property
    def stats(self) -> dict[str, float]:
        seen = sum(p["seen"] for p in self._positions)
        skipped = sum(p["skipped"] for p in self._positions)
        return {"seen": seen, "skipped": skipped, "skip_rate": skipped / seen if seen else 0.0,
                "broken_shards": sum(p["broken"] for p in self._positions),
                "batches": sum(p["batches"] for p in self._positions)}

    def __iter__(self) -> Iterator[Batch]:
        d = self.data_cfg
        dataset = _ShardBatches(self.urls, d, self.modality, self.batch_maker, seed=self.seed,
                                rank=self.rank, world_size=self.world_size, batch_size=self.micro_batch_size,
                                positions=[dict(p) for p in self._positions], rotation=self._next_worker,
                                from_epoch=self._from_epoch, carry=self._carry)
        extra = {"prefetch_factor": d.prefetch_factor, "persistent_workers": True,
                 "multiprocessing_context": "fork", "worker_init_fn": _init_worker} if d.num_workers else {}
        loader = DataLoader(dataset, batch_size=None, num_workers=d.num_workers, collate_fn=collate_as_is,
                            pin_memory=torch.cuda.is_available(), **extra)
        self._stops.append(dataset.stop)
        atexit.register(dataset.stop.set)  # before multiprocessing's own exit handler stops the workers
        for batch, report in loader:
            worker = report["worker"]
            assert worker == self._next_worker, (worker, self._next_worker)  # DataLoader round-robin order
            self._positions[worker] = report["position"]
            self._next_worker = (worker + 1) % self.num_logical
            self._account(report)
            yield batch

    def close(self) -> None:
        """Let the workers stop (SIGTERM ends them again); they shut down when the iteration is closed."""
        for stop in self._stops:
            stop.set()
            atexit.unregister(stop.set)
        self._stops = []

    def _account(self, report: dict[str, Any]) -> None:
        for url, error in report["broken_shards"]:
            if url not in self._warned_urls:
                self._warned_urls.add(url)
                log.warning("rank %d: shard %s is broken (%s); skipped the rest of it", self.rank, printable(url),
                            printable(error))
        s = self.stats
        if s["skipped"] > self._warned_skips and s["skipped"] >= 2 * self._warned_skips:  # 1, 2, 4, 8, ... skips
            self._warned_skips = s["skipped"]
            log.warning("rank %d: %d of %d samples (%.3f%%) skipped as corrupt; last: %s", self.rank,
                        s["skipped"], s["seen"], 100 * s["skip_rate"], report["last_error"])
        d = self.data_cfg
        if s["seen"] >= d.min_samples_for_skip_check and s["skip_rate"] > d.max_skip_rate:
            raise DataStreamError(_skip_rate_message(self.rank, s["seen"], s["skipped"], d.max_skip_rate, report["last_error"]))
