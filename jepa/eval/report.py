"""The evaluation report: one row per probe, printed as a rich table and saved as JSON.

The JSON layout is public API (scripts compare runs with it); ``REPORT_VERSION`` changes
whenever a field changes meaning or disappears.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

REPORT_VERSION = 1


@dataclass
class ProbeResult:
    """Accuracy of one protocol on the validation split.

    Attributes:
        protocol: ``linear``, ``linear4``, ``knn`` or ``attentive``.
        top1: top-1 accuracy in [0, 1].
        top5: top-5 accuracy in [0, 1], or None with fewer than 10 classes.
        num_train: labelled samples the probe was fitted on (after any low-shot subsetting).
        seconds: wall time of fitting and scoring (features excluded).
        settings: the protocol's hyper-parameters (epochs, k, ...).
    """

    protocol: str
    top1: float
    top5: float | None
    num_train: int
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)


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

    def to_dict(self) -> dict[str, Any]:
        return {"report_version": REPORT_VERSION, **asdict(self)}

    def write_json(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def table(self) -> Table:
        """A rich table: one row per protocol, accuracies in percent."""
        step = "" if self.step is None else f", step {self.step}"
        shots = "" if self.low_shot is None else f", low-shot {self.low_shot:g} of labels"
        table = Table(title=f"{self.model} ({self.source_kind}{step}, {self.encoder} encoder){shots}",
                      caption=f"{self.num_classes} classes, {self.num_train} train / {self.num_val} val samples; "
                              f"chance top-1 {100 * self.chance_top1:.1f} %; features {self.feature_seconds:.1f} s")
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
