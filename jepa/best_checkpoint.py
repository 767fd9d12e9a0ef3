"""``checkpoint.keep_best``: keep the checkpoint with the best value of a named metric.

``RUN_DIR/best/`` is a complete checkpoint directory (resumable, exportable, evaluable like any
``checkpoints/step_NNNNNN``) plus ``best.json``::

    {"metric": "knn_top1", "mode": "max", "value": 0.41, "step": 3000, "metric_step": 3000}

``step`` is the checkpoint's step and ``metric_step`` the step the value was measured at: the
newest measurement at or before the checkpoint (a metric measured every 500 steps ranks the
checkpoints written at or after each measurement; the first checkpoint after a measurement
carries it). Each checkpoint that strictly improves on the best so far replaces
``best/``; the files are hard links to the checkpoint's own (no copy; a copy where links are
not supported), so pruning by ``keep_last`` does not remove them. The swap goes through
``best.tmp`` and ``best.old``: a crash leaves either the old or the new best complete, and the
next run finishes or undoes the swap. Rank 0 does the work, after the checkpoint is complete.
A ``best`` (or leftover ``best.tmp`` / ``best.old``) that is a symbolic link is replaced or
removed as a link, never followed (:func:`jepa.outputs.remove_tree`). A ``best.json`` that is not
such a record is refused, naming the file, rather than overwritten with a worse checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from jepa.checkpoint.json_file import read_json_object
from jepa.errors import CheckpointError
from jepa.outputs import remove_tree
from jepa.recipe import KeepBestConfig

BEST_DIR = "best"
BEST_FILE = "best.json"
_BEST_FIX = (f"restore it, or move the {BEST_DIR} folder out of the run directory to keep the best checkpoint from "
             "scratch")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _recover(run_dir: Path) -> None:
    """Finish or undo a swap a crash interrupted."""
    best, tmp, old = run_dir / BEST_DIR, run_dir / f"{BEST_DIR}.tmp", run_dir / f"{BEST_DIR}.old"
    if not best.exists() and not best.is_symlink() and (old.exists() or old.is_symlink()):
        old.rename(best)
    remove_tree(tmp)
    remove_tree(old)


def read_best(run_dir: str | Path) -> dict[str, Any] | None:
    """The ``best.json`` record of a run, or None when it keeps no best checkpoint yet.

    Raises:
        ValueError: ``best.json`` is unreadable or not such a record (the file named).
    """
    path = Path(run_dir) / BEST_DIR / BEST_FILE
    try:
        record = read_json_object(path, "the best checkpoint's record")
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise CheckpointError(f"{exc}; {_BEST_FIX}") from None
    value, step = record.get("value"), record.get("step")
    if not (isinstance(record.get("metric"), str) and record.get("mode") in ("max", "min")
            and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and type(step) is int):
        raise CheckpointError(f"{path}: not a record of checkpoint.keep_best (it needs metric, mode max|min, a finite value "
                         f"and an integer step); {_BEST_FIX}")
    return record


class BestCheckpoint:
    """Tracks the best value of ``cfg.metric`` and keeps its checkpoint (rank 0 only).

    Args:
        cfg: the recipe's ``checkpoint.keep_best``.
        run_dir: the run directory; a previous best of the same metric and mode is continued.
    """

    def __init__(self, cfg: KeepBestConfig, run_dir: Path):
        self.metric, self.mode, self.run_dir = cfg.metric, cfg.better, run_dir
        _recover(run_dir)
        previous = read_best(run_dir)
        same = previous is not None and (previous["metric"], previous["mode"]) == (self.metric, self.mode)
        self.best: float | None = previous["value"] if same else None
        self.latest: tuple[float, int] | None = None

    def observe(self, record: dict[str, Any]) -> None:
        """Remember the metric from a ``metrics.jsonl`` record (records without it are ignored)."""
        value = record.get(self.metric)
        if value is not None and math.isfinite(value):
            self.latest = (float(value), int(record["step"]))

    def _improves(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def offer(self, checkpoint_dir: Path, step: int) -> bool:
        """Make ``checkpoint_dir`` (complete, written at ``step``) the best if the newest value improves.

        Returns:
            whether ``best/`` now holds this checkpoint.
        """
        if self.latest is None or not self._improves(self.latest[0]):
            return False
        value, metric_step = self.latest
        best, tmp, old = self.run_dir / BEST_DIR, self.run_dir / f"{BEST_DIR}.tmp", self.run_dir / f"{BEST_DIR}.old"
        remove_tree(tmp)
        shutil.copytree(checkpoint_dir, tmp, copy_function=_link_or_copy)
        (tmp / BEST_FILE).write_text(json.dumps({"metric": self.metric, "mode": self.mode, "value": value,
                                                 "step": step, "metric_step": metric_step}) + "\n")
        if best.exists() or best.is_symlink():  # a link is renamed itself, and then unlinked
            best.rename(old)
        tmp.rename(best)
        remove_tree(old)
        self.best = value
        return True
