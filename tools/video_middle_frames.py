"""Write the single-frame baseline's image shards: the middle frame of every clip of labelled video shards.

Usage: python tools/video_middle_frames.py VIDEO_RECIPE SRC OUT [--workers N]

SRC is a labelled video shard folder (e.g. data/video_demo/train); OUT gets an image shard set (PNG, same
labels and classes) of the frame in the middle of the clip the video recipe's evaluation view shows
(jepa.modalities.video.baseline). Train and probe an image encoder on it, e.g.
recipes/video_demo_image_baseline.yaml: see tools/demo.sh video.
"""

from __future__ import annotations

import argparse
import sys

from jepa.modalities.video.baseline import write_middle_frame_shards
from jepa.recipe import load_recipe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe", help="the video recipe whose evaluation view picks the frame")
    p.add_argument("src", help="labelled video shard folder")
    p.add_argument("out", help="new image shard folder")
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args()
    try:
        modality = load_recipe(a.recipe).modality
        if modality.name != "video":
            raise ValueError(f"{a.recipe} is a {modality.name!r} recipe; pass a video recipe (modality.name: video)")
        manifest = write_middle_frame_shards(a.src, a.out, modality.input, workers=a.workers)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {manifest.total} middle frames in {len(manifest.shards)} shards to {a.out}")


if __name__ == "__main__":
    main()
