"""Figures written as PNG files: matplotlib without a display, written atomically, never over a folder."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit

import matplotlib.pyplot as plt  # noqa: E402

from jepa.outputs import check_output_file  # noqa: E402

DPI = 100
"""Pixels per inch of every PNG: figure sizes are given in inches, so a 6.4 in figure is 640 px wide."""


def new_figure(rows: int, cols: int, *, panel_in: tuple[float, float] = (1.6, 1.6), title: str | None = None,
               squeeze: bool = False, **kw: Any) -> tuple[Any, Any]:
    """A figure of ``rows x cols`` panels of ``panel_in`` inches each; returns ``(figure, axes)`` (axes 2-D)."""
    fig, axes = plt.subplots(rows, cols, figsize=(max(2.0, cols * panel_in[0]), max(1.5, rows * panel_in[1] + 0.4)),
                             squeeze=squeeze, dpi=DPI, layout="constrained", **kw)
    if title:  # wrapped to the figure's width (about 14 characters of 9 pt per inch)
        width = max(30, int(cols * panel_in[0] * 14))
        fig.suptitle("\n".join(textwrap.fill(line, width) for line in title.split("\n")), fontsize=9)
    return fig, axes


def bare(ax: Any) -> None:
    """No ticks or frame: a panel that shows a picture."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def save_png(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (a PNG) through a temporary file beside it, close it, return the path.

    Raises:
        ValueError: ``path`` is a folder, named pipe, device or socket (:func:`jepa.outputs.check_output_file`).
    """
    path = check_output_file(path, "--out", example="picture.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight", pad_inches=0.05)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path
