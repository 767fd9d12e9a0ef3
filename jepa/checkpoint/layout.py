"""Where a run's checkpoints are and which one to take: names, complete checkpoints, the order
``--resume auto`` tries them in, and the first valid one (file names are public API)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable

from jepa.errors import CheckpointError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DIGESTS_VERSION = 1
CHECKPOINTS = "checkpoints"
MODELS_FILE = "models.pt"
META_FILE = "meta.json"
DIGESTS_FILE = "digests.json"
LATEST_FILE = "latest"
_STEP_DIR = re.compile(r"^step_(\d{6,})$")
#: Scratch directory next to a checkpoint resumed on another number of processes (jepa.checkpoint.resize).
RESHARD_SUFFIX = ".reshard.tmp"


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def complete_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first (``*.tmp`` directories are incomplete and ignored)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and (child / MODELS_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def newest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = complete_checkpoints(run_dir)
    return found[-1][1] if found else None


def resume_candidates(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints in the order ``--resume auto`` tries them: the one ``latest`` names
    (the last one written, also after a run resumed from an older checkpoint), then newest first."""
    found = [path for _, path in reversed(complete_checkpoints(run_dir))]
    latest = Path(run_dir) / CHECKPOINTS / LATEST_FILE
    try:
        named = latest.read_text().strip() if latest.is_file() else ""  # not a named pipe: reading it would block
    except (OSError, UnicodeDecodeError):
        return found
    first = [p for p in found if p.name == named]
    return first + [p for p in found if p.name != named]


def first_valid(candidates: list[Path], verify: Callable[[Path], list[str]], what: str) -> Path | None:
    """The first candidate without problems, warning about each one skipped (None if there are none)."""
    skipped = []
    for path in candidates:
        problems = verify(path)
        if not problems:
            for line in skipped:
                log.warning("%s: skipped %s", what, line)
            if skipped:
                log.warning("%s: resuming from %s", what, path)
            return path
        skipped.append(f"{path.name}: {'; '.join(problems)}")
    if skipped:
        raise CheckpointError(f"{what}: no valid checkpoint ({' | '.join(skipped)}); move the broken checkpoints out of "
                         "the run directory to start over, or restore them")
    return None


def checkpoint_dir(path: Path, what: str) -> Path:
    """A complete checkpoint directory from a checkpoint or run directory path."""
    if not path.exists():
        raise CheckpointError(f"{what} {path}: no such file or directory; pass a run directory or a checkpoint directory")
    if path.is_dir() and path.name.endswith(".tmp"):
        raise CheckpointError(f"{what} {path}: an incomplete checkpoint (a save interrupted mid-write); "
                         "pass the run directory to use its newest complete checkpoint")
    if path.is_dir() and (path / MODELS_FILE).is_file():
        return path
    if path.is_dir():
        newest = newest_checkpoint(path)
        if newest is None:
            raise CheckpointError(f"{what} {path}: no complete checkpoint in this directory (looked for "
                             f"{CHECKPOINTS}/step_NNNNNN/{MODELS_FILE}); is it a run directory of `jepa train`?")
        return newest
    raise CheckpointError(f"{what} {path}: not a directory; pass a run directory or a checkpoint directory")
