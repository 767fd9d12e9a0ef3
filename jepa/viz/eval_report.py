"""``jepa viz eval``: a ``jepa eval`` JSON report as pictures: the top-1 of every protocol against chance, each
grid probe's (lr x weight decay) heads as heat maps of held-out and validation top-1 (the chosen head
framed), and per-class accuracy when a result carries it (``per_class``: class name -> top-1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.patches import Rectangle

from jepa.checkpoint.json_file import read_json_object
from jepa.errors import ConfigError
from jepa.viz.figure import new_figure, save_png


def read_report(path: Path) -> dict[str, Any]:
    """The report's JSON object, its ``results`` checked to be a list of objects.

    Raises:
        ValueError: not a readable JSON object of ``jepa eval --json``.
    """
    try:
        report = read_json_object(path, "the evaluation report")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; pass a report of `jepa eval --json FILE`") from None
    results = report.get("results")
    if not isinstance(results, list) or not all(isinstance(r, dict) and isinstance(r.get("protocol"), str)
                                                and isinstance(r.get("top1"), (int, float)) for r in results):
        raise ConfigError(f"{path}: not a report of `jepa eval --json` (no list of results with protocol and top1)")
    return report


def grid_matrix(grid: list[dict[str, Any]], key: str) -> tuple[list[float], list[float], np.ndarray]:
    """``(lrs, wds, values)``: the heads' ``key`` (NaN where a head lacks it) on the lr x wd grid, sorted."""
    lrs = sorted({float(row["lr"]) for row in grid})
    wds = sorted({float(row["wd"]) for row in grid})
    values = np.full((len(lrs), len(wds)), np.nan)
    for row in grid:
        if isinstance(row.get(key), (int, float)):
            values[lrs.index(float(row["lr"])), wds.index(float(row["wd"]))] = row[key]
    return lrs, wds, values


def _panels(report: dict[str, Any]) -> list[tuple[str, Any]]:
    """What to draw for one report: ``(kind, data)`` per panel."""
    panels: list[tuple[str, Any]] = [("summary", report)]
    for result in report["results"]:
        grid = result.get("grid")
        if isinstance(grid, list) and grid and all(isinstance(r, dict) and "lr" in r and "wd" in r for r in grid):
            panels += [("grid", (result, "holdout_top1", "held-out")), ("grid", (result, "val_top1", "validation"))]
        if isinstance(result.get("per_class"), dict) and result["per_class"]:
            panels.append(("per_class", result))
    return panels


def _summary(ax: Any, report: dict[str, Any]) -> None:
    results = report["results"]
    names = [r["protocol"] for r in results]
    ax.bar(range(len(names)), [100 * r["top1"] for r in results], color="C0")
    for i, r in enumerate(results):
        ax.text(i, 100 * r["top1"], f"{100 * r['top1']:.1f}", ha="center", va="bottom", fontsize=6)
    chance = report.get("chance_top1")
    if isinstance(chance, (int, float)) and chance > 0:
        ax.axhline(100 * chance, color="grey", linestyle="--", linewidth=0.8, label="chance")
        ax.legend(fontsize=6)
    ax.set_xticks(range(len(names)), names, fontsize=6)
    ax.set_ylabel("top-1 %", fontsize=7)
    ax.set_ylim(0, 100)
    step = "" if report.get("step") is None else f", step {report['step']}"
    ax.set_title(f"{report.get('model', '?')} ({report.get('source_kind', '?')}{step})", fontsize=7)


def _grid(ax: Any, fig: Any, result: dict[str, Any], key: str, what: str) -> None:
    lrs, wds, values = grid_matrix(result["grid"], key)
    image = ax.imshow(100 * values, cmap="viridis", aspect="auto")
    for i in range(len(lrs)):
        for j in range(len(wds)):
            if not np.isnan(values[i, j]):
                bright = values[i, j] > np.nanmin(values) + 0.6 * (np.nanmax(values) - np.nanmin(values))
                ax.text(j, i, f"{100 * values[i, j]:.1f}", ha="center", va="center", fontsize=5,
                        color="black" if bright else "white")
    settings = result.get("settings") or {}
    if settings.get("lr") in lrs and settings.get("wd") in wds:
        ax.add_patch(Rectangle((wds.index(settings["wd"]) - 0.5, lrs.index(settings["lr"]) - 0.5), 1, 1,
                               fill=False, edgecolor="red", linewidth=2))
    ax.set_xticks(range(len(wds)), [f"{w:g}" for w in wds], fontsize=6)
    ax.set_yticks(range(len(lrs)), [f"{v:g}" for v in lrs], fontsize=6)
    ax.set_xlabel("weight decay", fontsize=7)
    ax.set_ylabel("lr", fontsize=7)
    ax.set_title(f"{result['protocol']}: {what} top-1 % (chosen: red)", fontsize=7)
    fig.colorbar(image, ax=ax, fraction=0.05).ax.tick_params(labelsize=5)


def _per_class(ax: Any, result: dict[str, Any]) -> None:
    names = list(result["per_class"])
    ax.barh(range(len(names)), [100 * float(result["per_class"][n]) for n in names], color="C1")
    ax.set_yticks(range(len(names)), names, fontsize=5)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("top-1 %", fontsize=7)
    ax.set_title(f"{result['protocol']}: per class", fontsize=7)


def eval_picture(paths: list[Path], out: Path) -> Path:
    """Write the pictures of the reports at ``paths``: one row per report."""
    reports = [(Path(p), read_report(Path(p))) for p in paths]
    rows = [_panels(report) for _, report in reports]
    cols = max(len(r) for r in rows)
    fig, axes = new_figure(len(rows), cols, panel_in=(3.0, 2.6),
                           title="evaluation reports: " + ", ".join(str(p) for p, _ in reports))
    for r, (panels, (path, report)) in enumerate(zip(rows, reports)):
        for c, (kind, data) in enumerate(panels):
            ax = axes[r][c]
            if kind == "summary":
                _summary(ax, data)
                ax.set_title(f"{path.name}: {ax.get_title()}", fontsize=7)
            elif kind == "grid":
                _grid(ax, fig, *data)
            else:
                _per_class(ax, data)
        for c in range(len(panels), cols):
            axes[r][c].set_visible(False)
    return save_png(fig, out)
