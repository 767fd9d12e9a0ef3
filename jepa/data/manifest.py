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

import braceexpand

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


def is_local(url: str) -> bool:
    """True for a local path or ``file:`` URL; False for any other scheme (``http:``, ``pipe:``, ...)."""
    return url.startswith("file:") or not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", url)


def local_path(url: str) -> str:
    """The file path of a local shard URL (``file://`` or ``file:`` prefix removed)."""
    return re.sub(r"^file://?", "", url)


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
