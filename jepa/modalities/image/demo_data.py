"""A procedurally generated, labelled image dataset for the CPU demo (no downloads): the image
modality's ``write_demo_data`` (``jepa demo-data``).

Ten classes of **shapes made of parts**: disc, square, triangle, ring, plus, tee, ell, flower,
crescent and dumbbell. Plus, tee and ell are the same two bars in different arrangements; ring,
crescent and dumbbell are discs combined differently. So the label lives in the object's shape
and in how its parts are arranged, and nothing else tells it:

- every object is large (18-32 % of the image) and its size is drawn **by area**, the same range
  for every class, so the amount of foreground carries no class information (the tee and the ell,
  the widest, are shrunk when they would not fit; their mean area stays within 0.015 of the rest);
- it is rotated by a uniform angle and placed uniformly wherever it fits whole;
- object and background are two random grey levels kept apart (one in 0.05-0.4, the other in
  0.6-0.95), either one the object's (random polarity); the background has a random gradient and
  every pixel colour noise, so brightness and colour carry no class information either.

Frozen-feature probes on this data therefore show whether pretraining learned shape. The palette
decides how much a random-init encoder already reads (measured, docs/ablations_small.md, "The
generators that followed"): with random colours it sees mostly colour and the demo's pretraining gained little;
with a fixed light-on-dark palette a random-init ViT-Ti/8 already reads the shape (linear 63 %) and
the short pretraining did not beat it; random grey levels and polarity sit between the two.

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
from jepa.errors import ConfigError

CLASS_NAMES: tuple[str, ...] = (
    "disc", "square", "triangle", "ring", "plus", "tee", "ell", "flower", "crescent", "dumbbell",
)
AREA_RANGE = (0.18, 0.32)  # object area as a fraction of the image, uniform, the same for every class
_MARGIN = 0.02  # clear space between an object and the image edge, as a fraction of the side
_SPLITS = {"train": 0, "val": 1}
#: Names the generator's version; :func:`write_demo_dataset` writes it to ``GENERATOR_FILE`` so that
#: ``tools/demo.sh`` can tell data made by an older generator (and make it again) from current data.
GENERATOR = "shapes made of parts, grey levels with random polarity (2026-11-24)"
GENERATOR_FILE = "generator.txt"


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
    mask = shape_masks(labels, size, g)[:, None]  # (B, 1, S, S)
    dark = torch.empty(b, 1, 1, 1).uniform_(0.05, 0.4, generator=g)  # two grey levels kept apart,
    light = torch.empty(b, 1, 1, 1).uniform_(0.6, 0.95, generator=g)  # either one the object's
    swap = torch.rand(b, 1, 1, 1, generator=g) < 0.5  # random polarity: no class information in brightness
    bg, fg = torch.where(swap, light, dark).expand(b, 3, 1, 1), torch.where(swap, dark, light).expand(b, 3, 1, 1)
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
    """Write ``out_dir/train`` and ``out_dir/val`` shard sets (each with its manifest), and
    ``out_dir/generator.txt`` naming the generator (:data:`GENERATOR`).

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
        raise ConfigError(f"num_classes must be in 2..{len(CLASS_NAMES)} (got {num_classes})")
    if size < 16:
        raise ConfigError(f"size must be at least 16 pixels for the shapes to be recognisable (got {size})")
    if num_images < 1 or num_val < 0:
        raise ConfigError(f"need num_images >= 1 and num_val >= 0 (got {num_images}, {num_val})")
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
    (Path(out_dir) / GENERATOR_FILE).write_text(GENERATOR + "\n")
    return manifests
