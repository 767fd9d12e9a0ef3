"""PyAV in a child process, so that a decoder crash costs one sample and not the run.

FFmpeg is native code: on a crafted or damaged file it may raise anything, crash the process
(SIGSEGV, SIGABRT) or hang. Every call into PyAV on a sample's bytes (the probe of ``decode`` and
the frame reads of the training and evaluation views) therefore runs in a child process, one per
process that decodes (each data-loader worker, the main process, a ``jepa shards`` screening
process), started on first use and kept for the next samples. The child's program is
:mod:`jepa.modalities.video.pyav_io` (PyAV and NumPy only, no torch: it starts in well under a
second); requests and answers are length-prefixed JSON headers with raw bytes (nothing pickled).

This is the isolation ``jepa shards`` gives every modality (:mod:`jepa.data.screening`), carried into
training and evaluation for video. It is a fresh interpreter started with ``subprocess`` rather
than a ``multiprocessing`` child because data-loader workers are daemonic processes, which may not
have ``multiprocessing`` children.

* The child raises (any exception type): :class:`DecoderError` with its message.
* The child dies (a signal or an exit): :class:`DecoderError` naming the signal; the next request
  starts a fresh child.
* No answer within :data:`DECODE_TIMEOUT_S` (counted from the request: a child first says it is
  ready, so its start-up is not counted): the child is killed, :class:`DecoderError`.

:func:`~jepa.modalities.video.decode.probe_video` turns these into the ``ValueError`` that makes the
loader skip and count a sample, exactly like a corrupt image.
"""

from __future__ import annotations

import atexit
import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from jepa.data.screening import DECODE_TIMEOUT_S
from jepa.modalities.video import pyav_io

#: The child's command line (the timeout in seconds is appended). Tests replace it with a program
#: that crashes on purpose.
CHILD_ARGV: list[str] = [sys.executable, "-u", str(Path(pyav_io.__file__).resolve())]


#: Longest a child may take to start (import PyAV and NumPy) and say it is ready.
START_TIMEOUT_S = 120.0


class DecoderError(Exception):
    """The decoder child raised, crashed or hung on a request; the message says which."""


class DecoderProcess:
    """One decoder child and the requests sent to it (thread-safe, one request at a time)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self.pid = os.getpid()  # the process that owns the child

    # ------------------------------------------------------------------------------- requests
    def probe(self, data: bytes) -> dict[str, Any]:
        """:func:`pyav_io.probe` of ``data`` in the child."""
        header, _ = self._request({"op": "probe"}, data)
        return header

    def read(self, data: bytes, num_frames: int, height: int, width: int, pts: Any, indices: list[int]) -> np.ndarray:
        """:func:`pyav_io.read` in the child (``pts`` None: from the start, without seeking): (F, height, width, 3)
        uint8 frames."""
        header, payload = self._request({"op": "read", "num_frames": num_frames, "height": height, "width": width,
                                         "pts": pts, "indices": indices}, data)
        return np.frombuffer(payload, dtype=np.uint8).reshape(header["shape"])

    def _request(self, header: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        with self._lock:
            proc = self._proc if self._proc is not None and self._proc.poll() is None else self._start()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                pyav_io.write_message(proc.stdin, header, data)
                ready, _, _ = select.select([proc.stdout], [], [], DECODE_TIMEOUT_S)
                message = pyav_io.read_message(proc.stdout) if ready else "timeout"
            except (BrokenPipeError, OSError):
                message = None
            if message == "timeout":
                self._stop(kill=True)
                raise DecoderError(f"the video decoder took longer than {DECODE_TIMEOUT_S:g} s (killed; a fresh "
                                   "decoder process takes the next sample)")
            if message is None:
                code = self._stop(kill=True)
                what = signal.Signals(-code).name if code is not None and code < 0 else f"exit status {code}"
                raise DecoderError(f"the video decoder crashed ({what}); a fresh decoder process takes the next sample")
        answer, payload = message  # type: ignore[misc]
        if not answer.get("ok"):
            raise DecoderError(answer.get("error", "the decoder failed without a message"))
        return answer, payload

    # ------------------------------------------------------------------------------- lifetime
    def _start(self) -> subprocess.Popen:
        """A fresh child, once it said it is ready (its start is not part of any request's time limit)."""
        self._stop(kill=True)
        self._proc = proc = subprocess.Popen([*CHILD_ARGV, f"{DECODE_TIMEOUT_S:g}"], stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, bufsize=0)
        ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
        hello = pyav_io.read_message(proc.stdout) if ready else None  # type: ignore[arg-type]
        if hello is None or not hello[0].get("ready"):
            code = self._stop(kill=True)
            raise DecoderError(f"the video decoder process did not start (exit status {code}; its error output is "
                               f"above); run `{' '.join(CHILD_ARGV)} 1 < /dev/null` to see why")
        return proc

    def _stop(self, kill: bool = False) -> int | None:
        """End the child (closing its stdin ends it; ``kill`` first kills it); its exit status."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if kill and proc.poll() is None:
            proc.kill()
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()  # type: ignore[union-attr]
            except OSError:
                pass
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def close(self) -> None:
        """End the child (it exits when its stdin closes); in a forked copy, only :meth:`forget`."""
        if self.pid != os.getpid():
            self.forget()
            return
        with self._lock:
            self._stop()

    def forget(self) -> None:
        """In a forked copy of the owner: close this process's copies of the pipes, leave the child alone."""
        proc, self._proc = self._proc, None
        if proc is not None:
            for stream in (proc.stdin, proc.stdout):
                try:
                    stream.close()  # type: ignore[union-attr]
                except OSError:
                    pass
            proc.returncode = 0  # not ours to wait for: keeps Popen.__del__ quiet


_decoder: DecoderProcess | None = None
_decoder_lock = threading.Lock()


def decoder() -> DecoderProcess:
    """This process's decoder child (a forked process gets its own, never its parent's)."""
    global _decoder
    with _decoder_lock:
        if _decoder is not None and _decoder.pid != os.getpid():
            _decoder.forget()
            _decoder = None
        if _decoder is None:
            _decoder = DecoderProcess()
            atexit.register(_decoder.close)
        return _decoder
