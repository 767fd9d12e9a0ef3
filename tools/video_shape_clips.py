"""Screening data for the video demo (objectives issue): a shape seen through flickering holes.

Each clip shows one still object of the image demo's ten classes (shapes made of parts, random
size, angle, place, grey levels and polarity: :func:`jepa.modalities.image.demo_data.shape_masks`)
behind a screen of square cells that open and close at random: in every frame each ``--cell`` px
cell shows the object with probability ``--open`` and the background otherwise, independently of
the other frames. The label is the shape. One frame shows about ``--open`` of the object; the
clip, taken over time, shows all of it. So a single-frame (middle-frame) encoder sees a fragment
while the video encoder can gather the whole shape, and, unlike the motion clips, a random
tubelet embedding has no shortcut to the label (docs/video_demo.md).

    python tools/video_shape_clips.py data/video_shapes
    jepa eval random:recipes/video_demo_lejepa.yaml --train-shards data/video_shapes/train \\
        --val-shards data/video_shapes/val --protocol linear,knn,attentive

The shards have the shipped video demo's layout (MP4 clips of 32 frames at 64 px, H.264 through
:func:`jepa.modalities.video.demo.encode_mp4`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch

from jepa.data import derive_seed
from jepa.modalities.image.demo_data import CLASS_NAMES, shape_masks
from jepa.modalities.video.demo import write_clip_splits


@dataclass(frozen=True)
class ShapeClips:
    """Clip generator settings (see the module docstring)."""

    num_classes: int = 10
    open_p: float = 0.35
    cell: int = 8
    noise: float = 0.06
    size: int = 64
    num_frames: int = 32

    def render(self, index: int, seed: int) -> tuple[np.ndarray, int]:
        """Clip ``index`` of set ``seed``: (F, size, size, 3) uint8 frames and its label."""
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
        opened = (torch.rand(f, cells, cells, generator=g) < self.open_p).float()
        opened = opened.repeat_interleave(self.cell, 1).repeat_interleave(self.cell, 2)[:, :n, :n]  # (F, S, S)
        seen = mask[None] * opened
        frames = background[None] * (1 - seen) + fg * seen  # (F, S, S)
        frames = frames[..., None].expand(f, n, n, 3) + self.noise * torch.randn(f, n, n, 3, generator=g)
        return (frames.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--classes", type=int, default=10, choices=range(2, len(CLASS_NAMES) + 1))
    parser.add_argument("--open", type=float, default=0.35, help="probability that a cell shows the object in a frame")
    parser.add_argument("--cell", type=int, default=8, help="cell side in pixels")
    parser.add_argument("--noise", type=float, default=0.06, help="pixel noise std (0..1 scale), fresh every frame")
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-val", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    clips = ShapeClips(args.classes, args.open, args.cell, args.noise)
    write_clip_splits(clips, args.out, {"train": args.num_train, "val": args.num_val}, seed=args.seed,
                      classes=list(CLASS_NAMES[:args.classes]), workers=args.workers)


if __name__ == "__main__":
    main()
