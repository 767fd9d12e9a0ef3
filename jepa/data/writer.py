"""Writing WebDataset tar shards (and their ``manifest.json``) from chunk jobs.

Each sample stores its payload bytes as they are (never re-encoded) under one key (``jpg``,
``npy``, ...), an integer label under ``cls`` (decimal text, the webdataset convention) when
there is one, and a stable ``__key__``.

Writing is parallel: the samples are cut into chunks, a process pool writes each chunk to its
own temporary shards, and the shards are renamed into one contiguous sequence in chunk order,
so the result does not depend on the number of workers.

One writer at a time per output folder: :func:`write_shard_set` holds an exclusive lock on
``OUT/.jepa-shards.lock`` (``flock``, so the kernel releases it when the process ends, however
it ends) while it writes, and a second writer into the same folder is refused at once naming
the first one's process id, instead of both tripping over each other's temporary files.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import shutil
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from webdataset import TarWriter

from jepa.data.manifest import MANIFEST_NAME, Manifest, ShardInfo, SkippedFile
from jepa.text import printable

_TAR_MTIME = 946_684_800  # fixed member mtime (2000-01-01) so equal inputs give byte-identical shards
#: The lock file of an output folder being written (hidden: folder listings and shard globs skip it).
LOCK_NAME = ".jepa-shards.lock"


@dataclass(frozen=True)
class ShardSample:
    """One sample to write: ``key`` becomes ``__key__``, ``data`` is stored under ``ext``."""

    key: str
    ext: str
    data: bytes
    label: int | None = None


#: A chunk job: a picklable zero-argument callable producing the samples of one chunk.
ChunkJob = Callable[[], Iterable["ShardSample | SkippedFile"]]


@dataclass
class _ChunkResult:
    index: int
    shards: list[ShardInfo]  # temporary names
    skipped: list[SkippedFile]
    num_items: int  # samples written + skipped (progress units)


def _tar_writer(fileobj) -> TarWriter:
    return TarWriter(fileobj, encoder=False, mtime=_TAR_MTIME, format="PAX_FORMAT")


def _member_bytes(name: str, size: int) -> int:
    """Bytes a tar member takes: header (plus a PAX header for long names) and 512-padded data."""
    header = 512 + (1024 if len(name.encode()) > 99 else 0)
    return header + -(-size // 512) * 512


def _archive_bytes(members: int) -> int:
    """Size of a finished archive: members, two end blocks, padded to whole 10 KiB records."""
    return -(-(members + 1024) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def _init_worker() -> None:
    """One intra-op thread per writer process, as in torch's loader workers: the processes are the
    parallelism, and a forked child must not enter the parent's OpenMP pool (it can hang)."""
    import torch

    torch.set_num_threads(1)


def _write_chunk(index: int, job: ChunkJob, tmp_dir: str, max_count: int, max_bytes: int) -> _ChunkResult:
    """Write one chunk's samples into ``tmp_dir/chunk{index}-{k}.tar`` files bounded by count and size."""
    shards: list[ShardInfo] = []
    skipped: list[SkippedFile] = []
    fileobj, writer, count, name, size = None, None, 0, "", 0

    def close() -> None:
        writer.close()
        fileobj.close()
        shards.append(ShardInfo(name, count, os.path.getsize(os.path.join(tmp_dir, name))))

    try:
        for item in job():
            if isinstance(item, SkippedFile):
                skipped.append(item)
                continue
            record = {"__key__": item.key, item.ext: item.data}
            if item.label is not None:
                record["cls"] = str(item.label).encode()
            added = sum(_member_bytes(f"{item.key}.{k}", len(v)) for k, v in record.items() if k != "__key__")
            if writer is not None and (count >= max_count or _archive_bytes(size + added) > max_bytes):
                close()
                writer = None
            if writer is None:
                name = f"chunk{index:06d}-{len(shards):04d}.tar"
                fileobj = open(os.path.join(tmp_dir, name), "wb")
                writer, count, size = _tar_writer(fileobj), 0, 0
            writer.write(record)
            count += 1
            size += added
        if writer is not None:
            close()
            writer = None
    finally:
        if writer is not None:  # an exception escaped: leave no open file behind
            writer.close()
            fileobj.close()
    return _ChunkResult(index, shards, skipped, sum(s.count for s in shards) + len(skipped))


def _holder(fd: int) -> str:
    """The process id written into a lock file by its holder ("?" if it has not written it yet)."""
    for _ in range(10):  # the holder writes its pid just after taking the lock
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return text
        time.sleep(0.02)
    return "?"


@contextlib.contextmanager
def folder_lock(out: Path) -> Iterator[None]:
    """Hold the exclusive writer lock of the folder ``out`` (which must exist).

    Raises:
        ValueError: another process (or another call in this one) holds it; the message names
            its process id.
    """
    path = out / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            os.close(fd)
            raise ValueError(f"{printable(str(out))} is being written by another `jepa shards` (pid {pid}); wait for "
                             "it or choose another folder") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed this file as we locked it: lock the one now in its place
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):  # removed while locked: a process that opened it before
            os.unlink(path)                           # and locks it now sees it is gone and tries again
        os.close(fd)


def write_shard_set(
    jobs: Sequence[ChunkJob],
    out_dir: str | Path,
    *,
    prefix: str,
    max_count: int,
    max_bytes: int,
    workers: int,
    classes: list[str] | None = None,
    ignored_files: int = 0,
    total_items: int | None = None,
    show_progress: bool = True,
) -> Manifest:
    """Write the samples of ``jobs`` as one shard set with a manifest.

    Args:
        jobs: chunk jobs, in output order; each is run in a worker process (or in this process
            when ``workers`` is 1) and writes its own shards.
        out_dir: output folder (created); must not already hold this prefix's shards.
        prefix: shard file name prefix.
        max_count: most samples per shard.
        max_bytes: most bytes per shard file (a tar file takes at least 10 KiB; a sample too big
            for the limit gets a shard of its own).
        workers: parallel writer processes.
        classes: class names for labelled samples (stored in the manifest).
        ignored_files: source files of other types (reported in the manifest).
        total_items: samples expected, for the progress bar.
        show_progress: draw a rich progress bar.

    Returns:
        The manifest, also saved as ``out_dir/manifest.json``.

    Raises:
        ValueError: bad limits, ``out_dir`` already holds shards with this prefix, or another
            writer is writing into ``out_dir`` (see :func:`folder_lock`).
    """
    if max_count < 1 or max_bytes < 1 or workers < 1:
        raise ValueError(f"max_count, max_bytes and workers must be >= 1 (got {max_count}, {max_bytes}, {workers})")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", prefix):
        raise ValueError(f"shard prefix {prefix!r} may only use letters, digits, '_', '.' and '-'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out):
        return _write_locked(jobs, out, prefix=prefix, max_count=max_count, max_bytes=max_bytes, workers=workers,
                             classes=classes, ignored_files=ignored_files, total_items=total_items,
                             show_progress=show_progress)


def _write_locked(jobs: Sequence[ChunkJob], out: Path, *, prefix: str, max_count: int, max_bytes: int, workers: int,
                  classes: list[str] | None, ignored_files: int, total_items: int | None,
                  show_progress: bool) -> Manifest:
    """:func:`write_shard_set` with the folder's lock held."""
    existing = sorted(out.glob(f"{prefix}-*.tar"))
    if existing or (out / MANIFEST_NAME).exists():
        raise ValueError(f"{printable(str(out))} already holds a shard set "
                         f"({printable(existing[0].name) if existing else MANIFEST_NAME}); "
                         "write into an empty folder or pick another --prefix")
    tmp = out / f".{prefix}-partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    results: list[_ChunkResult] = []
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        disable=not show_progress, transient=False)
    try:
        with progress:
            task = progress.add_task(f"writing {prefix}-*.tar", total=total_items)
            run = functools.partial(_write_chunk, tmp_dir=str(tmp), max_count=max_count, max_bytes=max_bytes)
            if workers == 1 or len(jobs) <= 1:
                for i, job in enumerate(jobs):
                    results.append(run(i, job))
                    progress.advance(task, results[-1].num_items)
            else:
                with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), initializer=_init_worker) as pool:
                    futures = [pool.submit(run, i, job) for i, job in enumerate(jobs)]
                    for fut in as_completed(futures):
                        results.append(fut.result())
                        progress.advance(task, results[-1].num_items)
        results.sort(key=lambda r: r.index)
        final: list[ShardInfo] = []
        for info in (s for r in results for s in r.shards):
            name = f"{prefix}-{len(final):06d}.tar"
            os.replace(tmp / info.name, out / name)
            final.append(ShardInfo(name, info.count, info.bytes))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    manifest = Manifest(prefix=prefix, shards=final, classes=classes,
                        skipped=[s for r in results for s in r.skipped], ignored_files=ignored_files)
    manifest.save(out)
    return manifest
