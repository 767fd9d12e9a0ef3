"""Any modality's sample files in a folder -> a shard set.

The modality names the files that are its samples (:meth:`Modality.file_suffixes`: suffix ->
the key its bytes are stored under). A folder of class sub-folders gives labelled samples
(label = index of the sorted class names); a folder of files directly gives unlabelled ones.
Files are stored as they are and each is checked once with :meth:`Modality.decode`, in a child
process of the writer (:mod:`jepa.data.screening`), so a file that crashes or hangs the decoder is
skipped like one that does not decode; skipped files are listed in the manifest.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from jepa.data.manifest import Manifest, SkippedFile
from jepa.data.screening import DecodeScreen
from jepa.data.writer import ChunkJob, ShardSample, write_shard_set
from jepa.errors import DataError, PluginError
from jepa.interfaces import Modality
from jepa.text import printable


@dataclass(frozen=True)
class FolderListing:
    """The sample files found in a source folder. ``labels`` is None for a flat (unlabelled) folder."""

    root: Path
    files: list[Path]  # relative to root, sorted
    exts: list[str]  # the shard key (extension) each file's bytes are stored under
    labels: list[int] | None
    classes: list[str] | None
    ignored_files: int


def _is_hidden(path: Path) -> bool:
    return any(part.startswith(".") for part in path.parts)


def _is_file_or_link(path: Path) -> bool:
    """A file, or a symbolic link that does not lead to a folder: a broken link (a dataset that is not
    mounted, a link loop) is listed, so reading it fails and it is reported as skipped, never dropped silently."""
    return path.is_file() or (path.is_symlink() and not path.is_dir())


def _ext_of(path: Path, suffixes: Mapping[str, str]) -> str | None:
    """The shard key of ``path`` (its longest matching suffix, case-insensitive), None if it is no sample."""
    name = path.name.lower()
    found = [s for s in suffixes if name.endswith(s) and len(name) > len(s)]
    return suffixes[max(found, key=len)] if found else None


def list_folder(src: str | Path, suffixes: Mapping[str, str], modality: str = "?") -> FolderListing:
    """Find the sample files of ``src``: class sub-folders (labels = index of the sorted class names) or flat.

    Args:
        src: the source folder.
        suffixes: lower-case file suffixes with the dot -> shard key (``Modality.file_suffixes()``).
        modality: the modality's name, for messages.

    Raises:
        ValueError: ``src`` is missing, holds no sample files, or mixes top-level files with class folders.
    """
    bad = [s for s in suffixes if not (s.startswith(".") and len(s) > 1 and s == s.lower())]
    if not suffixes or bad:
        raise PluginError(f"modality {modality!r}: file_suffixes() must map lower-case suffixes with their dot "
                         f"('.jpg') to shard keys; got {dict(suffixes)!r}")
    kinds = ", ".join(suffixes)
    root = Path(src)
    if not root.is_dir():
        raise DataError(f"{printable(str(root))} is not a folder; pass a folder of files of modality {modality!r} "
                         f"({kinds}) or of class sub-folders holding them")
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    class_dirs = [p for p in entries if p.is_dir()]
    top_files = [p for p in entries if _is_file_or_link(p)]
    top_samples = [p for p in top_files if _ext_of(p, suffixes)]
    if class_dirs and top_samples:
        raise DataError(f"{printable(str(root))} mixes {len(top_samples)} files of modality {modality!r} "
                         f"(e.g. {printable(top_samples[0].name)}) with class folders "
                         f"(e.g. {printable(class_dirs[0].name)}/); move the files into a class folder, or point at a "
                         "flat folder")
    ignored = len(top_files) - len(top_samples)
    files: list[Path] = []
    labels: list[int] | None = None
    classes: list[str] | None = None
    if class_dirs:
        classes, labels = [d.name for d in class_dirs], []
        for label, d in enumerate(class_dirs):
            found = sorted(p for p in d.rglob("*") if _is_file_or_link(p) and not _is_hidden(p.relative_to(root)))
            samples = [p for p in found if _ext_of(p, suffixes)]
            ignored += len(found) - len(samples)
            files += [p.relative_to(root) for p in samples]
            labels += [label] * len(samples)
    else:
        files = [p.relative_to(root) for p in top_samples]
    if not files:
        raise DataError(f"no files of modality {modality!r} ({kinds}) found in {printable(str(root))}")
    return FolderListing(root, files, [_ext_of(f, suffixes) or "" for f in files], labels, classes, ignored)


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
    """Chunk job: read, check and yield some files of a folder (picklable for the process pool:
    the bound modality is its pydantic config plus a class importable by module path)."""

    modality: Modality
    root: str
    files: tuple[str, ...]
    exts: tuple[str, ...]
    keys: tuple[str, ...]
    labels: tuple[int, ...] | None

    def __call__(self) -> Iterator[ShardSample | SkippedFile]:
        with DecodeScreen(self.modality) as screen:  # the training decoder must read it, and may crash on it
            for i, (rel, ext, key) in enumerate(zip(self.files, self.exts, self.keys)):
                try:
                    data = Path(self.root, rel).read_bytes()
                except OSError as exc:
                    path = Path(self.root, rel)
                    link = f" (a broken symbolic link to {os.readlink(path)})" if path.is_symlink() else ""
                    yield SkippedFile(rel, f"{type(exc).__name__}: {exc.strerror or exc}{link}")
                    continue
                problem = screen.check({"__key__": key, ext: data})
                if problem is not None:
                    yield SkippedFile(rel, problem)
                    continue
                yield ShardSample(key, ext, data, None if self.labels is None else self.labels[i])


def shard_folder(src: str | Path, out_dir: str | Path, modality: Modality, *, prefix: str = "shard",
                 max_count: int = 1000, max_bytes: int = 1 << 30, workers: int = 1,
                 show_progress: bool = True) -> Manifest:
    """Write a folder of ``modality``'s sample files as shards: see :func:`list_folder` and
    :func:`~jepa.data.writer.write_shard_set`.

    Raises:
        MissingHookError: the modality does not name its files (no ``file_suffixes``).
        ValueError: see :func:`list_folder` and :func:`~jepa.data.writer.write_shard_set`.
    """
    out, root = Path(out_dir).resolve(), Path(src).resolve()
    if out == root or root in out.parents:
        raise DataError(f"the output folder {printable(str(out_dir))} is inside the source folder {printable(str(src))}: "
                         "its shards would be read back as samples (or as a class) next time; write them outside, "
                         "e.g. next to it")
    listing = list_folder(src, modality.file_suffixes(), modality.name)
    keys = sample_keys(listing.files)
    jobs: list[ChunkJob] = []
    for start in range(0, len(listing.files), max_count):
        stop = start + max_count
        jobs.append(_FolderChunk(
            modality, str(listing.root), tuple(str(f) for f in listing.files[start:stop]),
            tuple(listing.exts[start:stop]), tuple(keys[start:stop]),
            None if listing.labels is None else tuple(listing.labels[start:stop]),
        ))
    return write_shard_set(jobs, out_dir, prefix=prefix, max_count=max_count, max_bytes=max_bytes, workers=workers,
                           classes=listing.classes, ignored_files=listing.ignored_files,
                           total_items=len(listing.files), show_progress=show_progress)
