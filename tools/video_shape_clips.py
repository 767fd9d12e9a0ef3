"""Screening variants of the video demo's shape clips (docs/video_demo.md): a still shape of the ten
classes behind a screen of square cells that open at random in every frame, and/or under per-frame pixel
noise and colour blobs.

The demo's clips (``jepa demo-data --modality video``) are ``--open 1 --noise 0.4 --blob 0.5``
(the same frames); ``--open 1 --noise 0.5`` (or 0.8) are the pixel-noise-only clips, and this tool's
defaults (``--open 0.35 --noise 0.06``: one frame shows about a third of the object) the "shapes
behind flickering holes" rows of docs/video_demo.md. The generator is
:class:`jepa.modalities.video.demo_shapes.ShapeClips`.

``--view-images`` screens a setting in minutes instead of a video pretraining: it writes, instead of MP4 clips,
two PNG image shard sets of the same clips (rendered, not encoded): ``OUT/one`` holds the middle frame of the
demo recipe's evaluation view, ``OUT/mean`` the mean of the frames that view shows (8 at step 2). An image
encoder pretrained and probed on each (``recipes/video_demo_image_baseline_lejepa.yaml``) says what one frame
tells and what a perfect average over the view's frames would ("Why blobs" in docs/video_demo.md).

    python tools/video_shape_clips.py data/video_shapes
    jepa eval random:recipes/video_demo_lejepa.yaml --train-shards data/video_shapes/train \\
        --val-shards data/video_shapes/val --protocol linear,knn,attentive
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from jepa.data import ShardSample, write_shard_set
from jepa.errors import UserError
from jepa.modalities.video.baseline import middle_frame_index, png_bytes
from jepa.modalities.video.config import VideoInputConfig
from jepa.modalities.video.demo import split_seed
from jepa.modalities.video.demo_shapes import ShapeClips, write_shape_dataset
from jepa.modalities.video.transforms import clip_indices, eval_clip_start
from jepa.recipe import load_recipe
from jepa.vision.shapes import CLASS_NAMES

DEMO_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "video_demo_lejepa.yaml"


@dataclass(frozen=True)
class _ViewImages:
    """Chunk job for :func:`write_shard_set`: for clips ``start`` .. ``stop - 1``, the middle one of ``frames``
    (``mean`` False) or their mean (``mean`` True), as PNG."""

    clips: ShapeClips
    clip_set: int
    start: int
    stop: int
    view: VideoInputConfig
    mean: bool

    def __call__(self) -> Iterator[ShardSample]:
        n = self.clips.num_frames
        frames = clip_indices(torch.tensor([eval_clip_start(n, self.view)]), self.view)[0].tolist()
        for index in range(self.start, self.stop):
            clip, label = self.clips.render(index, self.clip_set)
            picture = (clip[frames].astype(np.float64).mean(0).round().astype(np.uint8) if self.mean
                       else clip[middle_frame_index(n, self.view)])
            yield ShardSample(f"{index:07d}", "png", png_bytes(picture), label)


def write_view_images(out: str, clips: ShapeClips, sizes: dict[str, int], seed: int, workers: int) -> None:
    """``out/one/SPLIT`` and ``out/mean/SPLIT`` image shard sets of the demo evaluation view's frames (see above),
    of the clips the clip shards of ``seed`` hold."""
    view = load_recipe(DEMO_RECIPE).modality.input
    for kind, mean in (("one", False), ("mean", True)):
        for split, count in sizes.items():
            if not count:
                continue
            jobs = [_ViewImages(clips, split_seed(seed, split), first, min(first + 250, count), view, mean)
                    for first in range(0, count, 250)]
            write_shard_set(jobs, Path(out) / kind / split, prefix="frames", max_count=250, max_bytes=1 << 30,
                            workers=workers, classes=clips.classes, total_items=count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--classes", type=int, default=10, choices=range(2, len(CLASS_NAMES) + 1))
    parser.add_argument("--open", type=float, default=0.35, help="probability that a cell shows the object in a frame")
    parser.add_argument("--cell", type=int, default=8, help="cell side in pixels")
    parser.add_argument("--noise", type=float, default=0.06, help="pixel noise std (0..1 scale), fresh every frame")
    parser.add_argument("--blob", type=float, default=0.0,
                        help="colour blob noise std (0..1 scale) on a grid of --blob-cell px cells, fresh every frame")
    parser.add_argument("--blob-cell", type=int, default=8, help="blob grid cell side in pixels")
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-val", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--view-images", action="store_true",
                        help="write OUT/one and OUT/mean image shards of the evaluation view's frames, not clips")
    args = parser.parse_args()
    try:
        clips = ShapeClips(num_classes=args.classes, noise=args.noise, open_p=args.open, cell=args.cell,
                           blob=args.blob, blob_cell=args.blob_cell)
        if args.view_images:
            write_view_images(args.out, clips, {"train": args.num_train, "val": args.num_val}, args.seed, args.workers)
            return
        write_shape_dataset(args.out, num_train=args.num_train, num_val=args.num_val, clips=clips, seed=args.seed,
                            workers=args.workers)
    except UserError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
