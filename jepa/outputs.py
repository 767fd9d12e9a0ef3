"""Files and folders ``jepa`` writes: what an output path may replace, how a write that runs out
of space is reported, and how our own folders are removed again.

* :func:`check_output_file`, before any work: a user-named output path that exists must be a
  regular file (or a link to one), because it is replaced (atomically, or overwritten). A folder,
  named pipe, device or socket there is refused: an atomic replace would turn ``/dev/full`` into
  a zip file, and a write into a FIFO blocks until someone reads it.
* :func:`write_errors`: torch's writers (``torch.save``, and DeepSpeed through it) report a full
  disk as a ``RuntimeError`` of their zip writer, safetensors as a ``SafetensorError``, not an
  ``OSError``; it becomes an ``OSError`` naming the file, like every other failed write.
* :func:`remove_tree`: removes a folder we wrote, or a symbolic link standing in its place (a
  checkpoint restored with ``ln -s``): the link only, never what it points to.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from jepa.errors import ConfigError

NEARLY_FULL_BYTES = 64 * 2**20
"""A failed write on a filesystem with less than this available is reported as ENOSPC."""

# What torch's zip writer (caffe2 PyTorchStreamWriter) says when a write fails (ENOSPC, EDQUOT, EIO).
_TORCH_WRITE_FAILURES = ("PytorchStreamWriter failed", "file write failed", "unexpected pos")
# safetensors (Rust) says "Error while serializing: I/O error: No space left on device (os error 28)".
_SAFETENSORS_IO_ERROR = "I/O error: "
_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "an existing folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_output_file(path: str | Path, flag: str, example: str = "out.json", *, folders: bool = False) -> Path:
    """Refuse an output path that cannot be replaced by a file, before any work is done.

    Args:
        path: the output the user named (a new path, or an existing regular file to replace).
        flag: how the user named it, for the message (``"--out"``, ``"--json"``).
        example: a file name to suggest inside an existing folder.
        folders: the output may also be a new folder (export formats such as ``timm``), said in the message.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``path`` (or what its symbolic link points to) is a folder, named pipe,
            device or socket, or something other than a folder stands where one of its parent
            folders should be.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode  # follows links: a link to a device is a device
    except (FileNotFoundError, NotADirectoryError):  # new (or a dangling link, replaced); parents below
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        kind = _kind(mode)
        link = f" (a symbolic link to {os.path.realpath(path)})" if path.is_symlink() else ""
        if stat.S_ISDIR(mode):
            raise ConfigError(f"{flag} {path}{link} is {kind}; name the file{' or new folder' if folders else ''} to "
                             f"write, e.g. {flag} {path / example}")
        raise ConfigError(f"{flag} {path}{link} is {kind}, not a regular file, and writing would replace or block on "
                         f"it; name a new file or a regular file to overwrite")
    for parent in path.parents:
        try:
            parent_mode = parent.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        if not stat.S_ISDIR(parent_mode):
            kind = "a file" if stat.S_ISREG(parent_mode) else _kind(parent_mode)
            raise ConfigError(f"{flag} {path}: {parent} is {kind}, not a folder; write the output elsewhere")
        break
    return path


def _available_bytes(path: Path) -> int | None:
    for folder in (path, *path.parents):
        try:
            st = os.statvfs(folder)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize
    return None


def write_failure(path: str | Path, what: str, elsewhere: str, exc: BaseException) -> OSError:
    """The ``OSError`` for a write of ``path`` that a library reported as ``exc`` (see :func:`write_errors`).

    The operating system's error number where the message carries it (safetensors: ``(os error
    28)``); else (torch says only that the write failed) ENOSPC when the filesystem is (nearly)
    full, EIO otherwise (a quota, a failing disk). The message names what was written and, but for
    ENOSPC (where the CLI adds it), the fix.
    """
    path = Path(path)
    text = str(exc).strip()
    detail = (text.splitlines() or [type(exc).__name__])[0][:200]
    os_error = _OS_ERROR.search(text)
    if os_error:
        code = int(os_error.group(1))
    else:
        available = _available_bytes(path)
        code = errno.ENOSPC if available is not None and available < NEARLY_FULL_BYTES else errno.EIO
    if code == errno.ENOSPC:
        return OSError(code, f"no space left on device while writing {what} ({detail})", str(path))
    return OSError(code, f"writing {what} failed ({detail}): the disk is full, over quota or failing; free some "
                         f"space or point {elsewhere} elsewhere", str(path))


@contextmanager
def write_errors(path: str | Path, what: str, elsewhere: str) -> Iterator[None]:
    """Turn a failed write inside the block that a library does not report as ``OSError`` into one
    naming ``path``: torch's ``RuntimeError`` of its zip writer, safetensors' ``I/O error``.

    Args:
        path: the file or folder being written (named in the message).
        what: what it is, e.g. ``"the checkpoint"``.
        elsewhere: where the user can point the output instead, e.g. ``"run_dir"`` or ``"--out"``.

    Every other exception passes unchanged (a bug, or a collective that failed).
    """
    try:
        yield
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is a failed write
        text = str(exc)
        torch_write = isinstance(exc, RuntimeError) and any(t in text for t in _TORCH_WRITE_FAILURES)
        safetensors_write = type(exc).__name__ == "SafetensorError" and _SAFETENSORS_IO_ERROR in text
        if not (torch_write or safetensors_write):
            raise
        raise write_failure(path, what, elsewhere, exc) from exc


def remove_tree(path: str | Path) -> None:
    """Remove a folder we wrote; a symbolic link (or file) there is unlinked, never followed.

    A missing ``path`` is fine (nothing to remove).
    """
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path)
