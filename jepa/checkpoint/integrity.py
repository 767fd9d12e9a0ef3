"""Integrity: a checkpoint is valid when every file its ``digests.json`` lists is there with that
size and SHA-256 (written last by :func:`~jepa.checkpoint.save.save_checkpoint`)."""

from __future__ import annotations

import hashlib
import re
import stat
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable

from jepa.checkpoint.json_file import read_json_object
from jepa.checkpoint.layout import DIGESTS_FILE, DIGESTS_VERSION, META_FILE, MODELS_FILE
from jepa.errors import CheckpointError

if TYPE_CHECKING:  # the engine imports DeepSpeed; this package only talks to its object
    from jepa.engine import Engine

_SHA256 = re.compile(r"[0-9a-f]{64}")


def file_digest(path: Path) -> str:
    """SHA-256 of a file, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def checkpoint_files(directory: Path) -> list[str]:
    """Paths (relative, '/'-separated, sorted) of every file of a checkpoint but its digests."""
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                  if p.is_file() and p.name != DIGESTS_FILE)


def _name_inside(name: str) -> bool:
    """Whether a digest table's file name is a relative path inside the checkpoint."""
    parts = PurePosixPath(name).parts
    return bool(parts) and not name.startswith("/") and "\0" not in name and ".." not in parts


def _table_problem(table: dict[str, Any]) -> str | None:
    """What is wrong with the shape of a digests table, or None."""
    version, algorithm, files = table.get("format_version"), table.get("algorithm"), table.get("files")
    if version != DIGESTS_VERSION or algorithm != "sha256":
        return f"format_version {version!r}, algorithm {algorithm!r}; this jepa writes {DIGESTS_VERSION}, 'sha256'"
    if not isinstance(files, dict):
        return f"its 'files' is {type(files).__name__}, not an object of files"
    for name, entry in files.items():
        if not _name_inside(name):
            return f"it lists {name[:200]!r}, which is not a path inside the checkpoint"
        size = entry.get("size") if isinstance(entry, dict) else None
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if type(size) is not int or size < 0 or not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            return f"its entry for {name[:200]!r} is not {{\"size\": bytes, \"sha256\": 64 hex digits}}"
    return None


def read_digests(directory: Path) -> dict[str, dict[str, Any]]:
    """The ``files`` table of a checkpoint's digests.json (names inside the checkpoint, each with
    an int ``size`` and a hex ``sha256``).

    Raises:
        ValueError: it is missing, unreadable (not a regular file, not JSON, nested too deeply) or
            not a digests table; the message names the file. Verification turns this into a
            problem of the checkpoint, so ``--resume auto`` falls back with a warning.
    """
    path = directory / DIGESTS_FILE
    try:
        table = read_json_object(path, "the checkpoint's digests")
    except FileNotFoundError:
        raise CheckpointError(f"no {DIGESTS_FILE}, so its files cannot be verified (written by an older jepa, or copied "
                         "incompletely)") from None
    problem = _table_problem(table)
    if problem:
        raise CheckpointError(f"{path}: not a digests table of this jepa ({problem})")
    return table["files"]


def file_problem(directory: Path, name: str, expected: Any) -> str | None:
    """Why ``directory/name`` does not match its digest entry, or None."""
    path = directory / name
    try:
        info = path.stat()
    except OSError:
        return f"{name} is missing"
    if not stat.S_ISREG(info.st_mode):  # a named pipe would block the hashing for ever
        return f"{name} is not a regular file"
    size = info.st_size
    if not isinstance(expected, dict) or size != expected.get("size"):
        return f"{name} has {size} bytes, {DIGESTS_FILE} says {expected.get('size') if isinstance(expected, dict) else '?'}"
    if file_digest(path) != expected.get("sha256"):
        return f"{name} does not match its SHA-256 (the file changed after it was written)"
    return None


def verify_checkpoint(directory: Path, only: Callable[[int], bool] = lambda i: True) -> list[str]:
    """Problems that make a checkpoint invalid (empty when every file matches its digest).

    Args:
        directory: a complete checkpoint directory.
        only: which files (by index in the sorted digest table) to hash, so that ranks can share
            the work; sizes and presence are checked for every file.
    """
    try:
        files = read_digests(directory)
    except ValueError as exc:
        return [str(exc)]
    problems = [f"{name} is not listed in {DIGESTS_FILE}" for name in (MODELS_FILE, META_FILE) if name not in files]
    for i, name in enumerate(sorted(files)):
        expected = files[name]
        if not only(i):
            path = directory / name
            if not path.is_file():
                problems.append(f"{name} is missing")
            elif not isinstance(expected, dict) or path.stat().st_size != expected.get("size"):
                problems.append(f"{name} has another size than {DIGESTS_FILE} says")
            continue
        problem = file_problem(directory, name, expected)
        if problem:
            problems.append(problem)
    return problems


def verify_collectively(engine: Engine, directory: Path) -> list[str]:
    """:func:`verify_checkpoint` with the hashing shared by the ranks; every rank gets every problem."""
    world, rank = engine.dist.world_size, engine.dist.rank
    mine = verify_checkpoint(directory, only=lambda i: i % world == rank)
    return sorted({p for problems in engine.all_gather_object(mine) for p in problems})


def models_problems(directory: Path) -> list[str]:
    """Problems of a checkpoint's ``models.pt`` (what export and evaluation read)."""
    try:
        files = read_digests(directory)
    except ValueError as exc:
        return [str(exc)]
    if MODELS_FILE not in files:
        return [f"{MODELS_FILE} is not listed in {DIGESTS_FILE}"]
    problem = file_problem(directory, MODELS_FILE, files[MODELS_FILE])
    return [problem] if problem else []


def verify_models(directory: Path) -> None:
    problems = models_problems(directory)
    if problems:
        raise CheckpointError(f"{directory}: the checkpoint is invalid: {'; '.join(problems)}; use another checkpoint "
                         "(pass the run directory to take the newest valid one)")
