"""Fixed sin-cos position tables of 1-, 2- and 3-D token grids.

Every table is built from one 1-D code: a position ``x`` and an even width ``a`` give
``[sin(x * omega) | cos(x * omega)]`` with ``omega_i = 1 / 10000 ** (i / (a/2))``,
``i = 0 .. a/2 - 1`` (:func:`sincos_code`). Rows are in raster order (the last axis fastest), as
the patch embeddings emit their tokens. How the ``D`` channels are split between the axes follows
the convention of the checkpoints each layout must match:

* 1-D (:func:`sincos_1d`, sequences): one code of width ``D`` (``D`` even);
* 2-D (:func:`sincos_2d`, images; the MAE convention that I-JEPA's released checkpoints store):
  **column | row**, each ``D/2`` wide (``D`` a multiple of 4). Token ``t = r * grid_w + c`` gets
  ``[sin(c w) | cos(c w) | sin(r w) | cos(r w)]``, each quarter ``D/4`` wide;
* 3-D (:func:`sincos_3d`, clips; V-JEPA's layout): **time | height | width**. With
  ``uniform_power`` (V-JEPA's setting) every axis gets ``2 * ceil(D / 6)`` channels and the
  concatenation is cut to ``D`` (ViT-L, D = 1024: 342 + 342 + 340, the width code losing its last
  two cosines); without it time gets ``D/2`` and height and width ``D/4`` each (``D`` a multiple of 8).

Tables are computed in float64 and returned as float32, so they do not depend on the precision the
model runs in. Every function here is TorchScript-scriptable: an exported encoder calls its table
function at run time for an input whose grid differs from the training one.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from jepa.errors import ConfigError


def sincos_code(width: int, positions: Tensor) -> Tensor:
    """(N,) float64 positions -> (N, width) float64 ``[sin | cos]`` code; ``width`` even."""
    half = width // 2
    omega = 1.0 / torch.pow(10000.0, torch.arange(half, dtype=torch.float64, device=positions.device) / half)
    angle = positions.unsqueeze(1) * omega.unsqueeze(0)
    return torch.cat([angle.sin(), angle.cos()], dim=1)


def sincos_1d(embed_dim: int, num_tokens: int, device: Optional[torch.device] = None) -> Tensor:
    """The fixed sin-cos table of ``num_tokens`` positions.

    Args:
        embed_dim: D, the token width; must be even.
        num_tokens: N, number of positions.
        device: where to build the table (default: the current default device).

    Returns:
        (N, D) float32 table.

    Raises:
        ValueError: ``embed_dim`` is odd or ``num_tokens`` is not positive.
    """
    if embed_dim % 2 != 0:
        raise ConfigError("sincos_1d: embed_dim=" + str(embed_dim) + " must be even (a sin and a cos half)")
    if num_tokens <= 0:
        raise ConfigError("sincos_1d: num_tokens must be positive, got " + str(num_tokens))
    return sincos_code(embed_dim, torch.arange(num_tokens, dtype=torch.float64, device=device)).float()


def sincos_2d(embed_dim: int, grid_h: int, grid_w: int, device: Optional[torch.device] = None) -> Tensor:
    """The fixed sin-cos table of a ``grid_h`` x ``grid_w`` patch grid (column code, then row code).

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
        raise ConfigError(
            "sincos_2d: embed_dim=" + str(embed_dim) + " must be a multiple of 4 (sin and cos for two axes); "
            "choose a width divisible by 4")
    if grid_h <= 0 or grid_w <= 0:
        raise ConfigError("sincos_2d: the grid must be non-empty, got " + str(grid_h) + "x" + str(grid_w))
    rows = torch.arange(grid_h, dtype=torch.float64, device=device).repeat_interleave(grid_w)  # (N,)
    cols = torch.arange(grid_w, dtype=torch.float64, device=device).repeat(grid_h)  # (N,)
    half = embed_dim // 2
    return torch.cat([sincos_code(half, cols), sincos_code(half, rows)], dim=1).float()


def axis_widths_3d(embed_dim: int, uniform_power: bool = True) -> List[int]:
    """Channels of the (time, height, width) codes of :func:`sincos_3d`, before the cut to ``embed_dim``.

    Raises:
        ValueError: ``embed_dim`` does not suit the split (``uniform_power=False`` needs a multiple of 8).
    """
    if embed_dim <= 0:
        raise ConfigError("sincos_3d: embed_dim must be positive, got " + str(embed_dim))
    if uniform_power:
        a = 2 * ((embed_dim + 5) // 6)
        return [a, a, a]
    if embed_dim % 8 != 0:
        raise ConfigError("sincos_3d: embed_dim=" + str(embed_dim) + " must be a multiple of 8 when uniform_power is "
                         "false (time D/2, height and width D/4, each an even sin/cos pair); choose a multiple of 8 "
                         "or set uniform_power")
    return [embed_dim // 2, embed_dim // 4, embed_dim // 4]


def sincos_3d(embed_dim: int, grid_t: int, grid_h: int, grid_w: int, uniform_power: bool = True,
              device: Optional[torch.device] = None) -> Tensor:
    """The fixed sin-cos table of a ``grid_t x grid_h x grid_w`` token grid (time, height, width codes).

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
        raise ConfigError("sincos_3d: the grid must be non-empty, got " + str(grid_t) + "x" + str(grid_h) + "x"
                         + str(grid_w))
    widths = axis_widths_3d(embed_dim, uniform_power)
    hw = grid_h * grid_w
    n = grid_t * hw
    index = torch.arange(n, device=device)
    t = torch.div(index, hw, rounding_mode="floor").double()
    r = torch.div(index % hw, grid_w, rounding_mode="floor").double()
    c = (index % grid_w).double()
    table = torch.cat([sincos_code(widths[0], t), sincos_code(widths[1], r), sincos_code(widths[2], c)], dim=1)
    return table[:, :embed_dim].float()
