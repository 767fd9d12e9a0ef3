"""Writing WebDataset tar shards (and their ``manifest.json``) from chunk jobs.

Each sample stores its payload bytes as they are (never re-encoded) under one key (``jpg``,
``npy``, ...), an integer label under ``cls`` (decimal text, the webdataset convention) when
there is one, and a stable ``__key__``. A reader hands ``Modality.decode`` exactly that back:
``{"__key__": key, "__url__": shard, "npy": bytes, "cls": b"3"}`` (see its docstring).

Two entry points: :func:`write_labelled_splits` writes labelled ``train/`` and ``val/`` sets from
``(sample, label)`` pairs (what a modality's ``write_demo_data`` needs, in a few lines), and
:func:`write_shard_set` writes one set from :class:`ChunkJob` s (what it is built on; ``jepa shards``
uses it directly).

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
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from webdataset import TarWriter

from jepa.data.manifest import MANIFEST_NAME, Manifest, ShardInfo, SkippedFile
from jepa.errors import ConfigError, DataError
from jepa.outputs import remove_tree
from jepa.text import printable

_TAR_MTIME = 946_684_800  # fixed member mtime (2000-01-01) so equal inputs give byte-identical shards
#: The lock file of an output folder being written (hidden: folder listings and shard globs skip it).
LOCK_NAME = ".jepa-shards.lock"


#: ``jepa shards``' defaults: most samples and most bytes per shard (the tar files of a set are
#: cut at whichever comes first; 1 GiB keeps a shard quick to stream, yet few of them).
DEFAULT_MAX_COUNT = 1000
DEFAULT_MAX_BYTES = 1 << 30


@dataclass(frozen=True)
class ShardSample:
    """One sample to write.

    Attributes:
        key: its ``__key__``, unique within the set; no dot (readers cut member names at the first one).
        ext: the key its bytes are stored and read back under (``"npy"``), lower case, no leading dot.
        data: the payload, stored as is.
        label: the class number, stored as ``cls`` (ASCII digits, e.g. ``b"3"``); None: unlabelled.
        extra: further files of the same sample as ``(ext, bytes)`` pairs (``(("json", b"{}"),)``).
    """

    key: str
    ext: str
    data: bytes
    label: int | None = None
    extra: tuple[tuple[str, bytes], ...] = ()


class ChunkJob(Protocol):
    """One chunk of a shard set: a zero-argument callable that yields the chunk's samples in order.

    :func:`write_shard_set` calls every job once: in this process, in order, when ``workers`` is 1
    (or there is one job), else in a pool of ``workers`` processes. **With ``workers > 1`` each job
    is pickled** to reach its process: make it an instance of a module-level class (a frozen
    dataclass of plain fields, as below) or a ``functools.partial`` of a module-level function,
    defined in an importable module (an installed package), never a lambda, a closure, a bound
    generator or an open file. What a job yields should be a function of its own fields (its seed
    and position included), so the shards are the same whatever ``workers`` is.

    A job yields :class:`ShardSample` s, and a :class:`~jepa.data.manifest.SkippedFile` for an
    input it could not read (listed in the manifest). It writes its own shards, bounded by
    ``max_count`` and ``max_bytes``; the shards of all jobs are then numbered in job order.

    Example (1,000 labelled ``.npy`` samples in 10 jobs)::

        @dataclass(frozen=True)
        class NoiseChunk:  # module level, so it pickles
            seed: int
            start: int
            count: int

            def __call__(self) -> Iterator[ShardSample]:
                rng = np.random.default_rng([self.seed, self.start])
                for i in range(self.start, self.start + self.count):
                    buffer = io.BytesIO()
                    np.save(buffer, rng.standard_normal((8, 8)).astype(np.float32), allow_pickle=False)
                    yield ShardSample(f"train_{i:07d}", "npy", buffer.getvalue(), label=i % 2)

        jobs = [NoiseChunk(0, start, 100) for start in range(0, 1000, 100)]
        write_shard_set(jobs, "out/train", prefix="train", classes=["even", "odd"], workers=4)
    """

    def __call__(self) -> Iterable["ShardSample | SkippedFile"]: ...


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
            record = {"__key__": item.key, item.ext: item.data, **dict(item.extra)}
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
            raise DataError(f"{printable(str(out))} is being written by another writer (jepa shards / jepa demo-data) "
                             f"(pid {pid}); wait for it or choose another folder") from None
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
    max_count: int = DEFAULT_MAX_COUNT,
    max_bytes: int = DEFAULT_MAX_BYTES,
    workers: int = 1,
    classes: list[str] | None = None,
    ignored_files: int = 0,
    total_items: int | None = None,
    show_progress: bool = True,
) -> Manifest:
    """Write the samples of ``jobs`` as one shard set with a manifest.

    The set is ``out_dir/PREFIX-000000.tar``, ``PREFIX-000001.tar``, ... and ``manifest.json``
    (sample counts, the class names, skipped inputs). A sample with a ``label`` gets a ``cls``
    member (the label as ASCII digits) next to its payload; the readers take labels from there
    (``jepa eval`` checks them against ``classes``), never from ``Modality.decode``.

    Example (the :class:`ChunkJob` docstring has a parallel one)::

        def noise(n: int) -> Iterator[ShardSample]:
            for i in range(n):
                yield ShardSample(f"val_{i:07d}", "npy", npy_bytes(i), label=i % 2)

        manifest = write_shard_set([functools.partial(noise, 200)], "out/val", prefix="val",
                                   classes=["even", "odd"])
        manifest.total  # 200

    Args:
        jobs: chunk jobs, in output order; each is run in a worker process (or in this process
            when ``workers`` is 1) and writes its own shards. They must pickle when ``workers > 1``
            (:class:`ChunkJob`).
        out_dir: output folder (created); must not already hold this prefix's shards.
        prefix: shard file name prefix (letters, digits, ``_``, ``.``, ``-``).
        max_count: most samples per shard (default :data:`DEFAULT_MAX_COUNT`, as ``jepa shards``).
        max_bytes: most bytes per shard file (default :data:`DEFAULT_MAX_BYTES`, 1 GiB, as ``jepa
            shards``; a tar file takes at least 10 KiB; a sample too big for the limit gets a shard
            of its own).
        workers: parallel writer processes (default 1: this process).
        classes: class names of labelled samples, label ``i`` named ``classes[i]`` (stored in the
            manifest; ``jepa eval`` needs them).
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
        raise ConfigError(f"max_count, max_bytes and workers must be >= 1 (got {max_count}, {max_bytes}, {workers})")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", prefix):
        raise ConfigError(f"shard prefix {prefix!r} may only use letters, digits, '_', '.' and '-'")
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
        raise DataError(f"{printable(str(out))} already holds a shard set "
                         f"({printable(existing[0].name) if existing else MANIFEST_NAME}); "
                         "write into an empty folder or pick another --prefix")
    tmp = out / f".{prefix}-partial"
    remove_tree(tmp)  # left by an interrupted run; a link there is removed, never followed
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
        with contextlib.suppress(OSError):  # an error being raised stays the one shown; a leftover goes next time
            remove_tree(tmp)
    manifest = Manifest(prefix=prefix, shards=final, classes=classes,
                        skipped=[s for r in results for s in r.skipped], ignored_files=ignored_files)
    manifest.save(out)
    return manifest


# --------------------------------------------------------------------------- labelled splits from pairs

#: One labelled sample as a plugin hands it to :func:`write_labelled_splits`: ``({ext: bytes}, label)``.
LabelledPair = tuple[Mapping[str, bytes], int]
_EXT = re.compile(r"[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*")


def labelled_sample(key: str, pair: LabelledPair, num_classes: int) -> ShardSample:
    """``({ext: bytes, ...}, label)`` -> the :class:`ShardSample` stored under ``key``.

    Raises:
        ValueError: not a (dict, int) pair, a bad extension key (lower case letters, digits, ``_``,
            ``-``, dots between parts; not ``cls``), a payload that is empty or not bytes, or a
            label outside ``0 .. num_classes - 1``.
    """
    where = f"sample {key!r}"
    if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], Mapping)):
        raise DataError(f"{where}: expected a ({{ext: bytes}}, label) pair, got {type(pair).__name__}")
    files, label = pair
    if not files:
        raise DataError(f"{where}: the sample dict is empty; give at least one {{ext: bytes}} entry")
    stored: list[tuple[str, bytes]] = []
    for ext, data in files.items():
        if not isinstance(ext, str) or not _EXT.fullmatch(ext) or ext == "cls":
            raise DataError(f"{where}: {ext!r} is not a usable key: lower-case extension without the leading dot "
                             "(\"npy\", \"seg.png\"); 'cls' holds the label")
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
            raise DataError(f"{where}: {ext!r} is empty or not bytes ({type(data).__name__})")
        stored.append((ext, bytes(data)))
    if isinstance(label, bool) or not hasattr(label, "__index__") or not 0 <= label.__index__() < num_classes:
        raise DataError(f"{where}: label {label!r} is not a class number in 0..{num_classes - 1}")
    (ext, data), *extra = stored
    return ShardSample(key, ext, data, label.__index__(), tuple(extra))


@dataclass(frozen=True)
class LabelledChunk:
    """The :class:`ChunkJob` of :func:`write_labelled_splits`: ``pairs`` (an iterable of
    :data:`LabelledPair`, or a zero-argument callable returning one) as :class:`ShardSample` s.

    Attributes:
        split: the set's name, the start of every key.
        chunk: the chunk's position (keys ``SPLIT_CCCCC_IIIIIII``), or None for a split written as
            one iterable (keys ``SPLIT_IIIIIII``).
        pairs: the samples.
        num_classes: labels must lie in ``0 .. num_classes - 1``.
    """

    split: str
    chunk: int | None
    pairs: Any
    num_classes: int

    def __call__(self) -> Iterator[ShardSample]:
        pairs = self.pairs() if callable(self.pairs) else self.pairs
        stem = self.split if self.chunk is None else f"{self.split}_{self.chunk:05d}"
        for i, pair in enumerate(pairs):
            yield labelled_sample(f"{stem}_{i:07d}", pair, self.num_classes)


def _is_chunk_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(callable(v) for v in value)


def write_labelled_splits(
    out_dir: str | Path,
    splits: Mapping[str, Iterable[LabelledPair] | Sequence[Callable[[], Iterable[LabelledPair]]]],
    classes: Sequence[str],
    *,
    max_count: int = DEFAULT_MAX_COUNT,
    max_bytes: int = DEFAULT_MAX_BYTES,
    workers: int = 1,
    show_progress: bool = True,
) -> dict[str, Manifest]:
    """Write labelled shard sets ``out_dir/SPLIT`` (``train/``, ``val/``, ...) from ``(sample, label)`` pairs.

    A ``sample`` is a dict of extension -> bytes, exactly what ``Modality.decode`` will read back
    (plus ``__key__``, ``__url__`` and ``cls``); ``label`` an int in ``0 .. len(classes) - 1``,
    stored as the ``cls`` member. Each set is a :func:`write_shard_set` with prefix ``SPLIT``.

    A split's value is either

    * an iterable of pairs (a generator is fine): consumed here, in this process, in order; or
    * a list of picklable zero-argument callables each returning such an iterable (one chunk
      each, a :class:`ChunkJob` in all but what it yields): written by ``workers`` processes,
      shards in list order. They must pickle (module-level class or function, see :class:`ChunkJob`).

    Example (a modality's ``write_demo_data``)::

        def write_demo_data(self, out, spec):
            def pairs(n, seed):
                rng = np.random.default_rng(seed)
                for i in range(n):
                    label = i % spec.num_classes
                    buffer = io.BytesIO()
                    np.save(buffer, render(label, rng), allow_pickle=False)
                    yield {"npy": buffer.getvalue()}, label

            return write_labelled_splits(
                out, {"train": pairs(spec.num_train, [spec.seed, 0]), "val": pairs(spec.num_val, [spec.seed, 1])},
                classes=[f"class{c}" for c in range(spec.num_classes)], max_count=spec.max_count,
                show_progress=False)

    Args:
        out_dir: parent folder; each split goes to ``out_dir/SPLIT`` (which must hold no shard set).
        splits: split name (a shard prefix: letters, digits, ``_``, ``.``, ``-``) -> its samples.
        classes: class names, label ``i`` named ``classes[i]`` (stored in every manifest).
        max_count: most samples per shard.
        max_bytes: most bytes per shard file (default 1 GiB).
        workers: writer processes for splits given as chunk lists (iterables are written here).
        show_progress: draw a progress bar per split.

    Returns:
        ``{split: Manifest}``, each also saved as ``out_dir/SPLIT/manifest.json``.

    Raises:
        ValueError: no split, no or duplicate class names, a sample or label
            :func:`labelled_sample` refuses (naming its key), or what :func:`write_shard_set` refuses.
    """
    classes = list(classes)
    if not splits:
        raise DataError("write_labelled_splits: no split given; pass e.g. {'train': ..., 'val': ...}")
    if not classes or len(set(classes)) != len(classes) or not all(isinstance(c, str) and c for c in classes):
        raise DataError(f"write_labelled_splits: classes must be distinct non-empty names, got {classes!r}")
    manifests: dict[str, Manifest] = {}
    for split, value in splits.items():
        if _is_chunk_list(value):
            jobs = [LabelledChunk(split, i, fn, len(classes)) for i, fn in enumerate(value)]
            total = None
        else:
            jobs = [LabelledChunk(split, None, value, len(classes))]
            total = len(value) if hasattr(value, "__len__") else None
        manifests[split] = write_shard_set(jobs, Path(out_dir) / split, prefix=split, max_count=max_count,
                                           max_bytes=max_bytes, workers=workers, classes=classes, total_items=total,
                                           show_progress=show_progress)
    return manifests
