"""The run-directory lock: one ``jepa train`` per run directory at a time.

Rank 0 creates ``RUN_DIR/run.lock`` (``O_EXCL``: exactly one process wins) holding its host,
pid, start time and Slurm job id, keeps its modification time fresh from a background thread
(:data:`HEARTBEAT_S`) and removes it when the run ends, however it ends. A second run into the
same directory is refused, naming the holder. A lock left by a process that is gone is *stale*
and is taken over with a warning naming it:

* the same host and its pid is no longer running (or is a different process now);
* an earlier start of the same Slurm job (a requeued job keeps its id, with a higher restart count);
* another host, and its heartbeat is older than :data:`STALE_AFTER_S` (the holder's machine died).

The directory must be on a filesystem every node sees, as for checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from jepa.checkpoint.json_file import read_json_object
from jepa.errors import ConfigError, UserError

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
HEARTBEAT_S = 30.0
"""How often the holder refreshes the lock's modification time."""
STALE_AFTER_S = 600.0
"""A lock of another host whose heartbeat is older than this is stale (clock skew and slow
shared filesystems leave a wide margin)."""


_MAX_PID = 2**22  # Linux's limit; a lock naming another number (0, -1: process groups) was not written by a process


def _pid_alive(pid: int, started: float) -> bool:
    """Whether ``pid`` runs on this host and is not a newer process that reused the number."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK") <= started + 1.0
    except (OSError, ValueError, IndexError, StopIteration):
        return True  # cannot tell: assume it is the holder


def _describe(owner: dict[str, Any]) -> str:
    started = owner.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    job = f", Slurm job {owner['slurm_job_id']}" if owner.get("slurm_job_id") else ""
    return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}{job}, started {when}"


def _stale_reason(owner: dict[str, Any], age_s: float) -> str | None:
    """Why the lock of ``owner`` (heartbeat ``age_s`` seconds ago) is stale, or None if its holder may live."""
    job, restart = os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_RESTART_COUNT", "0")
    if job and owner.get("slurm_job_id") == job and owner.get("slurm_restart_count") != restart:
        return f"it belongs to an earlier start of this Slurm job {job} (requeued since)"
    if owner.get("host") == socket.gethostname():
        pid, started = owner.get("pid"), owner.get("started")
        if type(started) not in (int, float):
            started = 0.0
        if type(pid) is not int or not 0 < pid <= _MAX_PID or not _pid_alive(pid, float(started)):
            return "that process is no longer running"
        return None
    if age_s > STALE_AFTER_S:
        return f"its heartbeat stopped {age_s / 60:.0f} minutes ago"
    return None


class RunLock:
    """The lock of one run directory, held by this process (see the module docstring).

    Use :meth:`acquire`; :meth:`release` when the run ends.
    """

    def __init__(self, path: Path, owner: dict[str, Any]):
        self.path, self.owner = path, owner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="jepa-run-lock", daemon=True)
        self._thread.start()

    @classmethod
    def acquire(cls, run_dir: Path) -> "RunLock":
        """Lock ``run_dir`` (created if missing) for this process.

        Raises:
            ValueError: another live run holds it (named), or ``run_dir`` is not a usable directory.
        """
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"run_dir {run_dir} is a file, not a directory; set run_dir to a directory")
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"run_dir {run_dir} cannot be created ({exc.strerror or exc}); set run_dir to a "
                             "writable directory") from None
        path = run_dir / LOCK_FILE
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                 "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                 "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT", "0")}
        for _ in range(3):  # a lock removed or taken over between our attempts: try again
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps(owner) + "\n")
                return cls(path, owner)
            try:
                age = time.time() - path.stat().st_mtime
                held = read_json_object(path, "the run lock")
            except FileNotFoundError:
                continue
            except ValueError as exc:  # damaged, or no lock of jepa (the message names the file): stale
                held, reason = {}, str(exc)
            else:
                reason = _stale_reason(held, age) if held else "it names no owner"
            if reason is None:
                raise UserError(f"run_dir {run_dir} is in use by another `jepa train` ({_describe(held)}; lock file "
                                 f"{path}); wait for it to end, or set run_dir to another directory. If that run is "
                                 "gone, delete the lock file")
            log.warning("run_dir %s: taking over a stale lock (%s): %s", run_dir, _describe(held), reason)
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        raise UserError(f"run_dir {run_dir}: could not take the lock {path}; another process keeps taking it; "
                         "make sure only one `jepa train` writes into this directory")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        self._stop.set()
        try:
            if read_json_object(self.path, "the run lock") == self.owner:
                os.remove(self.path)
        except (OSError, ValueError):
            pass
