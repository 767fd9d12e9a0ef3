"""One loader worker's endless raw-sample stream over WebDataset shards, exactly resumable.

Per rank and per *logical* loader worker ``w`` (G = world_size x num_workers slots, this
worker's slot ``rank * num_workers + w``):

1. Shard-epoch ``e``: all shards in a permutation seeded by (seed, e); the worker takes every
   G-th shard starting at its slot. With fewer shards than slots each worker instead draws one
   shard per shard-epoch with its own seeded RNG (ranks then overlap; the loader warns).
2. Raw samples (undecoded tar members grouped by key) pass through a shuffle buffer seeded by
   (seed, rank, w, e), flushed at the end of the shard-epoch; then ``e + 1`` starts (endless).

A shard-epoch is a list of :class:`~jepa.data.pieces.Piece` (normally whole shards). After a
resume on another number of ranks or workers (:mod:`jepa.data.redeal`), shard-epochs start at
``from_epoch`` under the new G, and the one before, ``from_epoch - 1``, is the worker's
*carry-over*: the pieces the old workers had not handed out yet (their buffers and unread shards).

So the stream is a pure function of the worker's *position*: shard-epoch, samples consumed and
emitted in it, and the sizes of the pieces finished in it. Resuming replays the shuffle buffer
over sample *indices* (no I/O), then re-reads only the pieces that still hold buffered samples,
without decoding them; :meth:`WorkerStream.unemitted` names what is left of the shard-epoch the
same way. Decoding and batching come after the stream (:mod:`jepa.data.shard_loader`).

A shard that fails inside the tar reader (truncated, unreadable, failing pipe) ends early: it is
counted, reported with its URL (:meth:`WorkerStream.take_new_broken`) and the stream goes on
with the next shard.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import random
from typing import Any, Iterator, Sequence

from jepa.data.pieces import Piece
from jepa.data.reading import SHARD_ERRORS, read_shard
from jepa.errors import CheckpointError, DataError
from jepa.run_stopped import DataStreamError
from jepa.text import printable

#: Consecutive shard-epochs without a single sample before a worker gives up.
_MAX_EMPTY_EPOCHS = 10


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, identical in every process and Python version."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def initial_position() -> dict[str, Any]:
    """A worker's position before its first sample: the stream's fields (:meth:`WorkerStream.position`)
    plus the batching counters (batches made, samples seen and skipped)."""
    return {"epoch": 0, "consumed": 0, "emitted": 0, "shard_counts": [], "batches": 0, "seen": 0, "skipped": 0, "broken": 0}


def _replay_buffer(size: int, rng: random.Random, consumed: int, ended: bool, emitted: int) -> list[int]:
    """Run the shuffle buffer's logic on sample indices only: which samples it holds, in which slots.

    Mirrors :meth:`WorkerStream._epoch` draw for draw, advancing ``rng`` to the same state.
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
        raise CheckpointError(f"inconsistent data-loader position: {consumed} samples consumed and {emitted} emitted "
                         f"cannot come from a shuffle buffer of {size}; the state belongs to other data settings")
    return buf


class WorkerStream:
    """Endless raw samples of one (rank, logical worker), with its exact position.

    Args:
        urls: the run's shard URLs (pieces name shards by their index here).
        position: where to start (:func:`initial_position` or a saved :meth:`position`).
        from_epoch: the first shard-epoch dealt over this world's G slots (0 unless the run was
            resumed on another number of ranks or workers).
        carry: this worker's carry-over pieces, read as shard-epoch ``from_epoch - 1``.
    """

    def __init__(self, urls: list[str], *, seed: int, rank: int, worker: int, num_workers: int, world_size: int,
                 buffer_size: int, position: dict[str, Any], from_epoch: int = 0, carry: Sequence[Piece] = ()):
        self.urls, self.seed, self.rank, self.worker = urls, seed, rank, worker
        self.slot, self.num_slots = rank * num_workers + worker, world_size * num_workers
        self.buffer_size = buffer_size
        self.from_epoch, self.carry = from_epoch, list(carry)
        self.epoch: int = position["epoch"]
        self.consumed: int = position["consumed"]
        self.emitted: int = position["emitted"]
        self.shard_counts: list[int] = list(position["shard_counts"])
        self.broken: int = position["broken"]
        self.new_broken: list[tuple[str, str]] = []  # (url, error) since the last batch

    def epoch_pieces(self, epoch: int) -> list[Piece]:
        """This worker's pieces in shard-epoch ``epoch``, in reading order (before ``from_epoch``: the carry-over)."""
        if epoch < self.from_epoch:
            return list(self.carry)
        n = len(self.urls)
        if n >= self.num_slots:
            order = list(range(n))
            random.Random(derive_seed(self.seed, epoch)).shuffle(order)
            return [Piece.whole(i) for i in order[self.slot::self.num_slots]]
        rng = random.Random(derive_seed(self.seed, epoch, self.rank, self.worker, 2))
        return [Piece.whole(rng.randrange(n))]

    def epoch_shards(self, epoch: int) -> list[str]:
        """URLs of the shards this worker reads (from) in shard-epoch ``epoch``, in reading order."""
        return [self.urls[p.shard] for p in self.epoch_pieces(epoch)]

    def _buffer_rng(self, epoch: int) -> random.Random:
        return random.Random(derive_seed(self.seed, self.rank, self.worker, epoch, 1))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        empty = 0
        while True:
            before = self.emitted
            yield from self._epoch()
            empty = empty + 1 if self.emitted == before == 0 else 0
            if empty >= _MAX_EMPTY_EPOCHS:
                example = next(iter(self.epoch_shards(self.epoch)), "(none)")
                raise DataStreamError(f"rank {self.rank} loader worker {self.worker}: {empty} shard-epochs in a row gave "
                                      f"no sample (shards empty or unreadable, e.g. {printable(str(example))}); "
                                      "check data.train_shards, or rebuild the shards with `jepa shards`")
            self.epoch, self.consumed, self.emitted, self.shard_counts = self.epoch + 1, 0, 0, []

    def _epoch(self) -> Iterator[dict[str, Any]]:
        pieces = self.epoch_pieces(self.epoch)
        size = self.buffer_size
        rng = self._buffer_rng(self.epoch)
        resumed_at = self.consumed
        if resumed_at:
            ended = len(self.shard_counts) == len(pieces)
            slots = _replay_buffer(size, rng, resumed_at, ended, self.emitted)
            buf: list[Any] = [None] * len(slots)
            slot_of = {idx: k for k, idx in enumerate(slots)}
        else:
            buf, slot_of = [], {}
        for sample in self._raw(pieces, resumed_at, buf, slot_of):
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

    def _read(self, piece: Piece, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """The samples of a piece (at most ``limit``), reading its shard no further than needed."""
        url = self.urls[piece.shard]
        if piece.is_whole:
            yield from read_shard(url, limit=limit)
            return
        last = piece.last_index() if limit is None else (piece.index(limit - 1) + 1 if limit > 0 else 0)
        yield from itertools.islice(piece.select(read_shard(url, limit=last)), limit)

    def _raw(self, pieces: list[Piece], resumed_at: int, buf: list[Any], slot_of: dict[int, int]) -> Iterator[dict[str, Any]]:
        """New raw samples of this shard-epoch; while catching up to ``resumed_at`` it fills the
        buffer slots ``slot_of`` instead, skipping finished pieces that hold none of them."""
        known = list(self.shard_counts)
        needed = sorted(slot_of)
        idx = 0
        for k, piece in enumerate(pieces):
            url = self.urls[piece.shard]
            if k < len(known):  # finished before the checkpoint
                count = known[k]
                first = bisect.bisect_left(needed, idx)
                if first < len(needed) and needed[first] < idx + count:
                    got = 0
                    try:
                        for sample in self._read(piece, limit=count):
                            if idx + got in slot_of:
                                buf[slot_of[idx + got]] = sample
                            got += 1
                    except SHARD_ERRORS as exc:
                        raise DataError(f"cannot resume the data stream exactly: {printable(url)} failed after {got} "
                                         f"samples ({printable(f'{type(exc).__name__}: {exc}')}) but gave {count} "
                                         "before the checkpoint") from exc
                    if got != count:
                        raise DataError(f"cannot resume the data stream exactly: {printable(url)} now holds {got} samples, "
                                         f"{count} before the checkpoint; the shards changed")
                idx += count
                continue
            count = 0
            try:
                for sample in self._read(piece):
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
                self.new_broken.append((url, printable(f"{type(exc).__name__}: {exc}")))
            if idx < resumed_at:
                raise DataError(f"cannot resume the data stream exactly: {printable(url)} ended after {count} samples, "
                                 "fewer than before the checkpoint; the shards changed")
            self.shard_counts.append(count)

    def unemitted(self) -> list[Piece]:
        """What this worker has not handed out of its current shard-epoch, as pieces, found without
        any I/O: the samples waiting in its shuffle buffer and the ones it has not read yet."""
        pieces = self.epoch_pieces(self.epoch)
        counts = self.shard_counts
        held = sorted(_replay_buffer(self.buffer_size, self._buffer_rng(self.epoch), self.consumed,
                                     len(counts) == len(pieces), self.emitted))
        out: list[Piece] = []
        start = 0
        for k, piece in enumerate(pieces):
            if k > len(counts):  # not started
                out.append(piece)
                continue
            end = start + counts[k] if k < len(counts) else self.consumed
            mine = held[bisect.bisect_left(held, start):bisect.bisect_left(held, end)]
            kept = piece.subset(i - start for i in mine)
            rest = piece.drop(end - start) if k == len(counts) else None  # the piece being read: its unread part
            ranges = (kept.ranges if kept else ()) + (rest.ranges if rest else ())
            if ranges:
                out.append(Piece(piece.shard, ranges))
            start = end
        return out

    def take_new_broken(self) -> list[tuple[str, str]]:
        out, self.new_broken = self.new_broken, []
        return out

    def position(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": self.consumed, "emitted": self.emitted,
                "shard_counts": list(self.shard_counts), "broken": self.broken}
