"""Reading WebDataset tar shards: shard specs to URLs, and one shard's raw samples.

A shard that fails inside the tar reader (truncated, unreadable, failing pipe) raises one of
:data:`SHARD_ERRORS`; the samples yielded before it are complete. Python's stream reader alone
would end quietly on a file cut at a member boundary, so the end-of-archive marker is checked.

Sizes are bounded whatever a shard claims: a member larger than :data:`MAX_MEMBER_BYTES` is not
read into memory (its sample is marked as an error, so the loader skips and counts it), and a
shard whose stream (decompressed, for ``.tar.gz`` and the like) passes :data:`MAX_SHARD_BYTES`
is broken off as a broken shard, so a small compressed bomb cannot run on without end.

Which URLs may be opened is decided in one place, :func:`check_shard_url`, and every shard is
opened through :func:`open_shard`, which asks it first: local paths and ``file:`` URLs,
``http://`` and ``https://`` (read with ``curl``, no shell) and ``pipe:`` commands. Schemes are
read case-insensitively and around spaces (``" PIPE:cmd"`` is a ``pipe:`` URL), as URL parsers
read them; any other scheme is refused with a message. ``pipe:`` URLs run their text as a shell
command (webdataset's convention); a recipe or shard spec from someone else must be read before
it is used (see the README's "Security"), or such URLs refused altogether with the environment
variable ``JEPA_NO_PIPE=1``. The refusal is a check that always runs (no ``assert``), and
webdataset's own opener, which also honours URL-rewriting environment variables, is not used.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import tarfile
from typing import Any, Iterator

import braceexpand
from webdataset.gopen import gopen_curl, gopen_pipe
from webdataset.tariterators import base_plus_ext

from jepa.data.manifest import is_local, local_path, read_manifest, split_url
from jepa.errors import DataError
from jepa.text import printable

#: Errors of the tar reader / stream that mark a shard as broken (counted, warned, skipped).
SHARD_ERRORS: tuple[type[BaseException], ...] = (tarfile.TarError, OSError, EOFError)
#: Set this environment variable (to anything but "" or "0") to refuse ``pipe:`` shard URLs.
NO_PIPE_ENV = "JEPA_NO_PIPE"
#: Largest tar member read into memory (a sample's file); larger members are skipped unread.
MAX_MEMBER_BYTES = 1 << 30
#: Most bytes read from one shard's stream (after decompression) before it counts as broken.
MAX_SHARD_BYTES = 1 << 40
#: URL schemes of shards, besides plain local paths ("" below); see :func:`check_shard_url`.
SHARD_SCHEMES = ("file", "http", "https", "pipe")


def pipes_allowed() -> bool:
    """False when :data:`NO_PIPE_ENV` is set to anything but "" or "0"."""
    return os.environ.get(NO_PIPE_ENV, "").strip() in ("", "0")


def check_shard_url(url: str) -> tuple[str, str]:
    """The one decision on which shard URLs may be opened: ``(scheme, target)`` of an allowed one.

    ``scheme`` is ``""`` (a local path; ``target`` is the path, ``file:`` removed), ``"http"`` or
    ``"https"`` (``target`` is the URL), or ``"pipe"`` (``target`` is the shell command).

    Raises:
        ValueError: the scheme is not one of :data:`SHARD_SCHEMES`, or it is ``pipe`` and
            :data:`NO_PIPE_ENV` is set; the message names the URL and the fix.
    """
    scheme, rest = split_url(url)
    if scheme not in ("", *SHARD_SCHEMES):
        streamed = ("; or stream them with a pipe: command (e.g. pipe:aws s3 cp s3://bucket/shard-000000.tar -)"
                    if pipes_allowed() else "")
        raise DataError(f"{printable(repr(url))}: shard URLs of scheme {printable(scheme)}: are not supported; shards "
                         "are local paths (a file, a shard folder or a brace pattern), file:, http://, https:// or pipe: "
                         f"URLs; download the shards and point at the local copy{streamed} (a local file whose name "
                         "has a colon: write it as ./NAME)")
    if scheme == "pipe" and not pipes_allowed():
        raise DataError(f"{printable(repr(url))}: pipe: shard URLs run shell commands and {NO_PIPE_ENV} is set; use "
                         "local paths, shard folders or http(s):// URLs, or unset it if you trust this shard spec")
    if scheme in ("", "file"):
        return "", local_path(url)
    return scheme, rest if scheme == "pipe" else f"{scheme}:{rest}"


def open_shard(url: str) -> Any:
    """A binary stream of one shard, after :func:`check_shard_url`; no other code opens shard URLs.

    Raises:
        ValueError: see :func:`check_shard_url`.
        OSError: a local shard cannot be opened.
    """
    scheme, target = check_shard_url(url)
    if scheme == "":
        return open(target, "rb")
    if scheme == "pipe":
        return gopen_pipe(f"pipe:{target}", "rb")  # webdataset's pipe, with the spelling it expects
    return gopen_curl(target, "rb")


class _BoundedStream:
    """A read-only stream that raises ``tarfile.ReadError`` once more than ``limit`` bytes were read."""

    def __init__(self, raw: Any, limit: int):
        self.raw, self.limit, self.read_bytes = raw, limit, 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.read_bytes += len(data)
        if self.read_bytes > self.limit:
            raise tarfile.ReadError(f"the shard streams more than {self.limit:,} bytes (MAX_SHARD_BYTES); a "
                                    "decompression bomb or a runaway pipe")
        return data

    def close(self) -> None:
        self.raw.close()


def expand_shards(spec: str) -> list[str]:
    """Shard URLs of a shard spec: brace patterns, local paths, shard folders (the shards its
    manifest lists), ``http(s)://`` URLs and ``pipe:`` commands, several joined with ``'::'``.

    Raises:
        ValueError: the shard spec is empty, a URL is refused (:func:`check_shard_url`), or local
            shards do not exist.
    """
    urls: list[str] = []
    for part in spec.split("::"):
        part = part.strip()
        if not part:
            raise DataError(f"empty shard pattern in {printable(repr(spec))}; join patterns with '::' and leave "
                             "none empty")
        if is_local(part) and os.path.isdir(local_path(part)):
            urls += _folder_shards(local_path(part))
        else:
            urls += braceexpand.braceexpand(part)
    for url in urls:
        check_shard_url(url)
    missing = [u for u in urls if is_local(u) and not os.path.isfile(local_path(u))]
    if missing:
        raise DataError(f"{len(missing)} of {len(urls)} shards do not exist (first: {printable(missing[0])}); "
                         "check the shard pattern (brace ranges like shard-{000000..000099}.tar are expanded)")
    return urls


def _folder_shards(folder: str) -> list[str]:
    """The shards of a shard folder: its manifest's, else every ``*.tar`` in name order."""
    manifest = read_manifest(folder)
    names = [s.name for s in manifest.shards] if manifest is not None else sorted(
        f for f in os.listdir(folder) if f.endswith(".tar"))
    if not names:
        raise DataError(f"shard folder {printable(folder)} holds no .tar shards; write some with `jepa shards` or "
                         "`jepa demo-data`")
    return [os.path.join(folder, n) for n in names]


class _Prefixed:
    """A stream with bytes already read from it put back in front."""

    def __init__(self, head: bytes, raw: Any):
        self.head, self.raw = head, raw

    def read(self, size: int = -1) -> bytes:
        if not self.head:
            return self.raw.read(size)
        if size is None or size < 0:
            out, self.head = self.head + self.raw.read(), b""
            return out
        out, self.head = self.head[:size], self.head[size:]
        return out if len(out) == size else out + self.raw.read(size - len(out))

    def close(self) -> None:
        self.raw.close()


def _decompressed(fileobj: Any) -> Any:
    """The tar stream inside ``fileobj``: gzip, bzip2 and xz are decompressed here (not by tarfile),
    so that :data:`MAX_SHARD_BYTES` bounds the bytes *after* decompression."""
    head = fileobj.read(6)
    stream = _Prefixed(head, fileobj)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=stream, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(stream, mode="rb")
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(stream, mode="rb")
    return stream


def _tar_members(fileobj: Any) -> Iterator[tuple[str, bytes | None]]:
    """(name, bytes) of the regular files of a tar stream, checking that nothing is cut short;
    (name, None) for a member larger than :data:`MAX_MEMBER_BYTES` (skipped without reading it).

    Python's stream reader ends quietly on a file cut at a member boundary and returns short
    data for a member cut in the middle; both are raised here as ``tarfile.ReadError``.
    """
    tar = tarfile.open(fileobj=_BoundedStream(_decompressed(fileobj), MAX_SHARD_BYTES), mode="r|")
    for info in tar:
        if not info.isreg() or info.name.startswith("__"):
            continue
        if info.size > MAX_MEMBER_BYTES:
            tar.members = []
            yield info.name, None  # the reader skips its data when it moves on
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
        url: a shard URL (local path, ``file:``, ``http(s)://`` URL, ``pipe:`` command).
        limit: stop after this many samples without reading further.

    Raises:
        ValueError: the URL is refused (:func:`check_shard_url`).
        tarfile.TarError, OSError, EOFError: the shard is broken (see ``SHARD_ERRORS``); the
            samples yielded before are complete.
    """
    if limit is not None and limit <= 0:
        return
    stream = open_shard(url)
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
            if data is None:
                current["__error__"] = f"member {name} is larger than {MAX_MEMBER_BYTES:,} bytes (MAX_MEMBER_BYTES)"
                data = b""
            current[ext] = data
        if current is not None:
            yield current
    finally:
        stream.close()


def sample_where(sample: dict[str, Any]) -> str:
    """Names a raw sample in messages: its key and, when known, its shard."""
    where = f"sample {sample.get('__key__', '?')!r}" + (f" of {sample['__url__']}" if "__url__" in sample else "")
    return printable(where)


def sample_payload(sample: dict[str, Any], keys: tuple[str, ...], what: str) -> tuple[str, bytes | bytearray | memoryview]:
    """The first of ``keys`` present in a raw sample, and its non-empty bytes (decoders start here).

    Raises:
        ValueError: none of ``keys`` is present, or its value is empty or not bytes.
    """
    key = next((k for k in keys if k in sample), None)
    if key is None:
        found = sorted(k for k in sample if not k.startswith("__"))
        raise DataError(f"{sample_where(sample)} has no {what} (looked for {', '.join(keys)}; "
                         f"found {printable(repr(found))})")
    data = sample[key]
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise DataError(f"{sample_where(sample)}: {printable(repr(key))} is empty or not bytes")
    return key, data
