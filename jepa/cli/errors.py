"""How the CLI ends on an error: the one place that maps exceptions to exit codes.

Every expected failure prints one red ``error:`` line on stderr (a recipe with several problems:
one line each) and no traceback:

* exit 2: a user mistake or the environment: every :class:`jepa.errors.UserError` (bad recipe, bad
  path, bad data, a checkpoint that does not fit or fails its checksums, an unusable plugin or a
  missing modality hook, a run directory in use), raised here or in a data-loader worker (torch
  re-raises it with its type; the worker's traceback is dropped); operating-system errors such as
  a full disk or a missing permission, shown with their path; and running out of memory, GPU or
  host, shown with the settings that size it, a data-loader worker killed by the OOM killer or a
  bus error (shared memory) included;
* exit 1: a run stopped by its own health checks (non-finite loss, representation collapse,
  too many undecodable samples);
* exit 143 (128 + SIGTERM): a run stopped by SIGTERM before it could save a checkpoint (while
  waiting for data, or on a second SIGTERM); the last complete checkpoint is intact.

Anything else is a bug, a plain ``ValueError`` included (an error the user can fix is raised as a
``UserError``): :func:`report_bug` prints its traceback and then one ``error:`` line saying it is a
bug to report, and the command exits with 1 (:data:`BUG`, as Python itself does for an uncaught
exception).

Messages quote untrusted text (file names, recipe keys, shard URLs), so every line is passed
through :func:`jepa.text.printable`: no control character from them reaches the terminal.
"""

from __future__ import annotations

import re
import traceback
from contextlib import contextmanager
from typing import Iterator

import typer
from rich.console import Console
from rich.markup import escape

import torch

from jepa.errors import UserError
from jepa.preemption import PreemptedError
from jepa.run_stopped import RunStoppedError
from jepa.text import printable

err_console = Console(stderr=True)

USER_ERROR = 2
RUN_STOPPED = 1
BUG = 1


PREEMPTED = 143
_WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def exit_code_for(exc: BaseException) -> int | None:
    """The exit code for ``exc``, or None when it is not an expected failure (a bug)."""
    if isinstance(exc, PreemptedError):
        return PREEMPTED
    if isinstance(exc, RunStoppedError):
        return RUN_STOPPED
    if (isinstance(exc, (UserError, OSError)) or _out_of_memory(exc) is not None
            or _worker_killed(exc) is not None):
        return USER_ERROR
    return None


_CPU_ALLOC_FAILED = "DefaultCPUAllocator: can't allocate memory"
"""torch's host allocator raises a plain RuntimeError with this text when an allocation fails."""

_GPU_HINT = ("lower data.micro_batch_size (training: the batch of one forward/backward on a rank) or --batch-size / "
             "eval.batch_size (evaluation), or turn on engine.activation_checkpointing or a higher engine.zero_stage; "
             "`jepa plan RECIPE --gpus N --gpu-memory SIZE` estimates what a recipe needs per GPU")
_HOST_HINT = ("lower data.micro_batch_size, data.num_workers, data.prefetch_factor or data.shuffle_buffer (each loader "
              "worker holds its shuffle buffer and prefetched batches), or eval.batch_size / eval.max_samples; "
              "`jepa plan RECIPE --gpus N --gpu-memory SIZE` estimates what a recipe needs")


def _out_of_memory(exc: BaseException) -> str | None:
    """The one-line message for running out of GPU or host memory, or None when ``exc`` is not that."""
    if isinstance(exc, torch.OutOfMemoryError):  # CUDA's (a RuntimeError); its text runs on with allocator statistics
        detail = ". ".join(str(exc).split("\n")[0].split(". ")[:2]).strip().rstrip(".") or "CUDA out of memory"
        return f"out of GPU memory ({detail}); {_GPU_HINT}"
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and _CPU_ALLOC_FAILED in str(exc)):
        text = str(exc).strip()  # MemoryError: often empty; from a loader worker: its traceback, the error last
        detail = text[text.find(_CPU_ALLOC_FAILED):].split("\n")[0] if _CPU_ALLOC_FAILED in text else text.split("\n")[-1]
        return f"out of host memory{f' ({detail})' if detail else ''}; {_HOST_HINT}"
    return None


_WORKER_KILLED = re.compile(r"DataLoader worker \(pid (\d+)\) is killed by signal: ([^.\n]*)")
"""torch's message when a loader worker process dies of a signal (its SIGCHLD handler, a RuntimeError)."""

_WORKER_HINTS = {
    "Killed": ("likely out of host memory (the kernel's OOM killer sends SIGKILL)",
               "lower data.num_workers, data.prefetch_factor or data.shuffle_buffer (each loader worker holds its "
               "shuffle buffer and prefetched batches) or data.micro_batch_size; `jepa eval`: --num-workers, "
               "--shuffle-buffer, --batch-size"),
    "Bus error": ("likely out of shared memory (/dev/shm, through which workers hand over batches; small in "
                  "containers: docker --shm-size)", "lower data.num_workers or data.prefetch_factor, or give the "
                  "machine more shared memory"),
}


def _worker_killed(exc: BaseException) -> str | None:
    """The one-line message for a data-loader worker killed by SIGKILL (the OOM killer) or SIGBUS
    (shared memory full), or None (another signal, such as a crash in a decoder, is a bug).

    torch raises the signal's error from its SIGCHLD handler, or (when the main process notices the
    dead worker first) ``DataLoader worker (pid(s) N) exited unexpectedly`` caused by it: the chain
    of ``RuntimeError`` causes is searched.
    """
    seen = 0
    while isinstance(exc, RuntimeError) and seen < 8:
        match = _WORKER_KILLED.search(str(exc))
        if match is not None:
            signal = match.group(2).strip()
            if signal not in _WORKER_HINTS:
                return None
            likely, hint = _WORKER_HINTS[signal]
            return f"a data-loading worker (pid {match.group(1)}) was killed by signal {signal}: {likely}; {hint}"
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def message_of(exc: BaseException) -> str:
    """What the user reads for ``exc``: operating-system errors with their path and a hint; running
    out of memory with the settings to lower; an error re-raised from a data-loader worker without
    the worker's traceback. Every line escaped with :func:`jepa.text.printable`."""
    return "\n".join(printable(line) for line in _text_of(exc).split("\n"))


def _text_of(exc: BaseException) -> str:
    """``exc``'s message as the user reads it, before escaping."""
    memory = _out_of_memory(exc) or _worker_killed(exc)
    if memory is not None:
        return memory
    if isinstance(exc, OSError) and not isinstance(exc, ValueError):
        where = f"{exc.filename}: " if exc.filename else ""
        hint = {28: "; free some space or point run_dir / the output elsewhere",
                122: "; free some space or point run_dir / the output elsewhere",
                13: "; check the permissions", 30: "; the filesystem is read-only, write elsewhere",
                21: "; a directory stands where a file is expected", 20: "; a file stands where a directory is expected"}
        return f"{where}{exc.strerror or exc}{hint.get(exc.errno or 0, '')}"
    text = str(exc)
    if _WORKER_TRACEBACK in text:  # torch's DataLoader puts the worker's traceback into the message
        text = text.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return text


def user_error(exc: BaseException, code: int = USER_ERROR) -> typer.Exit:
    """Print ``exc`` as one clear message; raise the returned Exit to leave with ``code``."""
    # escaped: messages quote key lists ("missing keys [mask_token]") and paths that rich would read as markup
    err_console.print(f"[bold red]error:[/] {escape(message_of(exc))}", markup=True, highlight=False, soft_wrap=True)
    return typer.Exit(code)


BUG_LINE = ("this is a bug in jepa (or in a plugin it runs), not in your input; please report it to the "
            "jepa-forge issue tracker with the traceback above")


def report_bug(exc: BaseException) -> int:
    """Print ``exc``'s traceback (every line escaped) and the :data:`BUG_LINE`; returns :data:`BUG`."""
    text = "".join(traceback.format_exception(exc)).rstrip("\n")
    err_console.print("\n".join(printable(line) for line in text.split("\n")), markup=False, highlight=False,
                      soft_wrap=True)
    err_console.print(f"[bold red]error:[/] {BUG_LINE}", markup=True, highlight=False, soft_wrap=True)
    return BUG


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn expected failures inside a command into one line and their exit code; bugs go on up
    (:func:`jepa.cli.main` reports them)."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is an expected failure
        code = exit_code_for(exc)
        if code is None:
            raise
        raise user_error(exc, code) from None
