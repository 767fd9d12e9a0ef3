"""A procedurally generated, labelled image dataset for the CPU demo (no downloads): the image
modality's ``write_demo_data`` (``jepa demo-data``).

Ten classes of shapes and textures: disc, square, triangle, ring, cross (randomly rotated,
scaled and placed) and horizontal / vertical / diagonal stripes, checkerboard and dots (inside a
patch of random size and place, the class fixing the pattern). Foreground and background
colours are random per image and kept apart, the background has a random gradient and every
pixel noise, so the class cannot be read from mean colour: a model has to see shape and texture.
Frozen-feature probes on this data therefore show whether pretraining learned anything.

Images are a pure function of (seed, split, index), whatever the number of writer processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
import torchvision.io

from jepa.data import Manifest, ShardSample, derive_seed, write_shard_set

CLASS_NAMES: tuple[str, ...] = (
    "disc", "square", "triangle", "ring", "cross",
    "stripes_horizontal", "stripes_vertical", "stripes_diagonal", "checkerboard", "dots",
)
_SPLITS = {"train": 0, "val": 1}


def _class_mask(c: int, u, v, px, py, x, y, period, phase) -> torch.Tensor:
    """Boolean foreground of class ``c`` given local (rotated, scaled) and patch coordinates."""
    wave = lambda t: torch.frac(t / period + phase) < 0.5  # noqa: E731
    in_patch = (px.abs() < 1.2) & (py.abs() < 1.2)
    if c == 0:  # disc
        return u * u + v * v < 1.0
    if c == 1:  # square
        return (u.abs() < 0.8) & (v.abs() < 0.8)
    if c == 2:  # triangle
        s3 = math.sqrt(3.0)
        return (v > -0.5) & (s3 * u + v < 1.0) & (-s3 * u + v < 1.0)
    if c == 3:  # ring
        rho2 = u * u + v * v
        return (rho2 < 1.0) & (rho2 > 0.36)
    if c == 4:  # cross
        au, av = u.abs(), v.abs()
        return ((au < 0.3) & (av < 1.0)) | ((av < 0.3) & (au < 1.0))
    if c == 5:  # horizontal stripes
        return in_patch & wave(y + 0 * x)
    if c == 6:  # vertical stripes
        return in_patch & wave(x + 0 * y)
    if c == 7:  # diagonal stripes
        return in_patch & wave((x + y) / math.sqrt(2.0))
    if c == 8:  # checkerboard
        return in_patch & (wave(x + 0 * y) ^ wave(y + 0 * x))
    dots = ((torch.frac(x / period + phase) - 0.5).abs() < 0.22) & ((torch.frac(y / period + phase) - 0.5).abs() < 0.22)
    return in_patch & dots  # 9: dots


def _shape_masks(labels: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """(B,) class ids -> (B, size, size) float foreground masks in [0, 1], all drawn from ``g``."""
    b = labels.shape[0]
    hi = 2 * size  # draw at twice the resolution, then average-pool: anti-aliased edges
    coords = (torch.arange(hi, dtype=torch.float32) + 0.5) / hi
    y, x = coords.view(1, hi, 1), coords.view(1, 1, hi)
    r = lambda lo, up: torch.empty(b, 1, 1).uniform_(lo, up, generator=g)  # noqa: E731
    radius = r(0.14, 0.3)
    cx, cy = r(0.0, 1.0) * (1 - 2 * radius) + radius, r(0.0, 1.0) * (1 - 2 * radius) + radius
    theta = r(0.0, 2 * math.pi)
    period = r(0.055, 0.09)  # texture period as a fraction of the image side
    phase = r(0.0, 1.0)
    out = torch.empty(b, hi, hi)
    for c in labels.unique().tolist():  # one vectorised expression per class present
        rows = (labels == c).nonzero()[:, 0]
        dx, dy = x - cx[rows], y - cy[rows]
        cos, sin, rad = torch.cos(theta[rows]), torch.sin(theta[rows]), radius[rows]
        u = (dx * cos + dy * sin) / rad  # rotated, scaled local frame (shapes)
        v = (-dx * sin + dy * cos) / rad
        # Textures fill an axis-aligned patch; their orientation is the class, so it is not rotated.
        out[rows] = _class_mask(c, u, v, dx / rad, dy / rad, x, y, period[rows], phase[rows]).float()
    return F.avg_pool2d(out[:, None], 2)[:, 0]


def render_images(labels: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Render one image per label.

    Args:
        labels: (B,) int64 class ids in ``[0, len(CLASS_NAMES))``.
        size: image side in pixels.
        generator: the only source of randomness.

    Returns:
        (B, 3, size, size) uint8 images.
    """
    b, g = labels.shape[0], generator
    mask = _shape_masks(labels, size, g)[:, None]  # (B, 1, S, S)
    bg = torch.rand(b, 3, 1, 1, generator=g)
    fg = torch.remainder(bg + 0.5 + torch.empty(b, 3, 1, 1).uniform_(-0.2, 0.2, generator=g), 1.0)
    coords = torch.linspace(-0.5, 0.5, size)
    slope = torch.empty(b, 2, 1, 1).uniform_(-0.3, 0.3, generator=g)
    gradient = slope[:, :1] * coords.view(1, 1, size, 1) + slope[:, 1:] * coords.view(1, 1, 1, size)
    image = (bg + gradient) * (1 - mask) + fg * mask
    image = image + 0.06 * torch.randn(b, 3, size, size, generator=g)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


@dataclass(frozen=True)
class _DemoChunk:
    """Chunk job for :func:`jepa.data.write_shard_set`: images ``start .. start+count`` of a split."""

    seed: int
    split: str
    start: int
    count: int
    num_classes: int
    size: int

    def __call__(self) -> Iterator[ShardSample]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, _SPLITS[self.split], self.start))
        index = torch.arange(self.start, self.start + self.count)
        labels = index % self.num_classes
        images = render_images(labels, self.size, g)
        encoded = torchvision.io.encode_jpeg(list(images), quality=92)
        for i, label, data in zip(index.tolist(), labels.tolist(), encoded):
            yield ShardSample(f"{self.split}_{i:07d}", "jpg", data.numpy().tobytes(), label)


def write_demo_dataset(out_dir: str | Path, *, num_images: int = 5000, num_val: int = 1000, size: int = 64,
                       num_classes: int = 10, seed: int = 0, max_count: int = 500, workers: int = 1,
                       show_progress: bool = True) -> dict[str, Manifest]:
    """Write ``out_dir/train`` and ``out_dir/val`` shard sets (each with its manifest).

    Args:
        out_dir: output folder.
        num_images: training images.
        num_val: held-out validation images (drawn independently of the training ones).
        size: image side in pixels.
        num_classes: first ``num_classes`` of :data:`CLASS_NAMES` (2..10).
        seed: everything is a function of it.
        max_count: images per shard.
        workers: parallel writer processes.
        show_progress: draw progress bars.

    Returns:
        ``{"train": manifest, "val": manifest}``.

    Raises:
        ValueError: bad counts, size or class count.
    """
    if not 2 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(f"num_classes must be in 2..{len(CLASS_NAMES)} (got {num_classes})")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels for the shapes to be recognisable (got {size})")
    if num_images < 1 or num_val < 0:
        raise ValueError(f"need num_images >= 1 and num_val >= 0 (got {num_images}, {num_val})")
    manifests = {}
    for split, n in (("train", num_images), ("val", num_val)):
        if n == 0:
            continue
        jobs = [_DemoChunk(seed, split, start, min(max_count, n - start), num_classes, size)
                for start in range(0, n, max_count)]
        manifests[split] = write_shard_set(
            jobs, Path(out_dir) / split, prefix=split, max_count=max_count, max_bytes=1 << 40, workers=workers,
            classes=list(CLASS_NAMES[:num_classes]), total_items=n, show_progress=show_progress,
        )
    return manifests
