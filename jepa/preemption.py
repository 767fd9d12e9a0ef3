"""Preemption: SIGTERM asks a run to save a checkpoint and stop, every rank at the same step.

Schedulers stop jobs with SIGTERM, then SIGKILL after a grace period (Slurm's ``KillWait``,
``timeout -k``, systemd's ``TimeoutStopSec``). Slurm, ``timeout`` and systemd signal the whole
process group, data-loader workers included; ``torchrun`` and ``srun`` forward the signal to
their tasks. Before a Slurm time limit, ``examples/slurm/train.sbatch`` turns Slurm's warning
signal into a SIGTERM to every task and requeues the job once they have saved and exited 0; the
requeued job resumes from that checkpoint (``--resume auto``).

* :class:`Preemption` (main process): the first SIGTERM sets ``requested``; the training loop
  looks at it after every step and saves a checkpoint before stopping. A second SIGTERM raises
  :class:`PreemptedError` at once. While the loop waits for data
  (:meth:`Preemption.waiting_for_data`) after a SIGTERM, the data has :data:`DATA_WAIT_GRACE_S`
  seconds to come (a normal wait is far shorter); a loader that stays stalled raises
  :class:`PreemptedError` then. Either way the process ends within a bounded time and the last
  complete checkpoint stays intact (checkpoints are written atomically).
* :func:`ignore_sigterm_until` runs in each data-loader worker (``worker_init_fn``): a worker
  killed by the group's SIGTERM would end the run with a traceback before the main process could
  save. Once the main process shuts its workers down (it sets the event first), SIGTERM ends a
  worker as usual, so even a worker stuck in a stalled read can be stopped.
* :class:`StopVote`: ranks agree without a per-step wait. After every step each rank starts an
  asynchronous all-reduce (MAX) of its flag and reads the one it started a step earlier, which
  has long completed; every rank reads the same vote, so all stop after the same step (one step
  after the signal arrived in a multi-rank run; at once in a single process).
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    from jepa.engine import Engine


DATA_WAIT_GRACE_S = 10.0
"""After a SIGTERM, how long the loop may still wait for a batch before it gives up."""


class PreemptedError(Exception):
    """SIGTERM stopped the run before it could save a checkpoint (the CLI exits 143)."""


def ignore_sigterm_until(stop: Any) -> None:
    """In a data-loader worker: ignore SIGTERM until ``stop`` (a multiprocessing event shared with
    the main process) is set; after that SIGTERM ends the worker as it would by default."""

    def handle(signum: int, frame: Any) -> None:
        if stop.is_set():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, handle)


class Preemption:
    """Turns SIGTERM into a request to checkpoint and stop (see the module docstring).

    Attributes:
        requested: a SIGTERM arrived.
    """

    def __init__(self) -> None:
        self.requested = False
        self._waiting = False
        self._previous: Any = None
        self._previous_alarm: Any = None
        self._installed = threading.current_thread() is threading.main_thread()
        if self._installed:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._previous_alarm = signal.signal(signal.SIGALRM, self._data_wait_expired)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise PreemptedError("stopped by a second SIGTERM before the checkpoint was complete; the last "
                                 "complete one is intact (resume with --resume auto)")
        self.requested = True
        if self._waiting:
            signal.setitimer(signal.ITIMER_REAL, DATA_WAIT_GRACE_S)

    def _data_wait_expired(self, signum: int, frame: Any) -> None:
        if self._waiting:
            raise PreemptedError(f"stopped by SIGTERM while waiting for data (none came within {DATA_WAIT_GRACE_S:g} s); "
                                 "no new checkpoint was written, the last complete one is intact (resume with "
                                 "--resume auto)")

    @contextmanager
    def waiting_for_data(self) -> Iterator[None]:
        """Wrap the wait for a batch: after a SIGTERM the batch has ``DATA_WAIT_GRACE_S`` seconds to come,
        then :class:`PreemptedError` is raised (a stalled loader cannot hold the process)."""
        self._waiting = True
        if self.requested and self._installed:  # asked to stop, but the ranks agree only after this step
            signal.setitimer(signal.ITIMER_REAL, DATA_WAIT_GRACE_S)
        try:
            yield
        finally:
            self._waiting = False
            if self._installed:
                signal.setitimer(signal.ITIMER_REAL, 0)

    def close(self) -> None:
        if self._installed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGTERM, self._previous)
            signal.signal(signal.SIGALRM, self._previous_alarm)
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
