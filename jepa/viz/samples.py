"""A few decoded samples to draw: from shards or a folder (spread over the set, so that class-sorted
data shows several classes), or generated with the modality's demo-data hook."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from jepa.data import (
    MANIFEST_NAME, SHARD_ERRORS, expand_shards, is_local, list_folder, read_manifest, read_shard, sample_keys,
)
from jepa.data.screening import DecodeScreen
from jepa.errors import ConfigError, DataError
from jepa.eval.labels import label_of
from jepa.interfaces import Modality

SPREAD = 16
"""Raw samples read per sample shown: the shown ones are spread evenly over them."""


@dataclass
class Samples:
    """Decoded samples and what is known of them.

    Attributes:
        items: what ``modality.decode`` returned, one per sample.
        labels: each sample's class number, or None when the set has no labels.
        keys: each sample's key (shards) or file (folders), for captions.
        classes: class names of the set, when it names them.
        source: where they came from, for titles.
    """

    items: list[Any]
    labels: list[int | None]
    keys: list[str]
    classes: list[str] | None
    source: str

    def label_name(self, i: int) -> str:
        label = self.labels[i]
        if label is None:
            return ""
        return self.classes[label] if self.classes and label < len(self.classes) else str(label)


def _spread(n: int, count: int) -> list[int]:
    """``count`` (at most ``n``) positions spread evenly over ``range(n)``, then the rest in order."""
    first = sorted({round(i * (n - 1) / max(1, count - 1)) for i in range(min(count, n))}) if n else []
    return first + [i for i in range(n) if i not in set(first)]


def _label(sample: dict[str, Any], num_classes: int | None) -> int | None:
    if "cls" not in sample:
        return None
    try:
        return label_of(sample, num_classes)
    except ValueError:
        return None


def _class_by_class(labels: list[int | None]) -> list[int]:
    """Positions ordered class by class (the first sample of every class, then the second, ...), so that a few
    samples show several classes whether a set is sorted by class or cycles through them."""
    seen: dict[int | None, int] = {}
    rank = []
    for label in labels:
        rank.append(seen.get(label, 0))
        seen[label] = rank[-1] + 1
    return sorted(range(len(labels)), key=lambda i: (rank[i], -1 if labels[i] is None else labels[i]))


def _decode_first(modality: Modality, raws: list[dict[str, Any]], count: int, classes: list[str] | None,
                  source: str) -> Samples:
    items, labels, keys = [], [], []
    raw_labels = [_label(raw, len(classes) if classes else None) for raw in raws]
    order = _class_by_class(raw_labels) if any(label is not None for label in raw_labels) else _spread(len(raws), count)
    for i in order:
        if len(items) == count:
            break
        raw = raws[i]
        if "__error__" in raw:
            continue
        try:
            items.append(modality.decode(raw))
        except ValueError:
            continue
        labels.append(raw_labels[i])
        keys.append(str(raw.get("__key__", i)))
    if not items:
        raise DataError(f"{source}: none of the first {len(raws)} samples decodes as modality {modality.name!r}; "
                         "check the data")
    return Samples(items, labels, keys, classes, source)


def _shard_samples(spec: str, modality: Modality, count: int) -> Samples:
    try:
        manifest = read_manifest(spec)
    except ValueError:
        manifest = None
    raws: list[dict[str, Any]] = []
    for url in expand_shards(spec):
        try:
            raws += read_shard(url, limit=count * SPREAD - len(raws))
        except SHARD_ERRORS as exc:
            raise DataError(f"shard {url} is unreadable ({type(exc).__name__}: {exc}); rewrite it") from exc
        if len(raws) >= count * SPREAD:
            break
    return _decode_first(modality, raws, count, manifest.classes if manifest and manifest.classes else None, spec)


def _folder_samples(root: Path, modality: Modality, count: int) -> Samples:
    """Files of a folder (flat or of class sub-folders), each checked to decode in a child process first
    (as ``jepa shards`` and ``jepa eval`` do), so a file that crashes the decoder is skipped."""
    listing = list_folder(root, modality.file_suffixes(), modality.name)
    picked = _spread(len(listing.files), count)[:count * SPREAD]
    keys = sample_keys(listing.files)
    raws = []
    with DecodeScreen(modality) as screen:
        for i in picked:
            if len(raws) == count:
                break
            path = root / listing.files[i]
            try:
                raw: dict[str, Any] = {"__key__": keys[i], "__url__": str(path), listing.exts[i]: path.read_bytes()}
            except OSError:
                continue
            if screen.check(raw) is None:
                if listing.labels is not None:
                    raw["cls"] = str(listing.labels[i]).encode()
                raws.append(raw)
    return _decode_first(modality, raws, count, listing.classes, str(root))


def read_samples(spec: str, modality: Modality, count: int) -> Samples:
    """``count`` decoded samples of a shard spec (folder, brace pattern, URLs) or a folder of files.

    Raises:
        ValueError: nothing there, or nothing that decodes.
    """
    if count < 1:
        raise ConfigError(f"--num must be >= 1, got {count}")
    path = Path(spec)
    if "::" not in spec and is_local(spec) and path.is_dir() and not (path / MANIFEST_NAME).is_file() \
            and not any(p.name.endswith(".tar") for p in path.iterdir()):
        return _folder_samples(path, modality, count)
    return _shard_samples(spec, modality, count)


def generated_samples(modality: Modality, count: int, seed: int = 0) -> Samples:
    """``count`` samples of the modality's demo data (``write_demo_data``), generated in a temporary folder.

    Raises:
        MissingHookError: the modality has no ``write_demo_data``.
    """
    with tempfile.TemporaryDirectory(prefix="jepa_viz_") as tmp:
        spec = replace(modality.demo_defaults, num_train=max(count, 1), num_val=1, seed=seed, workers=1)
        modality.write_demo_data(Path(tmp), spec)
        samples = read_samples(str(Path(tmp) / "train"), modality, count)
    samples.source = f"generated {modality.name} demo data (seed {seed})"
    return samples
