"""What a shard set holds: its ``manifest.json``, and where shard URLs point.

A shard set is a folder holding ``PREFIX-000000.tar``, ``PREFIX-000001.tar``, ... and a
``manifest.json`` that lists every shard with its sample count, the total, the class names
(when samples are labelled) and the source files that were skipped. This module is the one
place that reads manifests, counts the samples of shard URLs from them and tells local shard
URLs from remote ones.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import braceexpand
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from jepa.errors import DataError
from jepa.text import printable

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1

#: What URL parsers strip around a URL before reading its scheme: C0 control characters and space.
_URL_SPACE = "".join(map(chr, range(0x21)))
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


def split_url(url: str) -> tuple[str, str]:
    """``(scheme, rest)`` of a shard URL: the scheme lower-case and without its colon (``"pipe"``,
    ``"http"``, ``"file"``), ``""`` for a plain path; ``rest`` is the text after ``scheme:``.

    The scheme is read as URL parsers read it (webdataset's included): case-insensitively and
    after the control characters and spaces around the URL, so ``" PIPE:cmd"`` is a ``pipe``
    URL. A scheme is letters, digits, ``+``, ``.`` and ``-`` starting with a letter, so a path
    such as ``data/a:b.tar`` or ``./a:b.tar`` has none.
    """
    text = url.strip(_URL_SPACE)
    match = _SCHEME.match(text)
    if match is None:
        return "", url
    return match.group(1).lower(), text[match.end():]


def is_local(url: str) -> bool:
    """True for a local path or ``file:`` URL; False for any other scheme (``http:``, ``pipe:``, ...)."""
    return split_url(url)[0] in ("", "file")


def local_path(url: str) -> str:
    """The file path of a local shard URL (``file://`` or ``file:`` prefix removed)."""
    scheme, rest = split_url(url)
    if scheme != "file":
        return url
    return rest[2:] if rest.startswith("//") else rest


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
        """Read a ``manifest.json``, checking its structure (a manifest is data: it may be damaged
        or made by someone else).

        Raises:
            ValueError: the file is not valid JSON, not a jepa shard manifest, of an unknown
                version, or a field is missing, unknown, of the wrong type or inconsistent; the
                message names the file and the field.
        """
        raw = _read_json(Path(path))
        if raw.get("format") != "jepa-shards" or raw.get("version") != MANIFEST_VERSION:
            raise DataError(f"{_shown(path)}: not a version-{MANIFEST_VERSION} jepa shard manifest "
                             f"(format={_short(raw.get('format'))}, version={_short(raw.get('version'))}); "
                             "rewrite it with `jepa shards`")
        try:
            checked = _ManifestFile.model_validate(raw, strict=True)
        except ValidationError as exc:
            errors = exc.errors()
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'top level'}: {e['msg']}" for e in errors[:3])
            problems += f"; and {len(errors) - 3} more" if len(errors) > 3 else ""
            raise DataError(f"{_shown(path)}: not a valid jepa shard manifest ({printable(problems)}); "
                             "rewrite it with `jepa shards`") from None
        manifest = cls(
            prefix=checked.prefix, shards=[ShardInfo(s.name, s.count, s.bytes) for s in checked.shards],
            classes=checked.classes, skipped=[SkippedFile(s.path, s.error) for s in checked.skipped],
            ignored_files=checked.ignored_files,
        )
        derived = {"total": manifest.total, "num_shards": len(manifest.shards), "pattern": manifest.pattern}
        wrong = [f"{k} is {_short(raw[k])} but the shards give {_short(v)}"
                 for k, v in derived.items() if raw[k] != v]
        if wrong:
            raise DataError(f"{_shown(path)}: inconsistent jepa shard manifest ({'; '.join(wrong)}); "
                             "rewrite it with `jepa shards`")
        return manifest


def _shown(path: str | Path) -> str:
    return printable(str(path))


def _short(value: Any) -> str:
    """A value of a manifest, quoted for a message (at most 60 characters)."""
    text = repr(value)
    return printable(text if len(text) <= 60 else text[:57] + "...")


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``.

    Raises:
        ValueError: the file is not UTF-8 JSON, repeats a key or holds something else than an object.
    """
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) < len(pairs):
            seen: set[str] = set()
            repeated = next(k for k, _ in pairs if k in seen or seen.add(k))
            raise DataError(f"{_shown(path)}: key {_short(repeated)} appears twice; "
                             "rewrite it with `jepa shards`")
        return out

    try:
        raw = json.loads(path.read_bytes().decode("utf-8"), object_pairs_hook=no_duplicates)
    except UnicodeDecodeError as exc:
        raise DataError(f"{_shown(path)}: not a jepa shard manifest (not UTF-8 text: {exc.reason} at byte {exc.start}); "
                         "rewrite it with `jepa shards`") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{_shown(path)}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                         "rewrite it with `jepa shards`") from None
    except RecursionError:
        raise DataError(f"{_shown(path)}: not a jepa shard manifest (nested too deeply); "
                         "rewrite it with `jepa shards`") from None
    if not isinstance(raw, dict):
        kind = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(raw), "null")
        raise DataError(f"{_shown(path)}: holds a JSON {kind} where a manifest object is expected; "
                         "rewrite it with `jepa shards`")
    return raw


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _ShardEntry(_Strict):
    name: str
    count: int = Field(ge=0)
    bytes: int = Field(ge=0)

    @field_validator("name")
    @classmethod
    def _in_folder(cls, name: str) -> str:
        """A shard of a manifest is a file beside it, never a path elsewhere."""
        if "/" in name or "\x00" in name or not name.endswith(".tar") or name == ".tar":
            raise DataError("must be the name of a .tar file in the manifest's folder (no '/')")
        return name


class _SkippedEntry(_Strict):
    path: str
    error: str


class _ManifestFile(_Strict):
    """The structure of ``manifest.json`` as :meth:`Manifest.to_json` writes it."""

    format: str
    version: int
    prefix: str
    pattern: str
    total: int
    num_shards: int
    classes: Optional[list[str]]
    shards: list[_ShardEntry]
    skipped: list[_SkippedEntry]
    ignored_files: int = Field(ge=0)


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
        if not is_local(first):
            return None  # remote shards: no manifest to read
        path = Path(local_path(first)).parent / MANIFEST_NAME
    return Manifest.load(path) if path.is_file() else None


def shards_total(urls: list[str]) -> int | None:
    """Samples in local shards according to their folders' manifests; None when any is unknown
    (a remote shard, a folder without manifest, a shard its manifest does not list)."""
    total = 0
    counts: dict[str, dict[str, int] | None] = {}
    for url in urls:
        if not is_local(url):
            return None
        folder, name = os.path.split(local_path(url))
        if folder not in counts:
            manifest = read_manifest(folder or ".")
            counts[folder] = manifest.counts() if manifest is not None else None
        known = counts[folder]
        if known is None or name not in known:
            return None
        total += known[name]
    return total
