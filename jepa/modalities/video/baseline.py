"""The single-frame baseline of the video demo: one frame of every clip, as an image shard set.

:func:`write_middle_frame_shards` reads a labelled video shard set and writes, for every clip, the
middle frame of the clip the video evaluation view shows (:func:`middle_frame_index`) as a lossless
PNG with the same label, into an image shard set with the same classes. An image encoder (the image
ViT of ``recipes/video_demo_image_baseline_lejepa.yaml``, or ``video_demo_image_baseline.yaml`` for the
V-JEPA demo) pretrained and probed on these
frames measures what a single frame tells about the label; the video demo compares the video
encoder against it (``tools/demo.sh video``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from jepa.data import Manifest, ShardSample, expand_shards, read_manifest, read_shard, write_shard_set
from jepa.errors import DataError
from jepa.eval.reader import label_of
from jepa.modalities.video.config import VideoInputConfig
from jepa.modalities.video.decode import probe_video, read_frames
from jepa.modalities.video.transforms import eval_clip_start


def middle_frame_index(num_frames: int, cfg: VideoInputConfig) -> int:
    """The frame in the middle of the evaluation view's centre clip of a ``num_frames``-frame video:
    clip frame ``cfg.num_frames // 2``, i.e. source frame ``(num_frames - clip_span) // 2 + frame_step * (F // 2)``.

    Raises:
        ValueError: the video is shorter than one clip.
    """
    if num_frames < cfg.clip_span:
        raise DataError(f"a {num_frames}-frame video is shorter than one clip ({cfg.clip_span} frames)")
    return eval_clip_start(num_frames, cfg) + cfg.frame_step * (cfg.num_frames // 2)


def png_bytes(frame_HW3: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes (lossless)."""
    buf = io.BytesIO()
    Image.fromarray(frame_HW3).save(buf, format="PNG")
    return buf.getvalue()


@dataclass(frozen=True)
class _MiddleFrames:
    """Chunk job for :func:`write_shard_set`: the middle frames of the clips of one video shard."""

    url: str
    cfg: VideoInputConfig

    def __call__(self) -> Iterator[ShardSample]:
        for sample in read_shard(self.url):
            if "cls" not in sample:
                raise DataError(f"{self.url} sample {sample['__key__']!r} has no label (cls); the single-frame "
                                 "baseline needs labelled clips (jepa demo-data --modality video, or jepa shards on "
                                 "class folders)")
            item = probe_video(sample, self.cfg.clip_span, self.cfg.decoder, crop_size=self.cfg.crop_size)
            frame = read_frames(item, [middle_frame_index(item.num_frames, self.cfg)])[0].numpy()
            yield ShardSample(sample["__key__"], "png", png_bytes(frame), label_of(sample))


def write_middle_frame_shards(src: str | Path, out_dir: str | Path, cfg: VideoInputConfig, *, max_count: int = 500,
                              workers: int = 1, show_progress: bool = True) -> Manifest:
    """Write the middle frame of every clip of the labelled video shards ``src`` as an image shard set.

    Args:
        src: a labelled video shard folder (with ``manifest.json``) or shard pattern.
        out_dir: the new image shard folder (``frames-000000.tar`` ... and ``manifest.json``).
        cfg: the video recipe's input section (which clip and frame the evaluation view shows).
        max_count: images per shard.
        workers: parallel writer processes.

    Raises:
        ValueError: unlabelled or corrupt clips, clips shorter than one clip span, an existing ``out_dir``.
    """
    urls = expand_shards(str(src))
    manifest = read_manifest(src) if Path(src).is_dir() else None
    classes = manifest.classes if manifest is not None else None
    total = manifest.total if manifest is not None else None
    return write_shard_set([_MiddleFrames(u, cfg) for u in urls], out_dir, prefix="frames", max_count=max_count,
                           max_bytes=1 << 30, workers=workers, classes=classes, total_items=total,
                           show_progress=show_progress)
