"""Reading the small JSON files of a run directory (``digests.json``, ``meta.json``,
``best/best.json``, ``run.lock``): whatever is in the file, the answer is a JSON object or one
``ValueError`` naming the file.

A file there may be damaged (a crash, a disk error, a bad copy) or written by someone else: it
may be no regular file (a named pipe would block the read for ever), huge, not UTF-8, not JSON,
nested deeper than Python's JSON parser can recurse (``RecursionError``), or JSON of another
shape (a list where an object belongs). Callers check the fields they read.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from jepa.errors import CheckpointError

MAX_JSON_BYTES = 64 * 2**20
"""Larger files are refused unread (a digests table of 100 000 files is about 15 MiB)."""

_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """The JSON object stored in ``path``.

    Args:
        path: the file.
        what: what it is, for the message (e.g. ``"the checkpoint's digests"``).

    Raises:
        FileNotFoundError: there is no such file (callers decide what that means).
        ValueError: anything else: ``"{path}: cannot read {what} (why)"``; callers add the fix.
    """
    path = Path(path)
    problem = None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a named pipe must not block the open
    except FileNotFoundError:
        raise  # the caller's to name; every other failure is a ValueError
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            problem = "not a regular file"
        elif info.st_size > MAX_JSON_BYTES:
            problem = f"{info.st_size} bytes, more than the {MAX_JSON_BYTES // 2**20} MiB such a file can hold"
        else:
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read(MAX_JSON_BYTES + 1)
            if len(data) > MAX_JSON_BYTES:  # grew since
                problem = f"more than the {MAX_JSON_BYTES // 2**20} MiB such a file can hold"
    except OSError as exc:
        problem = exc.strerror or str(exc)
    finally:
        os.close(fd)
    if problem is None:
        table, problem = parse_json_object(data)
    if problem is not None:
        raise CheckpointError(f"{path}: cannot read {what} ({problem})")
    return table


def parse_json_object(data: str | bytes) -> tuple[dict[str, Any], None] | tuple[None, str]:
    """The JSON object in ``data`` (bytes: UTF-8), or ``None`` and why there is none (not UTF-8, not JSON,
    nested too deeply, JSON of another kind), for the caller's message."""
    try:
        value = json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except RecursionError:
        return None, "JSON nested too deeply"
    except ValueError as exc:
        return None, f"not JSON: {exc}"
    if not isinstance(value, dict):
        return None, f"a JSON {_JSON_KINDS.get(type(value), 'value')} where an object belongs"
    return value, None
