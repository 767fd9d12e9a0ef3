"""Reading WebDataset tar shards: shard specs to URLs, and one shard's raw samples.

A shard that fails inside the tar reader (truncated, unreadable, failing pipe) raises one of
:data:`SHARD_ERRORS`; the samples yielded before it are complete. Python's stream reader alone
would end quietly on a file cut at a member boundary, so the end-of-archive marker is checked.
"""

from __future__ import annotations

import os
import tarfile
from typing import Any, Iterator

import braceexpand
from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext

from jepa.data.manifest import is_local, local_path, read_manifest

#: Errors of the tar reader / stream that mark a shard as broken (counted, warned, skipped).
SHARD_ERRORS: tuple[type[BaseException], ...] = (tarfile.TarError, OSError, EOFError)


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
        if is_local(part) and os.path.isdir(part):
            urls += _folder_shards(part)
        else:
            urls += braceexpand.braceexpand(part)
    missing = [u for u in urls if is_local(u) and not os.path.isfile(local_path(u))]
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
