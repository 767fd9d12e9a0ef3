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

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torchvision.io

from jepa.data import Manifest, ShardSample, derive_seed, write_shard_set
from jepa.errors import ConfigError
from jepa.vision.shapes import CLASS_NAMES, shape_masks

_SPLITS = {"train": 0, "val": 1}
#: Names the generator's version; :func:`write_demo_dataset` writes it to ``GENERATOR_FILE`` so that
#: ``tools/demo.sh`` can tell data made by an older generator (and make it again) from current data.
GENERATOR = "shapes made of parts, grey levels with random polarity (2026-11-24)"
GENERATOR_FILE = "generator.txt"


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
