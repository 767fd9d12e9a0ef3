"""The video demo's clips (``jepa demo-data --modality video``): a still shape seen through heavy noise.

Each clip shows one object of the ten shape classes of :mod:`jepa.vision.shapes` (the image demo's:
random size by area, angle, place, two grey levels kept apart with random polarity, a random
background gradient), still for the whole clip, under two kinds of colour noise drawn afresh for
every frame: per-pixel noise (std ``noise`` on the 0..1 scale, 0.4 by default) and *blobs*, noise on
a grid of 8 px cells smoothly upsampled (std ``blob``, 0.5 by default). The label is the shape
(chance 10 %).

Why this data (docs/video_demo.md has every measurement): on the earlier demo clips, labelled by the
direction of a moving polygon, the attentive probe reads the motion straight from a **random-init**
tubelet embedding (94-100 %), so no pretraining could beat random init there. Here one frame hides
the shape and the clip shows it, because the noise averages out over time. Pixel noise alone was
not enough: an image encoder averages it away *within* one frame (its 8 px patches), so one frame at
pixel noise 0.5 or 0.8 told the shape as well as the clip did (k-NN 31-33 %). Blobs vary at the scale
of the shape's parts, so no patch averages them away: one frame of these clips gives an image encoder
trained on it 18 % k-NN, the mean of the 8 frames a video view sees 32 %. Two spatio-temporal views of
one clip share the shape and nothing else (their noise is independent), so an encoder trained to map
them together learns to gather the shape over frames; an image encoder on the middle frame sees one
noisy frame.

Clips' frames are a pure function of (seed, split, index), whatever the number of writer processes (the
H.264 bytes of a few clips are not: :func:`jepa.modalities.video.demo.encode_mp4`); the
``holes`` variant (a screen of cells that open at random in every frame, ``open_p`` < 1) is the
screening data of ``tools/video_shape_clips.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from jepa.data import Manifest, derive_seed
from jepa.errors import ConfigError
from jepa.modalities.video.demo import DEMO_NUM_FRAMES, write_clip_splits
from jepa.vision.shapes import CLASS_NAMES, shape_masks

GENERATOR_FILE = "generator.txt"


@dataclass(frozen=True)
class ShapeClips:
    """Clip settings; :meth:`render` draws one clip.

    Attributes:
        num_classes: the first ``num_classes`` shape classes (2..10).
        noise: std of the per-frame, per-pixel colour noise (0..1 scale).
        blob: std of the per-frame colour *blob* noise (0..1 scale): Gaussian noise on a grid of ``blob_cell``
            px cells, bilinearly upsampled, so that it varies at the scale of the shape's parts and an
            encoder cannot average it away within one frame (0: none).
        blob_cell: blob grid cell side in pixels.
        size: frame side in pixels.
        num_frames: frames per clip.
        open_p: probability that a ``cell`` px cell of the screen shows the object in a frame (1.0: no
            screen, the demo's clips).
        cell: screen cell side in pixels.
    """

    num_classes: int = 10
    noise: float = 0.4
    size: int = 64
    num_frames: int = DEMO_NUM_FRAMES
    open_p: float = 1.0
    cell: int = 8
    blob: float = 0.5
    blob_cell: int = 8

    def __post_init__(self) -> None:
        if not 2 <= self.num_classes <= len(CLASS_NAMES):
            raise ConfigError(f"shape clips have 2 to {len(CLASS_NAMES)} classes, got {self.num_classes}")
        if self.size < 16 or self.size % 2 or self.num_frames < 2:
            raise ConfigError(f"shape clips need an even size >= 16 and >= 2 frames, got size={self.size}, "
                              f"num_frames={self.num_frames}")
        if not (0.0 <= self.noise <= 2.0 and 0.0 <= self.blob <= 2.0 and 0.0 < self.open_p <= 1.0
                and self.cell >= 1 and 1 <= self.blob_cell <= self.size):
            raise ConfigError(f"shape clips need noise and blob in [0, 2], open_p in (0, 1], cell >= 1 and blob_cell "
                              f"in [1, size], got noise={self.noise}, blob={self.blob}, open_p={self.open_p}, "
                              f"cell={self.cell}, blob_cell={self.blob_cell}")

    @property
    def classes(self) -> list[str]:
        return list(CLASS_NAMES[:self.num_classes])

    @property
    def generator(self) -> str:
        """Names the generator's version and settings (written to ``GENERATOR_FILE``)."""
        screen = "" if self.open_p == 1.0 else f" behind a screen of {self.cell} px cells open at {self.open_p}"
        blobs = f" and colour blobs {self.blob} in {self.blob_cell} px cells" if self.blob else ""
        return f"video: still shapes made of parts{screen} under per-frame noise {self.noise}{blobs} (2026-12-06)"

    def render(self, index: int, seed: int) -> tuple[np.ndarray, int]:
        """Clip ``index`` of clip set ``seed``: (num_frames, size, size, 3) uint8 frames and the label
        (``index % num_classes``: every class equally often)."""
        g = torch.Generator().manual_seed(derive_seed(seed, index))
        label = index % self.num_classes
        n, f = self.size, self.num_frames
        mask = shape_masks(torch.tensor([label]), n, g)[0]  # (S, S) in [0, 1]
        dark = torch.empty(()).uniform_(0.05, 0.4, generator=g)
        light = torch.empty(()).uniform_(0.6, 0.95, generator=g)
        fg, bg = (dark, light) if torch.rand((), generator=g) < 0.5 else (light, dark)
        coords = torch.linspace(-0.5, 0.5, n)
        slope = torch.empty(2).uniform_(-0.3, 0.3, generator=g)
        background = bg + slope[0] * coords.view(n, 1) + slope[1] * coords.view(1, n)  # (S, S)
        cells = -(-n // self.cell)
        opened = (torch.rand(f, cells, cells, generator=g) < self.open_p).float()  # drawn even when open_p is 1
        opened = opened.repeat_interleave(self.cell, 1).repeat_interleave(self.cell, 2)[:, :n, :n]  # (F, S, S)
        seen = mask[None] * opened
        frames = background[None] * (1 - seen) + fg * seen  # (F, S, S)
        frames = frames[..., None].expand(f, n, n, 3) + self.noise * torch.randn(f, n, n, 3, generator=g)
        if self.blob:  # drawn after the pixel noise, so that clips without blobs stay as they were
            grid = -(-n // self.blob_cell)
            blobs = torch.nn.functional.interpolate(torch.randn(f, 3, grid, grid, generator=g), size=(n, n),
                                                    mode="bilinear", align_corners=False)  # (F, 3, S, S)
            frames = frames + self.blob * blobs.permute(0, 2, 3, 1)
        return (frames.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), label


def write_shape_dataset(out_dir: str | Path, *, num_train: int, num_val: int, clips: ShapeClips = ShapeClips(),
                        seed: int = 0, max_count: int = 250, workers: int = 1,
                        show_progress: bool = True) -> dict[str, Manifest]:
    """Write ``out_dir/train`` and ``out_dir/val`` shard sets of labelled MP4 clips (``cls`` = shape class)
    and ``out_dir/generator.txt``.

    Raises:
        ConfigError: bad counts.
    """
    if num_train < 1 or num_val < 0:
        raise ConfigError(f"need num_train >= 1 and num_val >= 0 (got {num_train}, {num_val})")
    sizes = {split: n for split, n in (("train", num_train), ("val", num_val)) if n}
    manifests = write_clip_splits(clips, out_dir, sizes, seed=seed, classes=clips.classes, max_count=max_count,
                                  workers=workers, show_progress=show_progress)
    (Path(out_dir) / GENERATOR_FILE).write_text(clips.generator + "\n")
    return manifests


#: The demo clips' generator: ``tools/demo.sh video`` makes ``data/video_demo`` again when its
#: ``generator.txt`` says otherwise (data from the motion generator, which wrote none, or other settings).
GENERATOR = ShapeClips().generator
