"""``jepa viz run``: the curves of one or more runs from their ``metrics.jsonl``, one panel per metric (every
metric any record holds), runs overlaid, the steps of the checkpoints on disk marked with dotted lines and
the kept best checkpoint (``checkpoint.keep_best``) with a star."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from jepa.best_checkpoint import read_best
from jepa.errors import ConfigError
from jepa.monitor import METRICS_FILE, read_metrics
from jepa.viz.figure import new_figure, save_png

LEFT_OUT = ("step", "eta_s")
"""Record keys that are no metric: the step (the x axis) and the time left (a countdown)."""
ORDER = ("loss", "pred_loss", "sigreg", "lr", "weight_decay", "ema_momentum", "rankme", "target_spread", "knn_top1",
         "knn_top5", "samples_per_s", "mfu", "flops_per_s", "data_wait_frac", "step_time_s")
"""Metrics drawn first, in this order (the loss and its terms, schedules, collapse signals, probes, speed);
any other metric follows in alphabetical order."""
LOG_SCALE = ("lr",)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def run_series(records: list[dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """``{metric: (steps, values)}`` of the finite numbers each record holds, metrics in drawing order."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in records:
        step = record.get("step")
        if not isinstance(step, int):
            continue
        for key, value in record.items():
            number = _number(value)
            if key in LEFT_OUT or number is None:
                continue
            steps, values = series.setdefault(key, ([], []))
            steps.append(step)
            values.append(number)
    rank = {name: i for i, name in enumerate(ORDER)}
    return dict(sorted(series.items(), key=lambda kv: (rank.get(kv[0], len(ORDER)), kv[0])))


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps of the checkpoints on disk (``checkpoints/step_NNNNNN``)."""
    found = []
    for path in (run_dir / "checkpoints").glob("step_*"):
        digits = path.name[len("step_"):]
        if digits.isdigit():
            found.append(int(digits))
    return sorted(found)


def run_curves(run_dirs: list[Path]) -> Any:
    """The figure of every metric of the runs in ``run_dirs``.

    Raises:
        ValueError: a run without ``metrics.jsonl`` or without any metric in it.
    """
    runs = []
    for run_dir in run_dirs:
        if not (run_dir / METRICS_FILE).is_file():
            raise ConfigError(f"{run_dir}: no {METRICS_FILE}; pass a run directory of `jepa train`")
        series = run_series(read_metrics(run_dir))
        if not series:
            raise ConfigError(f"{run_dir / METRICS_FILE}: no metrics logged yet")
        runs.append((run_dir, series, checkpoint_steps(run_dir), read_best(run_dir)))
    metrics = list(dict.fromkeys(m for _, series, _, _ in runs for m in series))
    rank = {name: i for i, name in enumerate(ORDER)}
    metrics.sort(key=lambda m: (rank.get(m, len(ORDER)), m))
    cols = min(4, len(metrics))
    rows = -(-len(metrics) // cols)
    names = ", ".join(str(r) for r in run_dirs)
    fig, axes = new_figure(rows, cols, panel_in=(3.0, 2.1),
                           title=f"{names}: {len(metrics)} metrics of metrics.jsonl; dotted: checkpoints on disk, "
                                 "star: the kept best")
    colours = [f"C{i}" for i in range(10)]
    for i, metric in enumerate(metrics):
        ax = axes[i // cols][i % cols]
        for r, (run_dir, series, ckpts, best) in enumerate(runs):
            colour = colours[r % len(colours)]
            for step in ckpts:
                ax.axvline(step, color=colour, linestyle=":", linewidth=0.8, alpha=0.6)
            if metric not in series:
                continue
            steps, values = series[metric]
            ax.plot(steps, values, color=colour, linewidth=1.2, label=run_dir.name or str(run_dir),
                    marker="." if len(steps) < 3 else None)
            if best is not None and best.get("metric") == metric:
                ax.plot([best.get("metric_step", best["step"])], [best["value"]], marker="*", markersize=11,
                        color=colour, markeredgecolor="black", linestyle="none")
        ax.set_title(metric, fontsize=8)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
        if metric in LOG_SCALE and all(v > 0 for _, s, _, _ in runs if metric in s for v in s[metric][1]):
            ax.set_yscale("log")
        if i // cols == rows - 1 or i + cols >= len(metrics):
            ax.set_xlabel("step", fontsize=7)
    for j in range(len(metrics), rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    if len(runs) > 1:
        axes[0][0].legend(fontsize=6)
    return fig


def run_picture(run_dirs: list[Path], out: Path) -> Path:
    """Write :func:`run_curves` of ``run_dirs`` to ``out``."""
    return save_png(run_curves([Path(r) for r in run_dirs]), out)
