"""The video demo's earlier clips: a moving, rotating polygon labelled by its direction of motion.

These were ``jepa demo-data --modality video`` until the objectives issue; every V-JEPA and LeJEPA row
measured on them is in docs/video_demo.md ("The shipped clips"). The generator is
:func:`jepa.modalities.video.demo.write_demo_dataset` (4 directions by default, 8 with the rotation sense).

    python tools/video_motion_clips.py data/video_motion
    jepa train recipes/video_demo.yaml --set data.train_shards=data/video_motion/train --set run_dir=runs/motion
"""

from __future__ import annotations

import argparse
import sys

from jepa.errors import UserError
from jepa.modalities.video.demo import DEMO_NUM_FRAMES, NUM_CLASSES_CHOICES, write_demo_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--classes", type=int, default=4, choices=NUM_CLASSES_CHOICES)
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels")
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-val", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    try:
        write_demo_dataset(args.out, num_train=args.num_train, num_val=args.num_val, size=args.size,
                           num_frames=DEMO_NUM_FRAMES, num_classes=args.classes, seed=args.seed,
                           workers=args.workers)
    except UserError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
