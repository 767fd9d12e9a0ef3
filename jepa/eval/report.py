"""The evaluation report: one row per probe (and one per head of each grid), printed as rich
tables and saved as JSON.

The JSON layout is public API (scripts compare runs with it); ``REPORT_VERSION`` changes
whenever a field changes meaning or disappears. Version 2: protocols ``linear`` / ``linear4`` /
``attentive`` are streamed grids (``grid`` holds every head; ``settings`` the chosen lr / wd),
the L-BFGS probes are ``logreg`` / ``logreg4``, and the report names its data, device and
memory plan.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from jepa.outputs import check_output_file

REPORT_VERSION = 2


@dataclass
class ProbeResult:
    """Accuracy of one protocol on the validation split.

    Attributes:
        protocol: one of :data:`jepa.eval.evaluate.PROTOCOLS`.
        top1: top-1 accuracy in [0, 1] (grid protocols: of the head chosen on the held-out split).
        top5: top-5 accuracy in [0, 1], or None with fewer than 10 classes.
        num_train: labelled samples the probe was fitted on (after low-shot subsetting and,
            for grid protocols, without the held-out part; samples that did not decode are left
            out when features or tokens were stored, as by default, and counted in with
            ``--augment``, whose passes skip them without a count per sample).
        seconds: wall time of fitting and scoring (stored features excluded).
        settings: the protocol's hyper-parameters (epochs, k, the chosen lr and wd, ...).
        grid: grid protocols: one row per head (lr, wd, held-out and validation accuracy).
    """

    protocol: str
    top1: float
    top5: float | None
    num_train: int
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    grid: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class EvalReport:
    """Everything needed to read or reproduce one ``jepa eval`` run."""

    source: str
    source_kind: str
    model: str
    step: int | None
    encoder: str
    num_classes: int
    num_train: int
    num_val: int
    low_shot: float | None
    feature_seconds: float
    results: list[ProbeResult] = field(default_factory=list)
    chance_top1: float = 0.0
    train_data: str = ""
    val_data: str = ""
    device: str = "cpu"
    precision: str = "fp32"
    tokens: int = 0
    width: int = 0
    memory_plan: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    total_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"report_version": REPORT_VERSION, **asdict(self)}

    def write_json(self, path: str | Path) -> None:
        """Write :meth:`to_dict` to ``path`` through a temporary file beside it (complete or absent).

        Raises:
            ValueError: ``path`` is a folder, named pipe, device or socket
                (:func:`jepa.outputs.check_output_file`).
        """
        path = check_output_file(path, "--json", example="report.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def table(self) -> Table:
        """A rich table: one row per protocol, accuracies in percent."""
        step = "" if self.step is None else f", step {self.step}"
        shots = "" if self.low_shot is None else f", low-shot {self.low_shot:g} of labels"
        skipped = sum(self.skipped.values())
        table = Table(title=f"{self.model} ({self.source_kind}{step}, {self.encoder} encoder){shots}",
                      caption=f"{self.num_classes} classes, {self.num_train} train / {self.num_val} val samples"
                              f"{f', {skipped} unreadable skipped' if skipped else ''}; chance top-1 "
                              f"{100 * self.chance_top1:.1f} %; {self.tokens} tokens x {self.width} on {self.device} "
                              f"({self.precision}); stored features {self.feature_seconds:.1f} s, "
                              f"total {self.total_seconds:.1f} s")
        table.add_column("protocol")
        table.add_column("top-1 %", justify="right")
        table.add_column("top-5 %", justify="right")
        table.add_column("trained on", justify="right")
        table.add_column("settings")
        table.add_column("time s", justify="right")
        for r in self.results:
            table.add_row(
                r.protocol, f"{100 * r.top1:.2f}", "-" if r.top5 is None else f"{100 * r.top5:.2f}",
                str(r.num_train), ", ".join(f"{k}={v}" for k, v in r.settings.items()), f"{r.seconds:.1f}",
            )
        return table

    def grid_tables(self) -> list[Table]:
        """One table per grid protocol: every head's lr, wd, held-out and validation top-1; the chosen head marked."""
        tables = []
        for r in self.results:
            if not r.grid:
                continue
            table = Table(title=f"{r.protocol}: every head (chosen on held-out top-1, marked *)")
            for name in ("lr", "wd", "held-out top-1 %", "held-out loss", "val top-1 %", "val top-5 %"):
                table.add_column(name, justify="right")
            for row in r.grid:
                chosen = row["lr"] == r.settings.get("lr") and row["wd"] == r.settings.get("wd")

                def pct(key: str) -> str:
                    return f"{100 * row[key]:.2f}" if key in row else "-"

                table.add_row(f"{'*' if chosen else ''}{row['lr']:g}", f"{row['wd']:g}", pct("holdout_top1"),
                              f"{row['holdout_loss']:.3f}" if "holdout_loss" in row else "-", pct("val_top1"),
                              pct("val_top5"))
            tables.append(table)
        return tables
