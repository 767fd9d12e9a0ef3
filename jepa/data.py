"""The training stream (WebDataset shards, exactly resumable), the synthetic source and the
labelled evaluation reader.

How the training stream is made, per rank and per *logical* loader worker ``w`` (G = world_size
x num_workers slots, this worker's slot ``rank * num_workers + w``):

1. Shard-epoch ``e``: all shards in a permutation seeded by (seed, e); the worker takes every
   G-th shard starting at its slot. With fewer shards than slots each worker instead draws one
   shard per shard-epoch with its own seeded RNG (ranks then overlap; a warning says so).
2. Raw samples (undecoded tar members grouped by key) pass through a shuffle buffer seeded by
   (seed, rank, w, e), flushed at the end of the shard-epoch; then ``e + 1`` starts (endless).
3. After the buffer each sample is decoded (``modality.decode``); a ``ValueError`` skips it and
   is counted. Every ``micro_batch_size`` decoded items make a batch: one ``torch.Generator``
   seeded by (seed, rank, w, batch index) drives ``modality.train_batch`` and the mask sampler.

So a worker's stream is a pure function of its *position* (shard-epoch, samples consumed and
emitted in it, sizes of the shards finished in it, batches made, cumulative counts). Each batch
carries its worker's position; :class:`ShardTrainLoader` keeps the last one handed out per
worker plus whose turn is next (torch's DataLoader takes batches from its workers round-robin),
and a loader built from that state rotates the logical worker ids so that the first batch comes
from the right worker. Resuming replays the shuffle buffer over sample *indices* (no I/O), then
re-reads only the shards that still hold buffered samples, without decoding them, so a resumed
loader yields bitwise the batches the uninterrupted run would have.

A shard that fails inside the tar reader (truncated, unreadable, failing pipe) ends early: it is
counted, warned about once with its URL, and the stream goes on with the next shard.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import os
import random
import re
import tarfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Iterator

import braceexpand
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext

from jepa.interfaces import MaskSampler, MaskSet, Modality
from jepa.recipe import DataConfig
from jepa.shards import Manifest, read_manifest

__all__ = [
    "Batch", "TrainLoader", "ShardTrainLoader", "SyntheticTrainLoader", "build_train_loader", "labelled_batches",
    "expand_shards", "read_shard", "shards_total", "derive_seed", "read_manifest", "Manifest", "STATE_VERSION",
]

log = logging.getLogger(__name__)

#: Version of :meth:`TrainLoader.state_dict` (stored in checkpoints: public API).
STATE_VERSION = 1
#: Errors of the tar reader / stream that mark a shard as broken (counted, warned, skipped).
SHARD_ERRORS: tuple[type[BaseException], ...] = (tarfile.TarError, OSError, EOFError)
#: Consecutive shard-epochs without a single sample before a worker gives up.
_MAX_EMPTY_EPOCHS = 10


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, identical in every process and Python version."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


# --------------------------------------------------------------------------- batches


@dataclass
class Batch:
    """One micro-batch for the training loop.

    Attributes:
        inputs: (B, ...) from ``modality.train_batch`` (images: (B, 3, S, S) float32).
        masks: context/target indices for the B rows.
    """

    inputs: Tensor
    masks: MaskSet

    def to(self, device: torch.device | str, non_blocking: bool = True) -> "Batch":
        return Batch(self.inputs.to(device, non_blocking=non_blocking), self.masks.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        """Called by the DataLoader's pinning thread when CUDA is available."""
        return Batch(self.inputs.pin_memory(), self.masks.pin_memory())


# --------------------------------------------------------------------------- shard lists and reading


def shards_total(urls: list[str]) -> int | None:
    """Samples in local shards according to their folders' manifests; None when any is unknown."""
    total = 0
    counts: dict[str, dict[str, int] | None] = {}
    for url in urls:
        if not _is_local(url):
            return None
        folder, name = os.path.split(re.sub(r"^file://?", "", url))
        if folder not in counts:
            manifest = read_manifest(folder or ".")
            counts[folder] = manifest.counts() if manifest is not None else None
        known = counts[folder]
        if known is None or name not in known:
            return None
        total += known[name]
    return total


def _is_local(url: str) -> bool:
    return url.startswith("file:") or not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", url)


def expand_shards(spec: str) -> list[str]:
    """Shard URLs of a shard spec: brace patterns, local paths, shard folders (the shards its
    manifest lists), ``http(s)://`` URLs and ``pipe:`` commands, several joined with ``'::'``.

    Raises:
        ValueError: the spec is empty, or local shards do not exist.
    """
    urls: list[str] = []
    for part in spec.split("::"):
        part = part.strip()
        if not part:
            raise ValueError(f"empty shard pattern in {spec!r}; join patterns with '::' and leave none empty")
        if _is_local(part) and os.path.isdir(part):
            urls += _folder_shards(part)
        else:
            urls += braceexpand.braceexpand(part)
    missing = [u for u in urls if _is_local(u) and not os.path.isfile(re.sub(r"^file://?", "", u))]
    if missing:
        raise ValueError(f"{len(missing)} of {len(urls)} shards do not exist (first: {missing[0]}); "
                         "check the shard pattern (brace ranges like shard-{000000..000099}.tar are expanded)")
    return urls


def _folder_shards(folder: str) -> list[str]:
    """The shards of a shard folder: its manifest's, else every ``*.tar`` in name order."""
    manifest = read_manifest(folder)
    names = [s.name for s in manifest.shards] if manifest is not None else sorted(
        f for f in os.listdir(folder) if f.endswith(".tar"))
    if not names:
        raise ValueError(f"shard folder {folder} holds no .tar shards; write some with `jepa shards` or `jepa demo-data`")
    return [os.path.join(folder, n) for n in names]


def _tar_members(fileobj: Any) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the regular files of a tar stream, checking that nothing is cut short.

    Python's stream reader ends quietly on a file cut at a member boundary and returns short
    data for a member cut in the middle; both are raised here as ``tarfile.ReadError``.
    """
    tar = tarfile.open(fileobj=fileobj, mode="r|*")
    for info in tar:
        if not info.isreg() or info.name.startswith("__"):
            continue
        data = tar.extractfile(info).read()
        if len(data) != info.size:
            raise tarfile.ReadError(f"member {info.name} is cut short ({len(data)} of {info.size} bytes)")
        tar.members = []  # stream mode: do not keep every header
        yield info.name, data
    # A complete archive ends with two zero blocks; the reader stopped after the first one.
    if tar.fileobj.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
        raise tarfile.ReadError("the archive is cut short (no end-of-archive marker)")


def read_shard(url: str, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Raw samples of one tar shard, in file order: ``{"__key__", "__url__", ext: bytes, ...}``.

    Members are grouped into samples by key (the file name up to its first dot). A sample with
    two members of the same extension gets an ``__error__`` entry (it is skipped as corrupt).

    Args:
        url: anything ``webdataset.gopen`` opens (path, http(s) URL, ``pipe:`` command).
        limit: stop after this many samples without reading further.

    Raises:
        tarfile.TarError, OSError, EOFError: the shard is broken (see ``SHARD_ERRORS``); the
            samples yielded before are complete.
    """
    if limit is not None and limit <= 0:
        return
    stream = gopen(url, "rb")
    try:
        current: dict[str, Any] | None = None
        done = 0
        for name, data in _tar_members(stream):
            key, ext = base_plus_ext(name)
            if key is None:
                continue
            ext = ext.lower()
            if current is not None and key != current["__key__"]:
                yield current
                done += 1
                if limit is not None and done >= limit:
                    return
                current = None
            if current is None:
                current = {"__key__": key, "__url__": url}
            if ext in current:
                current["__error__"] = f"two members named {key}.{ext}"
            current[ext] = data
        if current is not None:
            yield current
    finally:
        stream.close()


# --------------------------------------------------------------------------- one worker's raw stream


def _initial_position() -> dict[str, Any]:
    return {"epoch": 0, "consumed": 0, "emitted": 0, "shard_counts": [], "batches": 0, "seen": 0, "skipped": 0, "broken": 0}


def _replay_buffer(size: int, rng: random.Random, consumed: int, ended: bool, emitted: int) -> list[int]:
    """Run the shuffle buffer's logic on sample indices only: which samples it holds, in which slots.

    Mirrors :meth:`_WorkerStream._epoch` draw for draw, advancing ``rng`` to the same state.
    """
    buf: list[int] = []
    n = 0
    for idx in range(consumed):
        if len(buf) < size:
            buf.append(idx)
            continue
        buf[rng.randrange(size)] = idx
        n += 1
    if ended:
        while n < emitted and buf:
            j = rng.randrange(len(buf))
            buf[j] = buf[-1]
            buf.pop()
            n += 1
    if n != emitted:
        raise ValueError(f"inconsistent data-loader position: {consumed} samples consumed and {emitted} emitted "
                         f"cannot come from a shuffle buffer of {size}; the state belongs to other data settings")
    return buf


class _WorkerStream:
    """Endless raw samples of one (rank, logical worker), with its exact position."""

    def __init__(self, urls: list[str], *, seed: int, rank: int, worker: int, num_workers: int, world_size: int,
                 buffer_size: int, position: dict[str, Any]):
        self.urls, self.seed, self.rank, self.worker = urls, seed, rank, worker
        self.slot, self.num_slots = rank * num_workers + worker, world_size * num_workers
        self.buffer_size = buffer_size
        self.epoch: int = position["epoch"]
        self.consumed: int = position["consumed"]
        self.emitted: int = position["emitted"]
        self.shard_counts: list[int] = list(position["shard_counts"])
        self.broken: int = position["broken"]
        self.new_broken: list[tuple[str, str]] = []  # (url, error) since the last batch

    def epoch_shards(self, epoch: int) -> list[str]:
        """This worker's shards in shard-epoch ``epoch``, in reading order."""
        n = len(self.urls)
        if n >= self.num_slots:
            order = list(range(n))
            random.Random(derive_seed(self.seed, epoch)).shuffle(order)
            return [self.urls[i] for i in order[self.slot::self.num_slots]]
        rng = random.Random(derive_seed(self.seed, epoch, self.rank, self.worker, 2))
        return [self.urls[rng.randrange(n)]]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        empty = 0
        while True:
            before = self.emitted
            yield from self._epoch()
            empty = empty + 1 if self.emitted == before == 0 else 0
            if empty >= _MAX_EMPTY_EPOCHS:
                raise RuntimeError(f"rank {self.rank} loader worker {self.worker}: {empty} shard-epochs in a row gave no "
                                   f"sample (shards empty or unreadable, e.g. {self.epoch_shards(self.epoch)[0]})")
            self.epoch, self.consumed, self.emitted, self.shard_counts = self.epoch + 1, 0, 0, []

    def _epoch(self) -> Iterator[dict[str, Any]]:
        shards = self.epoch_shards(self.epoch)
        size = self.buffer_size
        rng = random.Random(derive_seed(self.seed, self.rank, self.worker, self.epoch, 1))
        resumed_at = self.consumed
        if resumed_at:
            ended = len(self.shard_counts) == len(shards)
            slots = _replay_buffer(size, rng, resumed_at, ended, self.emitted)
            buf: list[Any] = [None] * len(slots)
            slot_of = {idx: k for k, idx in enumerate(slots)}
        else:
            buf, slot_of = [], {}
        for sample in self._raw(shards, resumed_at, buf, slot_of):
            if len(buf) < size:
                buf.append(sample)
                continue
            j = rng.randrange(size)
            out, buf[j] = buf[j], sample
            self.emitted += 1
            yield out
        while buf:
            j = rng.randrange(len(buf))
            out = buf[j]
            buf[j] = buf[-1]
            buf.pop()
            self.emitted += 1
            yield out

    def _raw(self, shards: list[str], resumed_at: int, buf: list[Any], slot_of: dict[int, int]) -> Iterator[dict[str, Any]]:
        """New raw samples of this shard-epoch; while catching up to ``resumed_at`` it fills the
        buffer slots ``slot_of`` instead, skipping finished shards that hold none of them."""
        known = list(self.shard_counts)
        needed = sorted(slot_of)
        idx = 0
        for k, url in enumerate(shards):
            if k < len(known):  # finished before the checkpoint
                count = known[k]
                first = bisect.bisect_left(needed, idx)
                if first < len(needed) and needed[first] < idx + count:
                    got = 0
                    try:
                        for sample in read_shard(url, limit=count):
                            if idx + got in slot_of:
                                buf[slot_of[idx + got]] = sample
                            got += 1
                    except SHARD_ERRORS as exc:
                        raise RuntimeError(f"cannot resume the data stream exactly: {url} failed after {got} samples "
                                           f"({type(exc).__name__}: {exc}) but gave {count} before the checkpoint") from exc
                    if got != count:
                        raise RuntimeError(f"cannot resume the data stream exactly: {url} now holds {got} samples, "
                                           f"{count} before the checkpoint; the shards changed")
                idx += count
                continue
            count = 0
            try:
                for sample in read_shard(url):
                    if idx < resumed_at:
                        if idx in slot_of:
                            buf[slot_of[idx]] = sample
                    else:
                        self.consumed += 1
                        yield sample
                    idx += 1
                    count += 1
            except SHARD_ERRORS as exc:
                self.broken += 1
                self.new_broken.append((url, f"{type(exc).__name__}: {exc}"))
            if idx < resumed_at:
                raise RuntimeError(f"cannot resume the data stream exactly: {url} ended after {count} samples, "
                                   "fewer than before the checkpoint; the shards changed")
            self.shard_counts.append(count)

    def take_new_broken(self) -> list[tuple[str, str]]:
        out, self.new_broken = self.new_broken, []
        return out

    def position(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": self.consumed, "emitted": self.emitted,
                "shard_counts": list(self.shard_counts), "broken": self.broken}


# --------------------------------------------------------------------------- decoding and batching (in workers)


class _ShardBatches(IterableDataset):
    """The per-worker pipeline: raw stream -> decode -> batch -> augment + masks. Yields
    ``(Batch, report)`` where the report carries the worker's position and new problems."""

    def __init__(self, urls: list[str], data_cfg: DataConfig, modality: Modality,
                 mask_sampler: MaskSampler, *, seed: int, rank: int, world_size: int, batch_size: int,
                 positions: list[dict[str, Any]], rotation: int):
        self.urls, self.data_cfg, self.modality = urls, data_cfg, modality
        self.mask_sampler, self.seed, self.rank, self.world_size = mask_sampler, seed, rank, world_size
        self.batch_size, self.positions, self.rotation = batch_size, positions, rotation
        self.num_logical = max(1, data_cfg.num_workers)

    def __iter__(self) -> Iterator[tuple[Batch, dict[str, Any]]]:
        info = get_worker_info()
        worker = ((info.id if info is not None else 0) + self.rotation) % self.num_logical
        pos = self.positions[worker]
        stream = _WorkerStream(self.urls, seed=self.seed, rank=self.rank, worker=worker, num_workers=self.num_logical,
                               world_size=self.world_size, buffer_size=self.data_cfg.shuffle_buffer, position=pos)
        batches, seen, skipped = pos["batches"], pos["seen"], pos["skipped"]
        window_seen = window_skipped = 0
        last_error: str | None = None
        items: list[Any] = []
        for sample in stream:
            seen += 1
            window_seen += 1
            try:
                if "__error__" in sample:
                    raise ValueError(sample["__error__"])
                items.append(self.modality.decode(sample))
            except ValueError as exc:
                skipped += 1
                window_skipped += 1
                last_error = f"{sample['__url__']} sample {sample['__key__']!r}: {exc}"
                self._check_window(window_seen, window_skipped, last_error)
                continue
            if len(items) < self.batch_size:
                continue
            gen = torch.Generator().manual_seed(derive_seed(self.seed, self.rank, worker, batches))
            inputs = self.modality.train_batch(items, gen)
            masks = self.mask_sampler(len(items), gen)
            items = []
            batches += 1
            report = {
                "worker": worker,
                "position": {**stream.position(), "batches": batches, "seen": seen, "skipped": skipped},
                "last_error": last_error,
                "broken_shards": stream.take_new_broken(),
            }
            yield Batch(inputs, masks), report
            window_seen = window_skipped = 0
            last_error = None

    def _check_window(self, seen: int, skipped: int, last_error: str) -> None:
        """A worker that decodes almost nothing never reaches a batch boundary, where the main
        process checks the skip rate; it applies the same rule to the samples since its last batch."""
        d = self.data_cfg
        if seen >= d.min_samples_for_skip_check and skipped / seen > d.max_skip_rate:
            raise RuntimeError(_skip_rate_message(self.rank, seen, skipped, d.max_skip_rate, last_error))


def _skip_rate_message(rank: int, seen: int, skipped: int, max_rate: float, last_error: str | None) -> str:
    return (f"rank {rank}: {skipped} of {seen} samples ({skipped / seen:.2%}) could not be decoded, more than "
            f"data.max_skip_rate={max_rate:g}; last: {last_error}. Rebuild the shards with `jepa shards` (it checks "
            "every image) or raise data.max_skip_rate")


def _as_is(x: Any) -> Any:
    """Collate function of batch_size=None loaders: items are already batches."""
    return x


# --------------------------------------------------------------------------- the loaders


class TrainLoader(ABC):
    """An endless iterable of :class:`Batch` whose position can be saved and restored."""

    @abstractmethod
    def __iter__(self) -> Iterator[Batch]:
        """Batches from the current position on (a second ``iter`` continues where the first stopped)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """JSON- and torch-serialisable position after the last batch handed out; pass it back as
        ``build_train_loader(..., state=...)`` to continue exactly there."""

    @property
    @abstractmethod
    def stats(self) -> dict[str, float]:
        """Counters: ``seen``, ``skipped``, ``skip_rate``, ``broken_shards``, ``batches``."""


class ShardTrainLoader(TrainLoader):
    """The WebDataset training stream of one rank (see the module docstring)."""

    def __init__(self, urls: list[str], data_cfg: DataConfig, modality: Modality,
                 mask_sampler: MaskSampler, *, seed: int, rank: int, world_size: int, micro_batch_size: int,
                 state: dict[str, Any] | None = None):
        self.urls, self.data_cfg, self.modality = urls, data_cfg, modality
        self.mask_sampler, self.seed, self.rank, self.world_size = mask_sampler, seed, rank, world_size
        self.micro_batch_size = micro_batch_size
        self.num_logical = max(1, data_cfg.num_workers)
        self._fingerprint = {
            "source": "shards", "seed": seed, "rank": rank, "world_size": world_size,
            "num_workers": data_cfg.num_workers, "micro_batch_size": micro_batch_size,
            "shuffle_buffer": data_cfg.shuffle_buffer, "num_shards": len(urls),
            "shards_digest": hashlib.sha1("\n".join(urls).encode()).hexdigest()[:16],
        }
        self._positions = [_initial_position() for _ in range(self.num_logical)]
        self._next_worker = 0
        self._warned_urls: set[str] = set()
        self._warned_skips = 0
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
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data-loader state has version {state.get('version')!r}, this jepa reads version "
                             f"{STATE_VERSION}; resume with the jepa version that wrote the checkpoint")
        hints = {"num_workers": "data.num_workers", "micro_batch_size": "the micro-batch size",
                 "shuffle_buffer": "data.shuffle_buffer", "num_shards": "data.train_shards",
                 "shards_digest": "data.train_shards", "world_size": "the number of processes", "seed": "seed",
                 "rank": "the rank (each rank loads its own loader state)", "source": "data.source"}
        for key, value in self._fingerprint.items():
            if state.get(key) != value:
                raise ValueError(f"cannot resume the data stream exactly: {key} was {state.get(key)!r} when the "
                                 f"checkpoint was written, now {value!r}; restore {hints[key]}")
        self._positions = [dict(p) for p in state["workers"]]
        self._next_worker = state["next_worker"]

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, **self._fingerprint, "next_worker": self._next_worker,
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
        dataset = _ShardBatches(self.urls, d, self.modality, self.mask_sampler, seed=self.seed,
                                rank=self.rank, world_size=self.world_size, batch_size=self.micro_batch_size,
                                positions=[dict(p) for p in self._positions], rotation=self._next_worker)
        extra = {"prefetch_factor": d.prefetch_factor, "persistent_workers": True} if d.num_workers else {}
        loader = DataLoader(dataset, batch_size=None, num_workers=d.num_workers, collate_fn=_as_is,
                            pin_memory=torch.cuda.is_available(), **extra)
        for batch, report in loader:
            worker = report["worker"]
            assert worker == self._next_worker, (worker, self._next_worker)  # DataLoader round-robin order
            self._positions[worker] = report["position"]
            self._next_worker = (worker + 1) % self.num_logical
            self._account(report)
            yield batch

    def _account(self, report: dict[str, Any]) -> None:
        for url, error in report["broken_shards"]:
            if url not in self._warned_urls:
                self._warned_urls.add(url)
                log.warning("rank %d: shard %s is broken (%s); skipped the rest of it", self.rank, url, error)
        s = self.stats
        if s["skipped"] > self._warned_skips and s["skipped"] >= 2 * self._warned_skips:  # 1, 2, 4, 8, ... skips
            self._warned_skips = s["skipped"]
            log.warning("rank %d: %d of %d samples (%.3f%%) skipped as corrupt; last: %s", self.rank,
                        s["skipped"], s["seen"], 100 * s["skip_rate"], report["last_error"])
        d = self.data_cfg
        if s["seen"] >= d.min_samples_for_skip_check and s["skip_rate"] > d.max_skip_rate:
            raise RuntimeError(_skip_rate_message(self.rank, s["seen"], s["skipped"], d.max_skip_rate, report["last_error"]))


class SyntheticTrainLoader(TrainLoader):
    """Random inputs from ``modality.example_input``, a pure function of (seed, micro-step).

    The global micro-batch of step i has ``micro_batch_size * world_size`` rows; its masks are
    sampled for all rows from a generator seeded by (seed, i) and row r's input from one seeded
    by (seed, i, r). Rank k takes rows ``[k*mb, (k+1)*mb)``, so any world size sees the same
    global batch (used to check ZeRO stages against one process) while each rank only builds
    its own rows.
    """

    def __init__(self, modality: Modality, mask_sampler: MaskSampler, *, seed: int, rank: int,
                 world_size: int, micro_batch_size: int, state: dict[str, Any] | None = None):
        self.modality, self.mask_sampler = modality, mask_sampler
        self.seed, self.rank, self.world_size, self.micro_batch_size = seed, rank, world_size, micro_batch_size
        self._step = 0
        if state is not None:
            global_batch = micro_batch_size * world_size
            if state.get("version") != STATE_VERSION or state.get("source") != "synthetic":
                raise ValueError(f"data-loader state {state.get('source')!r} v{state.get('version')!r} is not a "
                                 f"synthetic v{STATE_VERSION} state; resume with the same data.source")
            if state["seed"] != seed or state["global_batch"] != global_batch:
                raise ValueError(f"cannot resume the synthetic stream: seed/global micro-batch were "
                                 f"{state['seed']}/{state['global_batch']}, now {seed}/{global_batch}")
            self._step = state["step"]

    def batch(self, step: int) -> Batch:
        """This rank's rows of global micro-batch ``step``."""
        mb, n = self.micro_batch_size, self.micro_batch_size * self.world_size
        rows = range(self.rank * mb, (self.rank + 1) * mb)
        masks = self.mask_sampler(n, torch.Generator().manual_seed(derive_seed(self.seed, step)))
        inputs = torch.cat([self.modality.example_input(
            1, torch.Generator().manual_seed(derive_seed(self.seed, step, r))) for r in rows])
        return Batch(inputs, masks[rows.start:rows.stop])

    def __iter__(self) -> Iterator[Batch]:
        while True:
            batch = self.batch(self._step)
            self._step += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "source": "synthetic", "seed": self.seed,
                "global_batch": self.micro_batch_size * self.world_size, "step": self._step}

    @property
    def stats(self) -> dict[str, float]:
        return {"seen": self._step * self.micro_batch_size, "skipped": 0, "skip_rate": 0.0, "broken_shards": 0,
                "batches": self._step}


def build_train_loader(data_cfg: DataConfig, modality: Modality, mask_sampler: MaskSampler, *,
                       seed: int, rank: int, world_size: int, micro_batch_size: int,
                       state: dict[str, Any] | None = None) -> TrainLoader:
    """The training stream of one rank.

    Args:
        data_cfg: the recipe's ``data`` section.
        modality: the bound modality; decodes samples and builds batches (``decode``, ``train_batch``, ``example_input``).
        mask_sampler: masks for each batch (runs in the loader workers).
        seed: the run seed.
        rank: this process's rank in ``[0, world_size)``.
        world_size: number of data-parallel processes.
        micro_batch_size: rows per batch on this rank.
        state: a previous loader's ``state_dict()`` to continue from exactly.

    Raises:
        ValueError: bad rank/batch size, missing shards, or a state from other data settings.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}) (got {rank})")
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1 (got {micro_batch_size})")
    if data_cfg.source == "synthetic":
        return SyntheticTrainLoader(modality, mask_sampler, seed=seed, rank=rank, world_size=world_size,
                                    micro_batch_size=micro_batch_size, state=state)
    if not data_cfg.train_shards:
        raise ValueError("data.train_shards is required when data.source is 'shards'")
    return ShardTrainLoader(expand_shards(data_cfg.train_shards), data_cfg, modality, mask_sampler,
                            seed=seed, rank=rank, world_size=world_size, micro_batch_size=micro_batch_size, state=state)


# --------------------------------------------------------------------------- evaluation reader


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
    yield from DataLoader(dataset, batch_size=None, num_workers=min(num_workers, len(dataset.urls)), collate_fn=_as_is)
