"""Preemption: SIGTERM asks a run to save a checkpoint and stop, every rank at the same step.

Schedulers stop jobs with SIGTERM, then SIGKILL after a grace period (Slurm's ``KillWait``,
``timeout -k``, systemd's ``TimeoutStopSec``). Slurm, ``timeout`` and systemd signal the whole
process group, data-loader workers included; ``torchrun`` forwards the signal to its workers.

* :class:`Preemption` (main process): the first SIGTERM sets ``requested``; the training loop
  looks at it after every step and saves a checkpoint before stopping. While the loop waits for
  data (:meth:`Preemption.waiting_for_data`), or on a second SIGTERM, there is no step end to
  wait for: the handler raises :class:`PreemptedError` at once, so the process ends within a
  bounded time; the last complete checkpoint stays intact (checkpoints are written atomically).
* :func:`ignore_sigterm` is the data-loader workers' ``worker_init_fn``: a worker killed by the
  group's SIGTERM would end the run with a traceback before the main process could save.
* :class:`StopVote`: ranks agree without a per-step wait. After every step each rank starts an
  asynchronous all-reduce (MAX) of its flag and reads the one it started a step earlier, which
  has long completed; every rank reads the same vote, so all stop after the same step (one step
  after the signal arrived in a multi-rank run; at once in a single process).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    from jepa.engine import Engine


class PreemptedError(Exception):
    """SIGTERM stopped the run before it could save a checkpoint (the CLI exits 143)."""


def ignore_sigterm(worker_id: int = 0) -> None:
    """``worker_init_fn`` of data-loader workers: SIGTERM is for the main process to act on.

    Workers still end with the main process (torch's DataLoader shuts them down, and they exit
    on their own when the main process is gone).
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class Preemption:
    """Turns SIGTERM into a request to checkpoint and stop (see the module docstring).

    Attributes:
        requested: a SIGTERM arrived.
    """

    def __init__(self) -> None:
        self.requested = False
        self._waiting = False
        self._previous: Any = None
        self._installed = threading.current_thread() is threading.main_thread()
        if self._installed:
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self._waiting:
            raise PreemptedError("stopped by SIGTERM while waiting for data; no new checkpoint was written, "
                                 "the last complete one is intact (resume with --resume auto)")
        if self.requested:
            raise PreemptedError("stopped by a second SIGTERM before the checkpoint was complete; the last "
                                 "complete one is intact (resume with --resume auto)")
        self.requested = True

    @contextmanager
    def waiting_for_data(self) -> Iterator[None]:
        """While inside, a SIGTERM raises :class:`PreemptedError` at once (no step end to wait for)."""
        if self.requested:
            raise PreemptedError("stopped by SIGTERM while waiting for data; no new checkpoint was written, "
                                 "the last complete one is intact (resume with --resume auto)")
        self._waiting = True
        try:
            yield
        finally:
            self._waiting = False

    def close(self) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False


class StopVote:
    """Whether any rank was asked to stop, known to every rank after the same step.

    Args:
        engine: starts the asynchronous all-reduce (a world of one needs none).
    """

    def __init__(self, engine: Engine):
        self._engine = engine
        self._pending: Callable[[], bool] | None = None

    def after_step(self, requested: bool) -> bool:
        """Call once after every step with this rank's flag; True when the run must stop now."""
        if self._engine.dist.world_size == 1:
            return requested
        agreed = self._pending() if self._pending is not None else False
        self._pending = self._engine.any_rank_async(requested)
        return agreed

    def close(self) -> None:
        """Wait for the vote still in flight (every rank started it), so no collective is left behind."""
        if self._pending is not None:
            self._pending()
            self._pending = None
