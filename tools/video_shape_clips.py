"""Screening variants of the video demo's shape clips (docs/video_demo.md): a still shape of the ten
classes behind a screen of square cells that open at random in every frame, and/or under per-frame noise.

The demo's clips (``jepa demo-data --modality video``) are ``--open 1 --noise 0.5``; this tool's
defaults (``--open 0.35 --noise 0.06``: one frame shows about a third of the object) are the
"shapes behind flickering holes" rows of docs/video_demo.md. The generator is
:class:`jepa.modalities.video.demo_shapes.ShapeClips`.

    python tools/video_shape_clips.py data/video_shapes
    jepa eval random:recipes/video_demo_lejepa.yaml --train-shards data/video_shapes/train \\
        --val-shards data/video_shapes/val --protocol linear,knn,attentive
"""

from __future__ import annotations

import argparse
import sys

from jepa.errors import UserError
from jepa.modalities.video.demo_shapes import ShapeClips, write_shape_dataset
from jepa.vision.shapes import CLASS_NAMES


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
    try:
        clips = ShapeClips(num_classes=args.classes, noise=args.noise, open_p=args.open, cell=args.cell)
        write_shape_dataset(args.out, num_train=args.num_train, num_val=args.num_val, clips=clips, seed=args.seed,
                            workers=args.workers)
    except UserError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
