"""Re-dealing the training stream's position to another number of ranks or loader workers.

A run checkpointed on N ranks with W loader workers each resumes on M ranks with W' workers:
:func:`redeal` turns every old rank's loader state (:mod:`jepa.checkpoint` reads them all) into
the state of one new rank, the same way on every rank, without reading any shard.

**Shards.** Each old worker's shard-epoch is split into what it handed out and what it did not
(:meth:`~jepa.data.stream.WorkerStream.unemitted`: the samples waiting in its shuffle buffer, the
unread rest of the shard it was reading, the shards it had not begun). Let E be the latest
shard-epoch any old worker was in. The *carry-over* is, by shard-epoch then old worker, what each
old worker did not hand out of its shard-epoch plus its whole share of every later one up to E
(which it had not begun). It is cut into M x W' consecutive shares, sized so that the micro
batches each new rank takes from its workers in turn use the carry-over up before anything else
(:func:`carry_shares`); a share may end inside a shard, which two workers then read, each keeping
its part. Each new worker reads its share as shard-epoch E (through its shuffle buffer), then
shard-epochs E+1, E+2, ... dealt over the M x W' slots as usual.

So every sample of the shard-epochs in progress at the checkpoint is handed out exactly once, as
if the run had not been resized; only the order differs. The next shard-epoch starts once the
carry-over is used up: exactly then when the carry-over divides into whole micro batches per
worker (e.g. an epoch of whole global batches), else up to one micro batch per worker early.
Share sizes come from the shards' manifests; shards without one count as the mean of the known
lengths, and the shares are then uneven by as much as that guess is off (still nothing lost or
repeated).

**Synthetic.** The stream is a function of the global micro-step: the samples consumed
(micro-steps x micro batch x N) are the same number of micro-steps of micro x M samples.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from jepa.data.loader import STATE_VERSION
from jepa.data.manifest import is_local, local_path, read_manifest
from jepa.data.pieces import Piece
from jepa.data.reading import expand_shards
from jepa.data.shard_loader import check_fingerprint, fingerprint
from jepa.data.stream import WorkerStream
from jepa.errors import CheckpointError
from jepa.recipe import DataConfig

log = logging.getLogger(__name__)


def redeal(states: list[dict[str, Any]], data_cfg: DataConfig, *, seed: int, rank: int, world_size: int,
           micro_batch_size: int) -> dict[str, Any]:
    """The loader state of ``rank`` in a world of ``world_size`` that continues ``states``.

    Args:
        states: ``state_dict()`` of every old rank's loader, in rank order.
        data_cfg, seed, micro_batch_size: the resumed run's (the micro batch must be the old one).

    Raises:
        ValueError: the states do not fit each other or the recipe (data settings, shards or
            micro batch changed), naming what differs.
    """
    if not states:
        raise CheckpointError("no data-loader states to re-deal")
    source = states[0].get("source")
    if source == "synthetic":
        return _redeal_synthetic(states, seed=seed, world_size=world_size, micro_batch_size=micro_batch_size)
    if source != "shards":
        raise CheckpointError(f"data-loader state of unknown source {source!r}; resume with the jepa version that wrote it")
    return _redeal_shards(states, data_cfg, seed=seed, rank=rank, world_size=world_size, micro_batch_size=micro_batch_size)


def _redeal_synthetic(states: list[dict[str, Any]], *, seed: int, world_size: int, micro_batch_size: int) -> dict[str, Any]:
    state = dict(states[0])
    if state.get("version") != STATE_VERSION or "step" not in state or "global_batch" not in state:
        raise CheckpointError(f"synthetic data-loader state {sorted(state)} of version {state.get('version')!r} cannot be "
                         f"re-dealt by this jepa (state version {STATE_VERSION}); resume with the number of processes "
                         "that wrote it")
    if state["seed"] != seed:
        raise CheckpointError(f"cannot resume the synthetic stream: seed was {state['seed']}, now {seed}; restore seed")
    consumed = state["step"] * state["global_batch"]
    new_global = micro_batch_size * world_size
    if consumed % new_global:
        raise CheckpointError(f"cannot re-deal the synthetic stream: {consumed} samples consumed are not a whole number of "
                         f"micro-steps of {micro_batch_size} x {world_size} ranks")
    return {**state, "global_batch": new_global, "step": consumed // new_global}


def carry_shares(total: int, world_size: int, num_workers: int, micro_batch_size: int, first_worker: int = 0) -> list[int]:
    """How many carry-over samples each new worker gets (rank-major slot order), so that it is used
    up first: every rank takes its micro batches from workers ``first_worker``, ``first_worker + 1``,
    ... (mod W') in turn, so a worker gets every W'-th batch of the rank's share (the last, partial
    one included)."""
    shares = []
    for r in range(world_size):
        per_rank = total // world_size + (1 if r < total % world_size else 0)
        full, rest = divmod(per_rank, micro_batch_size)
        for w in range(num_workers):
            k = (w - first_worker) % num_workers  # this worker hands out the rank's batches k, k + W', ...
            shares.append(len(range(k, full, num_workers)) * micro_batch_size + (rest if k == full % num_workers else 0))
    return shares


def _shard_lengths(urls: list[str]) -> list[int | None]:
    """Samples per shard from the shard folders' manifests (None where unknown)."""
    counts: dict[str, dict[str, int] | None] = {}
    lengths: list[int | None] = []
    for url in urls:
        if not is_local(url):
            lengths.append(None)
            continue
        folder, name = os.path.split(local_path(url))
        if folder not in counts:
            try:
                manifest = read_manifest(folder or ".")
            except (OSError, ValueError):
                manifest = None
            counts[folder] = manifest.counts() if manifest is not None else None
        lengths.append((counts[folder] or {}).get(name))
    return lengths


def _redeal_shards(states: list[dict[str, Any]], data_cfg: DataConfig, *, seed: int, rank: int, world_size: int,
                   micro_batch_size: int) -> dict[str, Any]:
    urls = expand_shards(data_cfg.train_shards)
    old_world = len(states)
    streams: list[WorkerStream] = []
    for r, state in enumerate(states):
        check_fingerprint(state, fingerprint(urls, data_cfg, seed=seed, rank=r, world_size=old_world,
                                             micro_batch_size=micro_batch_size), ignore=("num_workers",))
        old_workers = max(1, state["num_workers"])
        carry = state.get("carry") or [[] for _ in range(old_workers)]
        streams += [WorkerStream(urls, seed=seed, rank=r, worker=w, num_workers=old_workers, world_size=old_world,
                                 buffer_size=state["shuffle_buffer"], position=state["workers"][w],
                                 from_epoch=state.get("from_epoch", 0), carry=[Piece.from_state(p) for p in carry[w]])
                    for w in range(old_workers)]

    last = max(s.epoch for s in streams)
    pieces: list[Piece] = []
    for epoch in range(min(s.epoch for s in streams), last + 1):
        for s in streams:
            if s.epoch == epoch:
                pieces += s.unemitted()
            elif s.epoch < epoch:  # a shard-epoch it had not begun: all of its share
                pieces += s.epoch_pieces(epoch)

    lengths = _shard_lengths(urls)
    known = [n for n in lengths if n is not None]
    if not known:  # lengths of whole shards read so far
        known = [c for s in streams for p, c in zip(s.epoch_pieces(s.epoch), s.shard_counts) if p.is_whole]
    guess = round(sum(known) / len(known)) if known else 1

    def size(piece: Piece) -> int:
        n = lengths[piece.shard]
        return piece.size(n if n is not None else guess) or 0

    # Micro batches each new rank has taken so far (every rank the same: the steps done x the new
    # accumulation steps); the loader counts them per worker (batches x W' + w), which seeds the
    # draws a step shares (jepa.data.loader.step_generator), so the counts continue from there.
    taken, uneven = divmod(sum(p["batches"] for state in states for p in state["workers"]), world_size)
    if uneven:
        raise CheckpointError(f"cannot re-deal the data stream: the {old_world} old ranks took {taken * world_size + uneven} "
                         f"micro batches in all, not a multiple of {world_size} ranks; resume on {old_world} processes")
    num_workers = max(1, data_cfg.num_workers)
    first_worker = taken % num_workers
    total = sum(size(p) for p in pieces)
    shares = carry_shares(total, world_size, num_workers, micro_batch_size, first_worker)
    dealt: list[list[Piece]] = [[] for _ in shares]
    slot, room = 0, shares[0]
    for piece in pieces:
        rest: Piece | None = piece
        while rest is not None:
            while room <= 0 and slot < len(shares) - 1:
                slot += 1
                room = shares[slot]
            n = size(rest)
            if n <= room or slot == len(shares) - 1:
                dealt[slot].append(rest)
                room -= n
                rest = None
            else:
                head = rest.head(room)
                assert head is not None
                dealt[slot].append(head)
                rest, room = rest.drop(room), 0

    if rank == 0:
        log.warning("data stream of %d ranks x %d loader workers re-dealt to %d x %d: %d samples (%d pieces of shards) "
                    "of shard-epochs %d..%d first, then shard-epoch %d over the new workers", old_world,
                    max(1, states[0]["num_workers"]), world_size, num_workers, total, len(pieces),
                    min(s.epoch for s in streams), last, last + 1)

    slots = world_size * num_workers
    totals = {k: sum(p[k] for state in states for p in state["workers"]) for k in ("seen", "skipped", "broken")}

    def part(total_: int, slot_: int) -> int:
        return total_ // slots + (1 if slot_ < total_ % slots else 0)

    mine = range(rank * num_workers, (rank + 1) * num_workers)
    workers = [{"epoch": last, "consumed": 0, "emitted": 0, "shard_counts": [],
                "batches": len(range(w, taken, num_workers)), **{k: part(v, s) for k, v in totals.items()}}
               for w, s in enumerate(mine)]
    return {"version": STATE_VERSION,
            **fingerprint(urls, data_cfg, seed=seed, rank=rank, world_size=world_size, micro_batch_size=micro_batch_size),
            "next_worker": first_worker, "from_epoch": last + 1, "carry": [[p.to_state() for p in dealt[s]] for s in mine],
            "workers": workers}
