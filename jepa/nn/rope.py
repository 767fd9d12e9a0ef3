"""Rotary position embedding (RoPE) over a 1-, 2- or 3-D token grid, applied to queries and keys.

Instead of adding a position table to the tokens, every attention layer rotates pairs of query and
key channels by angles proportional to the token's grid coordinates, so that the attention logits
depend on relative positions. The layout is V-JEPA 2's (the authors' ``src/models/utils/modules.py``,
``RoPEAttention`` and ``rotate_queries_or_keys``), which their released weights were trained with:

* **Axis split.** A head of ``head_dim`` channels gives every grid axis (time, height, width for
  clips) the same even share ``a = 2 * floor(head_dim / num_axes / 2)`` (:func:`rope_axis_width`),
  in axis order; the ``head_dim - num_axes * a`` channels left over are not rotated (ViT-L, head 64,
  3 axes: 20 + 20 + 20 rotated, 4 passed through).
* **Frequencies.** Within an axis, ``omega_i = 1 / 10000 ** (i / (a/2))``, ``i = 0 .. a/2 - 1``.
* **Channel layout.** The angle of channel ``j`` of the axis is ``pos * omega_(j mod a/2)``: the
  ``a/2`` frequencies tiled twice, ``[w_0 .. w_(a/2-1), w_0 .. w_(a/2-1)]``, while the rotation
  pairs adjacent channels ``(2m, 2m+1)`` (``x -> x cos + rot(x) sin`` with
  ``rot(x)_(2m) = -x_(2m+1)``, ``rot(x)_(2m+1) = x_(2m)``). The authors document this as a bug that
  duplicates frequencies (a pair's two channels need not share an angle, so it is not a pure
  rotation) and keep it for compatibility with their weights; so do we, or those weights would
  compute another function.
* **Coordinates.** A token's raster index ``n`` on a grid ``(g_0, .., g_k)`` (last axis fastest)
  gives integer coordinates ``(n // (g_1 .. g_k), .., n mod g_k)`` (:func:`grid_coordinates`); the
  first axis is not wrapped, so a longer clip extrapolates in time. A masked input keeps every
  token's original coordinates: the positions come from the keep indices, not from the order of the
  kept tokens.

Angles, sines and cosines are computed in float32 from integer coordinates (bitwise as the authors'
code computes them in float32); under autocast they are cast to the queries' precision only when
applied (the authors compute them in the queries' dtype, so in bfloat16 the two differ by bfloat16
rounding of the angles). Every function here is TorchScript-scriptable.
"""

# No ``from __future__ import annotations``: these functions are compiled by TorchScript.
from typing import List, Tuple

import torch
from torch import Tensor

from jepa.errors import ConfigError

ROPE_THETA = 10000.0
"""Base of the geometric frequency ladder (the authors' ``10000``)."""


def rope_axis_width(head_dim: int, num_axes: int) -> int:
    """Channels of one grid axis: ``2 * floor(head_dim / num_axes / 2)`` (the rest are not rotated).

    Raises:
        ValueError: ``num_axes`` is not 1, 2 or 3, or the head is too narrow to rotate anything.
    """
    if num_axes < 1 or num_axes > 3:
        raise ConfigError("RoPE: num_axes=" + str(num_axes) + " must be 1, 2 or 3")
    width = 2 * ((head_dim // num_axes) // 2)
    if width < 2:
        raise ConfigError("RoPE: a head of " + str(head_dim) + " channels leaves no channel pair per axis for "
                         + str(num_axes) + " axes; use at least " + str(2 * num_axes) + " channels per head")
    return width


def grid_coordinates(index: Tensor, grid: List[int]) -> Tensor:
    """Raster indices -> integer grid coordinates, as float32.

    Args:
        index: (...) int64 raster indices on ``grid`` (last axis fastest).
        grid: the token grid, 1 to 3 sizes, e.g. ``[T', H', W']``.

    Returns:
        (len(grid), ...) float32 coordinates, the first axis not wrapped (it may exceed its size).
    """
    coords: List[Tensor] = []
    stride = 1
    for size in grid[1:]:
        stride = stride * size
    rest = index
    for axis in range(len(grid)):
        coord = torch.div(rest, stride, rounding_mode="floor")
        rest = rest - coord * stride
        coords.append(coord)
        if axis + 1 < len(grid):
            stride = stride // grid[axis + 1]
    return torch.stack(coords, dim=0).float()


def rope_frequencies(axis_width: int, device: torch.device, theta: float = 10000.0) -> Tensor:
    """(axis_width / 2,) float32 ``omega_i = 1 / theta ** (i / (axis_width / 2))`` (``theta``: :data:`ROPE_THETA`)."""
    omega = torch.arange(axis_width // 2, dtype=torch.float32, device=device)
    omega = omega / (axis_width / 2.0)
    return 1.0 / torch.pow(theta, omega)


def rope_tables(coords: Tensor, axis_width: int) -> Tuple[Tensor, Tensor]:
    """Cosines and sines of every rotated channel, axes in order (see the module docstring).

    Args:
        coords: (A, ..., N) float32 grid coordinates (:func:`grid_coordinates`).
        axis_width: channels per axis (:func:`rope_axis_width`).

    Returns:
        ``(cos, sin)``, each (..., N, A * axis_width) float32.
    """
    omega = rope_frequencies(axis_width, coords.device)
    cos_parts: List[Tensor] = []
    sin_parts: List[Tensor] = []
    for axis in range(coords.shape[0]):
        angle = coords[axis].unsqueeze(-1) * omega  # (..., N, a/2)
        cos, sin = angle.cos(), angle.sin()
        cos_parts.append(torch.cat([cos, cos], dim=-1))  # the frequencies tiled twice
        sin_parts.append(torch.cat([sin, sin], dim=-1))
    return torch.cat(cos_parts, dim=-1), torch.cat(sin_parts, dim=-1)


def grid_rope(index: Tensor, grid: List[int], head_dim: int) -> Tuple[Tensor, Tensor]:
    """The ``(cos, sin)`` tables of tokens at raster ``index`` on ``grid``, shaped to broadcast over heads.

    Args:
        index: (N,) or (B, N) int64 raster indices.
        grid: the token grid (1 to 3 sizes).
        head_dim: channels per attention head.

    Returns:
        ``(cos, sin)``, each (1, 1, N, R) for (N,) indices or (B, 1, N, R) for (B, N), float32, with
        ``R = len(grid) * rope_axis_width(head_dim, len(grid))`` rotated channels.
    """
    cos, sin = rope_tables(grid_coordinates(index, grid), rope_axis_width(head_dim, len(grid)))
    if index.dim() == 1:
        return cos[None, None], sin[None, None]
    return cos.unsqueeze(1), sin.unsqueeze(1)


def rotate_pairs(x: Tensor) -> Tensor:
    """``(x_0, x_1, x_2, x_3, ..) -> (-x_1, x_0, -x_3, x_2, ..)`` along the last axis (even length)."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first ``R`` channels of queries or keys; the rest pass through.

    Args:
        x: (B, heads, N, head_dim) queries or keys.
        cos, sin: (B or 1, 1, N, R) tables from :func:`grid_rope` (cast to ``x``'s dtype here).

    Returns:
        (B, heads, N, head_dim).
    """
    rotated = cos.shape[-1]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    head = x[..., :rotated]
    out = head * cos + rotate_pairs(head) * sin
    if rotated == x.shape[-1]:
        return out
    return torch.cat([out, x[..., rotated:]], dim=-1)
