"""Fixed 2-D sin-cos positional embeddings (the MAE convention I-JEPA uses).

Token ``t = r * grid_w + c`` (raster order, row ``r``, column ``c``) gets a ``D``-wide vector
made of four quarters, each ``D/4`` wide::

    [ sin(c * omega) | cos(c * omega) | sin(r * omega) | cos(r * omega) ]

with ``omega_i = 1 / 10000 ** (i / (D/4))`` for ``i = 0 .. D/4 - 1`` (equivalently
``1 / 10000 ** (2i / (D/2))``, the 1-D formula applied to each axis's ``D/2`` channels).
The first half encodes the column, the second the row: this is the order of the tables
stored in the released I-JEPA checkpoints, so a table computed here for the training grid
equals the stored one and tables for other grids are consistent with it.

The function is TorchScript-scriptable: an exported encoder calls it at run time when it
sees a resolution other than the training one.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def sincos_2d(embed_dim: int, grid_h: int, grid_w: int, device: Optional[torch.device] = None) -> Tensor:
    """The fixed sin-cos table for a ``grid_h`` x ``grid_w`` patch grid.

    Computed in float64 and returned as float32, so the table does not depend on the
    precision the model runs in.

    Args:
        embed_dim: D, the token width; must be a multiple of 4.
        grid_h: number of patch rows.
        grid_w: number of patch columns.
        device: where to build the table (default: the current default device).

    Returns:
        (grid_h * grid_w, D) float32 table, rows in raster order.

    Raises:
        ValueError: ``embed_dim`` is not a multiple of 4 or the grid is empty.
    """
    if embed_dim % 4 != 0:
        raise ValueError(
            "sincos_2d: embed_dim=" + str(embed_dim) + " must be a multiple of 4 (sin and cos for two axes); "
            "choose a width divisible by 4")
    if grid_h <= 0 or grid_w <= 0:
        raise ValueError("sincos_2d: the grid must be non-empty, got " + str(grid_h) + "x" + str(grid_w))
    quarter = embed_dim // 4
    exponent = torch.arange(quarter, dtype=torch.float64, device=device) / quarter
    omega = 1.0 / torch.pow(10000.0, exponent)  # (D/4,)
    rows = torch.arange(grid_h, dtype=torch.float64, device=device).repeat_interleave(grid_w)  # (N,)
    cols = torch.arange(grid_w, dtype=torch.float64, device=device).repeat(grid_h)  # (N,)
    angle_col = cols.unsqueeze(1) * omega.unsqueeze(0)  # (N, D/4)
    angle_row = rows.unsqueeze(1) * omega.unsqueeze(0)
    table = torch.cat([angle_col.sin(), angle_col.cos(), angle_row.sin(), angle_row.cos()], dim=1)
    return table.float()
