"""Writing WebDataset tar shards (and their ``manifest.json``) from an image folder or a generator.

A shard set is a folder holding ``PREFIX-000000.tar``, ``PREFIX-000001.tar``, ... and a
``manifest.json`` that lists every shard with its sample count, the total, the class names
(when samples are labelled) and the source files that were skipped. Each sample stores the
original encoded image bytes under its extension (``jpg``, ``png``, ...; never re-encoded), an
integer label under ``cls`` (decimal text, the webdataset convention) and a stable ``__key__``.

Writing is parallel: the samples are cut into chunks, a process pool writes each chunk to its
own temporary shards, and the shards are renamed into one contiguous sequence in chunk order,
so the result does not depend on the number of workers.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import tarfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import braceexpand
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from webdataset import TarWriter

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
#: File suffix (lower case) -> sample key under which the bytes are stored.
IMAGE_SUFFIXES: dict[str, str] = {
    ".jpg": "jpg", ".jpeg": "jpeg", ".png": "png", ".webp": "webp", ".ppm": "ppm", ".bmp": "bmp",
}
_TAR_MTIME = 946_684_800  # fixed member mtime (2000-01-01) so equal inputs give byte-identical shards


@dataclass(frozen=True)
class ShardSample:
    """One sample to write: ``key`` becomes ``__key__``, ``data`` is stored under ``ext``."""

    key: str
    ext: str
    data: bytes
    label: int | None = None


@dataclass(frozen=True)
class SkippedFile:
    """A source item that was not written, and why."""

    path: str
    error: str


@dataclass(frozen=True)
class ShardInfo:
    name: str
    count: int
    bytes: int


@dataclass
class Manifest:
    """What a shard set holds. Saved as ``manifest.json`` beside the shards."""

    prefix: str
    shards: list[ShardInfo]
    classes: list[str] | None = None
    skipped: list[SkippedFile] = field(default_factory=list)
    ignored_files: int = 0

    @property
    def total(self) -> int:
        return sum(s.count for s in self.shards)

    @property
    def pattern(self) -> str:
        """Brace pattern naming every shard, relative to the manifest's folder."""
        n = len(self.shards)
        if n == 0:
            return ""
        if n == 1:
            return self.shards[0].name
        return f"{self.prefix}-{{{0:06d}..{n - 1:06d}}}.tar"

    def counts(self) -> dict[str, int]:
        """Shard file name -> sample count."""
        return {s.name: s.count for s in self.shards}

    def to_json(self) -> dict:
        return {
            "format": "jepa-shards", "version": MANIFEST_VERSION, "prefix": self.prefix, "pattern": self.pattern,
            "total": self.total, "num_shards": len(self.shards), "classes": self.classes,
            "shards": [asdict(s) for s in self.shards], "skipped": [asdict(s) for s in self.skipped],
            "ignored_files": self.ignored_files,
        }

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Manifest":
        """Read a ``manifest.json``.

        Raises:
            ValueError: the file is not a jepa shard manifest or has an unknown version.
        """
        raw = json.loads(Path(path).read_text())
        if raw.get("format") != "jepa-shards" or raw.get("version") != MANIFEST_VERSION:
            raise ValueError(f"{path}: not a version-{MANIFEST_VERSION} jepa shard manifest "
                             f"(format={raw.get('format')!r}, version={raw.get('version')!r}); rewrite it with `jepa shards`")
        return cls(
            prefix=raw["prefix"], shards=[ShardInfo(**s) for s in raw["shards"]], classes=raw["classes"],
            skipped=[SkippedFile(**s) for s in raw["skipped"]], ignored_files=raw["ignored_files"],
        )


def read_manifest(shards: str | Path) -> Manifest | None:
    """The manifest of a local shard set, or None when there is none.

    Args:
        shards: a shard folder, a manifest file, or a shard pattern (brace pattern, '::'-joined
            patterns); for a pattern the folder of its first shard is searched.
    """
    spec = str(shards)
    path = Path(spec)
    if path.is_dir():
        path = path / MANIFEST_NAME
    elif not path.name == MANIFEST_NAME:
        first = next(iter(braceexpand.braceexpand(spec.split("::")[0])), "")
        if re.match(r"^[a-z][a-z0-9+.-]*:", first) and not first.startswith("file:"):
            return None  # remote shards: no manifest to read
        path = Path(re.sub(r"^file://?", "", first)).parent / MANIFEST_NAME
    return Manifest.load(path) if path.is_file() else None


# --------------------------------------------------------------------------- writing


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
        ignored_files: non-image files seen in the source (reported in the manifest).
        total_items: samples expected, for the progress bar.
        show_progress: draw a rich progress bar.

    Returns:
        The manifest, also saved as ``out_dir/manifest.json``.

    Raises:
        ValueError: bad limits, or ``out_dir`` already holds shards with this prefix.
    """
    if max_count < 1 or max_bytes < 1 or workers < 1:
        raise ValueError(f"max_count, max_bytes and workers must be >= 1 (got {max_count}, {max_bytes}, {workers})")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", prefix):
        raise ValueError(f"shard prefix {prefix!r} may only use letters, digits, '_', '.' and '-'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(out.glob(f"{prefix}-*.tar"))
    if existing or (out / MANIFEST_NAME).exists():
        raise ValueError(f"{out} already holds a shard set ({existing[0].name if existing else MANIFEST_NAME}); "
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


# --------------------------------------------------------------------------- image folders


@dataclass(frozen=True)
class FolderListing:
    """The images found in a source folder. ``labels`` is None for a flat (unlabelled) folder."""

    root: Path
    files: list[Path]  # relative to root, sorted
    labels: list[int] | None
    classes: list[str] | None
    ignored_files: int


def _is_hidden(path: Path) -> bool:
    return any(part.startswith(".") for part in path.parts)


def list_image_folder(src: str | Path) -> FolderListing:
    """Find the images of ``src``: class sub-folders (labels = index of the sorted class names) or flat.

    Raises:
        ValueError: ``src`` is missing, holds no images, or mixes top-level images with class folders.
    """
    root = Path(src)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder; pass a folder of images or of class sub-folders")
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    class_dirs = [p for p in entries if p.is_dir()]
    top_files = [p for p in entries if p.is_file()]
    top_images = [p for p in top_files if p.suffix.lower() in IMAGE_SUFFIXES]
    if class_dirs and top_images:
        raise ValueError(f"{root} mixes {len(top_images)} images (e.g. {top_images[0].name}) with class folders "
                         f"(e.g. {class_dirs[0].name}/); move the images into a class folder, or point at a flat folder")
    ignored = len(top_files) - len(top_images)
    files: list[Path] = []
    labels: list[int] | None = None
    classes: list[str] | None = None
    if class_dirs:
        classes, labels = [d.name for d in class_dirs], []
        for label, d in enumerate(class_dirs):
            found = sorted(p for p in d.rglob("*") if p.is_file() and not _is_hidden(p.relative_to(root)))
            images = [p for p in found if p.suffix.lower() in IMAGE_SUFFIXES]
            ignored += len(found) - len(images)
            files += [p.relative_to(root) for p in images]
            labels += [label] * len(images)
    else:
        files = [p.relative_to(root) for p in top_images]
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {root}")
    return FolderListing(root, files, labels, classes, ignored)


def sample_keys(files: Sequence[Path]) -> list[str]:
    """Stable, unique ``__key__`` per file: its relative path without suffix, with every character
    other than letters, digits, '_' and '-' replaced by '_' (webdataset splits keys at the first dot)."""
    keys, seen = [], set()
    for f in files:
        base = re.sub(r"[^A-Za-z0-9_-]", "_", str(f.with_suffix("")))
        key, n = base, 1
        while key in seen:
            key, n = f"{base}_{n}", n + 1
        seen.add(key)
        keys.append(key)
    return keys


@dataclass(frozen=True)
class _FolderChunk:
    """Chunk job: read, verify and yield some files of a folder (picklable for the process pool)."""

    root: str
    files: tuple[str, ...]
    keys: tuple[str, ...]
    labels: tuple[int, ...] | None

    def __call__(self) -> Iterator[ShardSample | SkippedFile]:
        from jepa.modalities.image.transforms import decode_image

        for i, (rel, key) in enumerate(zip(self.files, self.keys)):
            ext = IMAGE_SUFFIXES[Path(rel).suffix.lower()]
            try:
                data = Path(self.root, rel).read_bytes()
                decode_image({"__key__": key, ext: data})  # the training decoder must be able to read it
            except (OSError, ValueError) as exc:
                yield SkippedFile(rel, f"{type(exc).__name__}: {exc}")
                continue
            yield ShardSample(key, ext, data, None if self.labels is None else self.labels[i])


def shard_image_folder(src: str | Path, out_dir: str | Path, *, prefix: str = "shard", max_count: int = 1000,
                       max_bytes: int = 1 << 30, workers: int = 1, show_progress: bool = True) -> Manifest:
    """Write an image folder as shards: see :func:`list_image_folder` and :func:`write_shard_set`.

    Every file is decoded once to check it; unreadable ones are skipped and listed in the manifest.
    """
    listing = list_image_folder(src)
    keys = sample_keys(listing.files)
    jobs: list[ChunkJob] = []
    for start in range(0, len(listing.files), max_count):
        stop = start + max_count
        jobs.append(_FolderChunk(
            str(listing.root), tuple(str(f) for f in listing.files[start:stop]), tuple(keys[start:stop]),
            None if listing.labels is None else tuple(listing.labels[start:stop]),
        ))
    return write_shard_set(jobs, out_dir, prefix=prefix, max_count=max_count, max_bytes=max_bytes, workers=workers,
                           classes=listing.classes, ignored_files=listing.ignored_files,
                           total_items=len(listing.files), show_progress=show_progress)

