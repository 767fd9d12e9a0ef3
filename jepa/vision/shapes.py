"""The ten shape classes of the demo data sets: foreground masks of **shapes made of parts**.

Disc, square, triangle, ring, plus, tee, ell, flower, crescent and dumbbell. Plus, tee and ell are the
same two bars in different arrangements; ring, crescent and dumbbell are discs combined differently, so
a class is told by the object's shape and by how its parts are arranged. Every object is large (18-32 %
of the image), its size drawn **by area** (the same range for every class), rotated by a uniform angle
and placed uniformly wherever it fits whole.

The image modality's demo data paints these masks in random grey levels; the
video demo (:mod:`jepa.modalities.video.demo_shapes`) shows them through per-frame noise and colour
blobs. Masks are a pure function of the labels and the ``torch.Generator`` passed in.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CLASS_NAMES: tuple[str, ...] = (
    "disc", "square", "triangle", "ring", "plus", "tee", "ell", "flower", "crescent", "dumbbell",
)
AREA_RANGE = (0.18, 0.32)  # object area as a fraction of the image, uniform, the same for every class
_MARGIN = 0.02  # clear space between an object and the image edge, as a fraction of the side

def _class_mask(c: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Boolean foreground of class ``c`` in its local frame (the object spans about [-1, 1]^2)."""
    rho2, au, av = u * u + v * v, u.abs(), v.abs()
    bar = lambda u0, u1, v0, v1: (u > u0) & (u < u1) & (v > v0) & (v < v1)  # noqa: E731
    if c == 0:  # disc
        return rho2 < 1.0
    if c == 1:  # square
        return (au < 0.8) & (av < 0.8)
    if c == 2:  # triangle
        s3 = math.sqrt(3.0)
        return (v > -0.5) & (s3 * u + v < 1.0) & (-s3 * u + v < 1.0)
    if c == 3:  # ring: a disc with a hole
        return (rho2 < 1.0) & (rho2 > 0.3)
    if c == 4:  # plus: two bars crossing at their middles
        return bar(-0.3, 0.3, -1, 1) | bar(-1, 1, -0.3, 0.3)
    if c == 5:  # tee: the same bars, one at the other's end (centred on its smallest enclosing circle)
        return bar(-1, 1, -0.7725, -0.1725) | bar(-0.3, 0.3, -0.7725, 1.2275)
    if c == 6:  # ell: the same bars, meeting at a corner
        return bar(-0.8, -0.2, -1, 1) | bar(-0.8, 0.8, 0.4, 1)
    if c == 7:  # flower: five petals
        return rho2.sqrt() < 0.6 + 0.4 * torch.cos(5 * torch.atan2(v, u))
    if c == 8:  # crescent: a disc with a disc cut out
        return (rho2 < 1.0) & ((u - 0.5) ** 2 + v * v > 0.64)
    return ((u - 0.55) ** 2 + v * v < 0.2) | ((u + 0.55) ** 2 + v * v < 0.2) | bar(-0.6, 0.6, -0.15, 0.15)  # dumbbell


def _class_geometry(samples: int = 521) -> tuple[list[float], list[float]]:
    """Per class: area of the local-frame shape and the largest distance of its points from the origin."""
    grid = torch.linspace(-1.3, 1.3, samples)
    u, v = grid.view(-1, 1).expand(samples, samples), grid.view(1, -1).expand(samples, samples)
    areas, extents = [], []
    for c in range(len(CLASS_NAMES)):
        inside = _class_mask(c, u, v)
        areas.append(inside.float().mean().item() * 2.6 ** 2)
        extents.append(torch.sqrt(u * u + v * v)[inside].max().item())
    return areas, extents


_AREA, _EXTENT = _class_geometry()


def shape_masks(labels: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """Foreground of one object per label, all randomness drawn from ``g``.

    Args:
        labels: (B,) int64 class ids.
        size: image side in pixels.
        g: the only source of randomness.

    Returns:
        (B, size, size) float masks in [0, 1] (edges anti-aliased by drawing at twice the size).
    """
    b = labels.shape[0]
    hi = 2 * size
    coords = (torch.arange(hi, dtype=torch.float32) + 0.5) / hi
    y, x = coords.view(1, hi, 1), coords.view(1, 1, hi)
    r = lambda lo, up: torch.empty(b, 1, 1).uniform_(lo, up, generator=g)  # noqa: E731
    area, theta, fx, fy = r(*AREA_RANGE), r(0.0, 2 * math.pi), r(0.0, 1.0), r(0.0, 1.0)
    out = torch.empty(b, hi, hi)
    for c in labels.unique().tolist():  # one vectorised expression per class present
        rows = (labels == c).nonzero()[:, 0]
        scale = torch.sqrt(area[rows] / _AREA[c]).clamp(max=(0.5 - _MARGIN) / _EXTENT[c])  # the object fits whole
        reach = scale * _EXTENT[c] + _MARGIN
        dx = x - (reach + fx[rows] * (1 - 2 * reach))
        dy = y - (reach + fy[rows] * (1 - 2 * reach))
        cos, sin = torch.cos(theta[rows]), torch.sin(theta[rows])
        out[rows] = _class_mask(c, (dx * cos + dy * sin) / scale, (-dx * sin + dy * cos) / scale).float()
    return F.avg_pool2d(out[:, None], 2)[:, 0]
