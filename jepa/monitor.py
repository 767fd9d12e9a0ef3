"""Watching a run: loss and collapse signal, throughput, ``metrics.jsonl``, progress, TensorBoard.

The loss stays on the device between log steps (summed there); every ``log.every_steps`` steps
one all-reduce brings the window's mean loss, the first non-finite step and the representation
spread to the host. That is the only host sync of the loop outside checkpoints. Rank 0 then
appends one JSON line to ``RUN_DIR/metrics.jsonl``, updates the progress display and, if asked,
TensorBoard. A non-finite loss or (optionally) a collapsed representation stops the run, on
every rank, after the line naming the step has been written.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text
from torch import Tensor

from jepa.errors import ConfigError, UserError
from jepa.health import rankme
from jepa.model import representation_spread
from jepa.recipe import LogConfig
from jepa.run_stopped import NonFiniteLossError, RepresentationCollapseError

if TYPE_CHECKING:
    from jepa.engine import Engine
    from jepa.mfu import TrainingPeak

METRICS_FILE = "metrics.jsonl"


def _parse_metrics(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(line, record)`` pairs; a torn last line (a process killed mid-write) is left out."""
    if not path.exists():
        return []
    if not path.is_file():  # a named pipe would block the read
        raise UserError(f"{path}: not a regular file; move it away (the run's metrics are appended to it)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); the file was edited or "
                         "corrupted") from None
    complete = text.split("\n")[:-1]  # text after the last newline is a torn write
    out = []
    for number, line in enumerate(complete, 1):
        if line.strip():
            problem = None
            try:
                record = json.loads(line)
            except RecursionError:
                problem = "JSON nested too deeply"
            except json.JSONDecodeError as exc:
                problem = str(exc)
            else:
                if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                    problem = "not an object with an integer step"
            if problem is not None:
                raise UserError(f"{path}:{number}: not a JSON record ({problem}); the file was edited or corrupted")
            out.append((line, record))
    return out


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The complete records of ``RUN_DIR/metrics.jsonl``, in order."""
    return [record for _, record in _parse_metrics(Path(run_dir) / METRICS_FILE)]


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records after ``last_step`` (written by a run that died after its last checkpoint)."""
    if not path.exists():
        return
    kept = [line for line, record in _parse_metrics(path) if record["step"] <= last_step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


def _tensorboard_writer(log_dir: Path) -> Any:
    try:
        # deferred: tensorboard (optional extra), only when log.tensorboard is on
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError("log.tensorboard is true but the 'tensorboard' package is not installed; "
                         "pip install 'jepa-forge[tensorboard]' or set log.tensorboard=false") from exc
    return SummaryWriter(log_dir=str(log_dir))


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Monitor:
    """Per-run metrics; every rank calls ``accumulate`` / ``log`` (``log`` is collective), rank 0 writes.

    Args:
        cfg: the recipe's ``log`` section.
        run_dir: where ``metrics.jsonl`` (and ``tensorboard/``) go.
        engine: for the rank, the device and the all-reduce.
        start_step: steps already done (resumed runs drop later records of ``metrics.jsonl``).
        last_step: the step this run stops at (progress and ETA).
        samples_per_step: global batch size (throughput).
        flops_per_sample: training FLOPs per sample, or None when unknown.
        peak: the peak FLOP/s of one device (:class:`jepa.mfu.TrainingPeak`), or None; with
            ``flops_per_sample`` it adds ``mfu`` (all ranks' FLOP/s over world size x the peak as of
            the record) to each record. A CPU peak is re-timed after a record, outside the next window.
    """

    def __init__(self, cfg: LogConfig, run_dir: Path, engine: Engine, *, start_step: int, last_step: int,
                 samples_per_step: int, flops_per_sample: float | None, peak: TrainingPeak | None = None):
        self.cfg, self.engine = cfg, engine
        self.is_main = engine.dist.is_main
        self.last_step, self.samples_per_step, self.flops_per_sample = last_step, samples_per_step, flops_per_sample
        self.peak = peak
        device = engine.dist.device
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self._term_sums: dict[str, Tensor] = {}
        self._first_bad = torch.full((), math.inf, dtype=torch.float64, device=device)
        self._window_steps = 0
        self._data_wait = 0.0
        self._window_start = self._run_start = time.perf_counter()
        self._run_start_step = start_step
        self._metrics = self._tb = self._progress = None
        if self.is_main:
            self._tb = _tensorboard_writer(run_dir / "tensorboard") if cfg.tensorboard else None  # may refuse: first
            _truncate_metrics(run_dir / METRICS_FILE, start_step)
            self._metrics = open(run_dir / METRICS_FILE, "a")
            console = Console()
            if console.is_terminal:  # a bar with the step, and the latest metrics on the line below it
                self._progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                          TimeElapsedColumn(), TextColumn("eta {task.fields[eta]}"), console=console)
                self._task = self._progress.add_task("train", total=last_step, completed=start_step, eta="?")
                self._live = Live(Group(self._progress, Text("")), console=console, refresh_per_second=4)
                self._live.start()

    def data_wait(self, seconds: float) -> None:
        """Host time spent waiting for the next batch."""
        self._data_wait += seconds

    def exclude_time(self, seconds: float) -> None:
        """Leave ``seconds`` of work outside training (the online probe) out of the window's throughput."""
        self._window_start += seconds

    def accumulate(self, loss: Tensor, step: int, weight: float = 1.0, terms: dict[str, Tensor] | None = None) -> None:
        """Add a micro batch's loss (weight 1/accumulation steps) on the device; remembers the
        first step whose loss is not finite, without a host sync.

        Args:
            step: the step's number as logged (optimiser steps done once it finishes).
            terms: scalar parts of the loss (the objective's), averaged and logged like it.
        """
        loss = loss.detach().double()
        self._loss_sum += loss * weight
        for name, value in (terms or {}).items():
            total = self._term_sums.setdefault(name, torch.zeros((), dtype=torch.float64, device=loss.device))
            total += value.detach().double() * weight
        bad_now = ~torch.isfinite(loss) & torch.isinf(self._first_bad)
        self._first_bad = torch.where(bad_now, torch.full_like(self._first_bad, step), self._first_bad)

    def end_step(self) -> None:
        self._window_steps += 1

    def log(self, step: int, *, lr: float, weight_decay: float, representations: Tensor,
            objective_metrics: dict[str, float] | None = None, extra: dict[str, float] | None = None) -> dict[str, Any]:
        """Collective: reduce the window over ranks, write the record (rank 0) and check the run's health.

        Args:
            step: optimiser steps done.
            representations: this step's features (..., D) from the objective (I-JEPA: the target
                tokens), for the collapse signals (``target_spread`` and ``rankme``,
                :mod:`jepa.health`; both averaged over ranks).
            objective_metrics: the objective's post-step values, the same on every rank (``ema_momentum``).
            extra: more metrics of this step, the same on every rank (the online k-NN probe).

        Raises:
            NonFiniteLossError: a loss in the window was NaN/Inf (the record is written first).
            RepresentationCollapseError: spread below ``log.collapse_threshold`` or RankMe below
                ``log.collapse_rankme`` (the record is written first).
        """
        world = self.engine.dist.world_size
        window = max(1, self._window_steps)
        names = sorted(self._term_sums)
        sums = torch.stack([self._loss_sum / window, representation_spread(representations).double(),
                            rankme(representations).double(), *(self._term_sums[n] / window for n in names)])
        self.engine.all_reduce_(sums)
        neg_first_bad = -self._first_bad.clone()
        self.engine.all_reduce_(neg_first_bad, op="max")
        loss, spread, rank_me, *term_values = (v / world for v in sums.tolist())  # the host sync
        first_bad = -neg_first_bad.item()

        now = time.perf_counter()
        elapsed = now - self._window_start
        samples_per_s = window * self.samples_per_step / elapsed if elapsed > 0 else math.nan
        rate = (step - self._run_start_step) / (now - self._run_start)
        record: dict[str, Any] = {
            "step": step, "loss": loss, **dict(zip(names, term_values)), "lr": lr, "weight_decay": weight_decay,
            **(objective_metrics or {}), "target_spread": spread, "rankme": rank_me, **(extra or {}), "samples_per_s": samples_per_s, "step_time_s": elapsed / window,
            "data_wait_frac": min(1.0, self._data_wait / elapsed) if elapsed > 0 else 0.0,
            "eta_s": (self.last_step - step) / rate if rate > 0 else math.nan,
        }
        if self.flops_per_sample:
            record["flops_per_s"] = samples_per_s * self.flops_per_sample
            if self.peak is not None and (peak := self.peak.flops_per_s):
                record["mfu"] = record["flops_per_s"] / (world * peak)
        if self.is_main:
            self._write(record)
        self._loss_sum.zero_()
        for total in self._term_sums.values():
            total.zero_()
        self._window_steps, self._data_wait, self._window_start = 0, 0.0, now
        if self.peak is not None:
            self.exclude_time(self.peak.refresh())

        if math.isfinite(first_bad):
            raise NonFiniteLossError(
                f"the loss became non-finite at step {int(first_bad)} (window mean {loss}); the run stopped. Resume from the last complete checkpoint with a lower optim.lr, optim.grad_clip set, "
                "or engine.precision=fp32")
        for value, threshold, name, key in ((spread, self.cfg.collapse_threshold, "target spread", "collapse_threshold"),
                                            (rank_me, self.cfg.collapse_rankme, "target RankMe", "collapse_rankme")):
            if threshold is not None and value < threshold:
                raise RepresentationCollapseError(
                    f"representation collapse at step {step}: {name} {value:.3g} < log.{key}={threshold}; the run "
                    "stopped (check the EMA momentum, the learning rate and the masks, or lower the threshold)")
        return record

    def _write(self, record: dict[str, Any]) -> None:
        assert self._metrics is not None
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step":
                    self._tb.add_scalar(f"train/{key}", value, record["step"])
            self._tb.flush()
        line = (f"loss {record['loss']:.4f}  "
                + "".join(f"{k} {record[k]:.4f}  " for k in sorted(self._term_sums))
                + f"lr {record['lr']:.2e}  " + (f"ema {record['ema_momentum']:.4f}  " if "ema_momentum" in record else "")
                + f"spread {record['target_spread']:.3f}  rankme {record['rankme']:.1f}  "
                + (f"knn {100 * record['knn_top1']:.1f}%  " if "knn_top1" in record else "")
                + f"{record['samples_per_s']:.1f} samples/s  "
                f"data {100 * record['data_wait_frac']:.0f}%" + (f"  mfu {100 * record['mfu']:.1f}%" if "mfu" in record else ""))
        eta = _fmt_duration(record["eta_s"])
        if self._progress is not None:
            self._progress.update(self._task, completed=record["step"], eta=eta)
            self._live.update(Group(self._progress, Text(line)))
        else:
            print(f"step {record['step']}/{self.last_step}  {line}  eta {eta}", flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._live.stop()
        if self._metrics is not None:
            self._metrics.close()
        if self._tb is not None:
            self._tb.close()
