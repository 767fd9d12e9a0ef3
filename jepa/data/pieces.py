"""A piece: some of one shard's samples, picked by their index in the shard.

A loader worker reads a list of pieces per shard-epoch (:mod:`jepa.data.stream`). Normally each
piece is a whole shard. After a resume on another number of ranks or loader workers, the samples
that the old workers had not handed out yet are dealt to the new ones as pieces of their shards
(:mod:`jepa.data.redeal`): the rest of a half-read shard, or the few samples that were waiting in
a shuffle buffer.

A piece selects sample indices by half-open ranges ``[start, stop)`` in increasing order; the
last may be open (``stop`` None: to the end of the shard, whose length is not always known). In a
checkpoint a piece is ``[shard_index, [[start, stop], ...]]`` (plain lists: public API of the
loader state).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator


@dataclass(frozen=True)
class Piece:
    """Samples of shard ``shard`` (an index into the run's shard list) at the indices in ``ranges``."""

    shard: int
    ranges: tuple[tuple[int, int | None], ...] = ((0, None),)

    def __post_init__(self) -> None:
        last = 0
        for i, (start, stop) in enumerate(self.ranges):
            assert start >= last and (stop is None or stop > start), self.ranges
            assert stop is not None or i == len(self.ranges) - 1, self.ranges
            last = stop if stop is not None else start

    @classmethod
    def whole(cls, shard: int) -> "Piece":
        return cls(shard)

    @classmethod
    def of_indices(cls, shard: int, indices: Iterable[int]) -> "Piece | None":
        """The piece of exactly these sample indices (None when there are none)."""
        ranges: list[list[int]] = []
        for i in sorted(set(indices)):
            if ranges and ranges[-1][1] == i:
                ranges[-1][1] = i + 1
            else:
                ranges.append([i, i + 1])
        return cls(shard, tuple((a, b) for a, b in ranges)) if ranges else None

    @property
    def is_whole(self) -> bool:
        return self.ranges == ((0, None),)

    @property
    def open(self) -> bool:
        """Whether the piece runs to the end of the shard (its size depends on the shard's length)."""
        return bool(self.ranges) and self.ranges[-1][1] is None

    def size(self, shard_len: int | None) -> int | None:
        """Samples in the piece for a shard of ``shard_len`` samples (None: unknown length, and open)."""
        total = 0
        for start, stop in self.ranges:
            if stop is None:
                if shard_len is None:
                    return None
                stop = max(start, shard_len)
            total += stop - start
        return total

    def index(self, j: int) -> int:
        """The shard index of the piece's ``j``-th sample (from 0)."""
        for start, stop in self.ranges:
            if stop is None or j < stop - start:
                return start + j
            j -= stop - start
        raise IndexError(f"sample {j} is beyond piece {self}")

    def head(self, n: int) -> "Piece | None":
        """The piece of the first ``n`` samples (None when ``n`` is 0)."""
        out: list[tuple[int, int | None]] = []
        for start, stop in self.ranges:
            if n <= 0:
                break
            take = n if stop is None else min(n, stop - start)
            out.append((start, start + take))
            n -= take
        return Piece(self.shard, tuple(out)) if out else None

    def drop(self, n: int) -> "Piece | None":
        """The piece without its first ``n`` samples (None when nothing is left of a closed piece)."""
        out: list[tuple[int, int | None]] = []
        for start, stop in self.ranges:
            if stop is not None and n >= stop - start:
                n -= stop - start
                continue
            out.append((start + n, stop))
            n = 0
        return Piece(self.shard, tuple(out)) if out else None

    def subset(self, positions: Iterable[int]) -> "Piece | None":
        """The piece of the samples at these positions of this piece."""
        return Piece.of_indices(self.shard, (self.index(j) for j in positions))

    def select(self, samples: Iterable[Any]) -> Iterator[Any]:
        """This piece's samples out of all of the shard's, in order (stops reading after a closed piece's end)."""
        ranges = iter(self.ranges)
        start, stop = next(ranges, (None, None))
        if start is None:
            return
        for i, sample in enumerate(samples):
            while stop is not None and i >= stop:
                start, stop = next(ranges, (None, None))
                if start is None:
                    return
            if i >= start:
                yield sample

    def last_index(self) -> int | None:
        """One past the last shard index a closed piece needs (None for an open piece)."""
        return None if self.open else self.ranges[-1][1]

    def to_state(self) -> list[Any]:
        return [self.shard, [[a, b] for a, b in self.ranges]]

    @classmethod
    def from_state(cls, raw: Any) -> "Piece":
        shard, ranges = raw
        return cls(int(shard), tuple((int(a), None if b is None else int(b)) for a, b in ranges))
