"""Checking that sample files decode, in a child process, so a decoder crash cannot kill the writer.

``jepa shards`` decodes every file once before storing it. A decoder is native code: on crafted
input it may crash the process (torchvision 0.29's PNG decoder segfaults on a PNG whose image
data stops early) or hang. :class:`DecodeScreen` runs ``modality.decode`` in a forked child
process limited to one intra-op thread (as the writer processes are: a forked child must not
enter its parent's OpenMP pool) and sends it one sample at a time; a child that dies takes only its current file with it (reported as skipped, naming the
signal), one that takes longer than :data:`DECODE_TIMEOUT_S` is killed, and a fresh child goes on.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from multiprocessing.connection import Connection
from typing import Any

import torch

from jepa.interfaces import Modality

DECODE_TIMEOUT_S = 120.0
"""Longest one file may take to decode before it counts as a hanging decoder."""


def _serve(modality: Modality, conn: Connection, parent_end: Connection) -> None:
    """Child process: decode each sample received; answer None (readable) or the error text; stop at None."""
    parent_end.close()  # the forked copy of the parent's end: EOF must reach us when the parent goes
    torch.set_num_threads(1)
    while True:
        try:
            sample = conn.recv()
        except EOFError:
            return
        if sample is None:
            return
        try:
            modality.decode(sample)
            conn.send(None)
        except Exception as exc:  # noqa: BLE001 - every failure of a decoder is the file's problem, reported
            conn.send(f"{type(exc).__name__}: {exc}")


class DecodeScreen:
    """``modality.decode`` in a child process that may crash or hang without harm.

    Args:
        modality: the bound modality.
    """

    def __init__(self, modality: Modality):
        self.modality = modality
        self._ctx = mp.get_context("fork")
        self._child: Any = None
        self._conn: Connection | None = None

    def _start(self) -> Connection:
        parent, child = self._ctx.Pipe()
        self._child = self._ctx.Process(target=_serve, args=(self.modality, child, parent), daemon=True)
        self._child.start()
        child.close()
        self._conn = parent
        return parent

    def check(self, sample: dict[str, Any]) -> str | None:
        """None when ``sample`` decodes; else why not (an exception, a crash or a hang of the decoder)."""
        conn = self._conn or self._start()
        try:
            conn.send(sample)
            if conn.poll(DECODE_TIMEOUT_S):
                return conn.recv()
            problem = f"the decoder took longer than {DECODE_TIMEOUT_S:g} s (killed)"
        except (EOFError, OSError):
            problem = None
        self._stop(kill=True)
        if problem is None:
            code = self._child.exitcode
            name = signal.Signals(-code).name if code is not None and code < 0 else f"exit status {code}"
            problem = f"the decoder crashed ({name}); the file was skipped and screening went on in a new process"
        return problem

    def _stop(self, kill: bool = False) -> None:
        if self._conn is not None:
            if not kill:
                try:
                    self._conn.send(None)
                except OSError:
                    pass
            self._conn.close()
            self._conn = None
        if self._child is not None and self._child.pid is not None:
            if kill and self._child.is_alive():
                self._child.kill()
            self._child.join(timeout=10)

    def close(self) -> None:
        """End the child process."""
        self._stop()
        self._child = None

    def __enter__(self) -> "DecodeScreen":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
