"""Write tar files (WebDataset shards, or anything tar-shaped) for tests."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    """Write ``members`` (name -> bytes, in order) as the plain tar ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def labelled_members(samples: list[tuple[str, str, bytes, int]]) -> dict[str, bytes]:
    """Shard members of ``(key, extension, data, label)`` samples: ``key.ext`` and ``key.cls`` each."""
    members = {}
    for key, ext, data, label in samples:
        members[f"{key}.{ext}"] = data
        members[f"{key}.cls"] = str(label).encode()
    return members
