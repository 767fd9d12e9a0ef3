"""Fixed 3-D sin-cos positional embeddings (the V-JEPA layout).

Token ``n = (t * grid_h + r) * grid_w + c`` (raster order over time step ``t``, row ``r``,
column ``c``) gets a ``D``-wide vector made of three 1-D sin-cos codes, one per axis, in the
order **time | height | width**; each code of width ``a`` is ``[sin(x * omega) | cos(x * omega)]``
with ``omega_i = 1 / 10000 ** (i / (a/2))``, ``i = 0 .. a/2 - 1``. The channel split:

* ``uniform_power=True`` (V-JEPA's setting): every axis gets ``a = 2 * ceil(D / 6)`` channels and
  the concatenation is cut to ``D`` (for ViT-L, D = 1024: 342 + 342 + 340, the width code loses
  its last two cosines);
* ``uniform_power=False``: time gets ``D/2``, height and width ``D/4`` each (``D`` a multiple of 8).

This is the channel layout of the authors' tables, so a table computed here for the training
grid equals the one stored in their checkpoints. Scriptable: an exported encoder calls it at
run time for clips whose token grid differs from the training one.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor


def _sincos_1d(width: int, positions: Tensor) -> Tensor:
    """(N,) float64 positions -> (N, width) ``[sin | cos]`` code; ``width`` even."""
    half = width // 2
    omega = 1.0 / torch.pow(10000.0, torch.arange(half, dtype=torch.float64, device=positions.device) / half)
    angle = positions.unsqueeze(1) * omega.unsqueeze(0)
    return torch.cat([angle.sin(), angle.cos()], dim=1)


def axis_widths(embed_dim: int, uniform_power: bool = True) -> List[int]:
    """Channels of the (time, height, width) codes before the cut to ``embed_dim``.

    Raises:
        ValueError: ``embed_dim`` does not suit the split (``uniform_power=False`` needs a multiple of 8).
    """
    if embed_dim <= 0:
        raise ValueError("sincos_3d: embed_dim must be positive, got " + str(embed_dim))
    if uniform_power:
        a = 2 * ((embed_dim + 5) // 6)
        return [a, a, a]
    if embed_dim % 8 != 0:
        raise ValueError("sincos_3d: embed_dim=" + str(embed_dim) + " must be a multiple of 8 when uniform_power is "
                         "false (time D/2, height and width D/4, each an even sin/cos pair); choose a multiple of 8 "
                         "or set uniform_power")
    return [embed_dim // 2, embed_dim // 4, embed_dim // 4]


def sincos_3d(embed_dim: int, grid_t: int, grid_h: int, grid_w: int, uniform_power: bool = True,
              device: Optional[torch.device] = None) -> Tensor:
    """The fixed sin-cos table of a ``grid_t x grid_h x grid_w`` token grid.

    Computed in float64 and returned as float32, so the table does not depend on the precision
    the model runs in.

    Args:
        embed_dim: D, the token width.
        grid_t: token time steps (frames / tubelet).
        grid_h: patch rows.
        grid_w: patch columns.
        uniform_power: the channel split (see the module docstring).
        device: where to build the table (default: the current default device).

    Returns:
        (grid_t * grid_h * grid_w, D) float32 table, rows in raster order (time slowest).

    Raises:
        ValueError: the grid is empty or ``embed_dim`` does not suit the split.
    """
    if grid_t <= 0 or grid_h <= 0 or grid_w <= 0:
        raise ValueError("sincos_3d: the grid must be non-empty, got " + str(grid_t) + "x" + str(grid_h) + "x"
                         + str(grid_w))
    widths = axis_widths(embed_dim, uniform_power)
    hw = grid_h * grid_w
    n = grid_t * hw
    index = torch.arange(n, device=device)
    t = torch.div(index, hw, rounding_mode="floor").double()
    r = torch.div(index % hw, grid_w, rounding_mode="floor").double()
    c = (index % grid_w).double()
    table = torch.cat([_sincos_1d(widths[0], t), _sincos_1d(widths[1], r), _sincos_1d(widths[2], c)], dim=1)
    return table[:, :embed_dim].float()
