"""Reading video files with PyAV (FFmpeg bundled in the wheel; no system libraries needed).

Decoding a video is split in two so that a decoded item never holds a whole video in memory
(a Kinetics clip is ~300 frames, ~80 MB as RGB at 340x256):

* :func:`probe_video` (``Modality.decode``, per sample) decodes every frame once to validate the
  file and records the frame count, size and presentation timestamps, keeping only the bytes.
  A corrupt file, one without a video stream or one with too few frames raises ``ValueError``,
  so the loader skips and counts it. Frames are decoded but not converted to RGB.
* :func:`read_frames` (``train_batch`` / ``eval_batch``) decodes just the frames a clip needs:
  it seeks to the key frame before the first one and decodes up to the last. Because the probe
  already decoded the whole stream with the same decoder, reading frames of a probed item cannot
  fail on the data; if seeking does not land where the timestamps say (containers without an index,
  repeated timestamps), it re-reads from the start in decode order, the probe's own path.

Frames are numbered in decode (= presentation) order, as the authors' decord reader does.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Sequence

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from torch import Tensor

from jepa.data.reading import sample_payload, sample_where

#: Sample keys that may hold an encoded video, in the order they are looked for.
VIDEO_KEYS: tuple[str, ...] = ("mp4", "webm", "avi", "mkv", "mov")
#: FFmpeg decoder threads per video; data-loader workers already decode in parallel.
DECODE_THREADS = 1


@dataclass(frozen=True)
class VideoItem:
    """A validated video: its encoded bytes and what the probe learnt, no decoded frames.

    Attributes:
        data: the encoded file.
        num_frames: frames the decoder produced.
        height, width: frame size in pixels (every frame is read at this size).
        frame_pts: presentation timestamps in decode order, or None when they cannot be used to
            seek (missing, or not strictly increasing).
        where: sample key and shard, for messages.
    """

    data: bytes
    num_frames: int
    height: int
    width: int
    frame_pts: tuple[int, ...] | None
    where: str


_where = sample_where


def _open(data: bytes) -> Any:
    container = av.open(io.BytesIO(data), mode="r")
    if not container.streams.video:
        container.close()
        raise ValueError("no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "SLICE"
    stream.thread_count = DECODE_THREADS
    return container


def probe_video(sample: dict[str, Any], min_frames: int) -> VideoItem:
    """Validate the video of one shard sample by decoding all of its frames once.

    Args:
        sample: webdataset sample, extension -> bytes (plus ``__key__``/``__url__``).
        min_frames: fewest frames a usable video has (one clip's span).

    Returns:
        The :class:`VideoItem` (bytes + frame count, size, timestamps).

    Raises:
        ValueError: no video key, empty or unreadable bytes, no video stream, or fewer than
            ``min_frames`` frames.
    """
    where = _where(sample)
    key, data = sample_payload(sample, VIDEO_KEYS, "video")
    data = bytes(data)
    pts: list[int | None] = []
    size: tuple[int, int] | None = None
    try:
        with _open(data) as container:
            for frame in container.decode(container.streams.video[0]):
                pts.append(frame.pts)
                if size is None:
                    size = (frame.height, frame.width)
    except (av.FFmpegError, ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{where}: '{key}' is not a readable video ({type(exc).__name__}: {exc})") from exc
    if len(pts) < min_frames or size is None:
        raise ValueError(f"{where}: '{key}' has {len(pts)} frames, fewer than the {min_frames} one clip spans "
                         "(input.num_frames at input.frame_step); lower them or drop short videos")
    usable = all(p is not None for p in pts) and all(a < b for a, b in zip(pts, pts[1:]))  # type: ignore[operator]
    return VideoItem(data, len(pts), size[0], size[1], tuple(pts) if usable else None, where)  # type: ignore[arg-type]


def read_frames(item: VideoItem, indices: Sequence[int]) -> Tensor:
    """Decode the frames ``indices`` of a probed video.

    Args:
        item: from :func:`probe_video`.
        indices: frame numbers in ``[0, item.num_frames)``, any order, repeats allowed.

    Returns:
        (F, H, W, 3) uint8 RGB frames in the order of ``indices``, F = len(indices).
    """
    wanted = sorted(set(int(i) for i in indices))
    if not wanted or wanted[0] < 0 or wanted[-1] >= item.num_frames:
        raise IndexError(f"{item.where}: frames {wanted[:1]}..{wanted[-1:]} outside 0..{item.num_frames - 1}")
    frames = None
    if item.frame_pts is not None and wanted[0] > 0:
        try:
            frames = _read_seeking(item, wanted)
        except av.FFmpegError:  # e.g. a broken index: the in-order path below is the probed one
            frames = None
    if frames is None:
        frames = _read_in_order(item, wanted)
    return torch.from_numpy(np.stack([frames[i] for i in indices]))


def _rgb(frame: Any, item: VideoItem, reformatter: VideoReformatter) -> np.ndarray:
    """(H, W, 3) uint8 RGB at the probed size. One reformatter per video keeps its scaler context:
    ``frame.to_ndarray`` builds a new one per frame, ~5x slower on small frames."""
    return reformatter.reformat(frame, width=item.width, height=item.height, format="rgb24").to_ndarray()


def _read_seeking(item: VideoItem, wanted: list[int]) -> dict[int, np.ndarray] | None:
    """Seek to the key frame before ``wanted[0]`` and decode to ``wanted[-1]``; None if it misses."""
    assert item.frame_pts is not None
    index_of = {p: i for i, p in enumerate(item.frame_pts)}
    todo = set(wanted)
    last_pts = item.frame_pts[wanted[-1]]
    out: dict[int, np.ndarray] = {}
    reformatter = VideoReformatter()
    with _open(item.data) as container:
        stream = container.streams.video[0]
        container.seek(item.frame_pts[wanted[0]], stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            if frame.pts is None:
                return None
            i = index_of.get(frame.pts)
            if i in todo:
                out[i] = _rgb(frame, item, reformatter)
                todo.discard(i)
            if frame.pts >= last_pts:
                break
    return out if not todo else None


def _read_in_order(item: VideoItem, wanted: list[int]) -> dict[int, np.ndarray]:
    """Decode from the start, numbering frames in decode order (the probe's path)."""
    todo = set(wanted)
    out: dict[int, np.ndarray] = {}
    reformatter = VideoReformatter()
    with _open(item.data) as container:
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            if i in todo:
                out[i] = _rgb(frame, item, reformatter)
            if i >= wanted[-1]:
                break
    assert len(out) == len(todo), f"{item.where}: decoded {len(out)} of {len(todo)} frames the probe saw"
    return out
