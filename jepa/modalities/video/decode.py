"""Video samples: validating a shard sample's video, and reading a clip's frames from it.

Decoding a video is split in two so that a decoded item never holds a whole video in memory
(a Kinetics clip is ~300 frames, ~80 MB as RGB at 340x256):

* :func:`probe_video` (``Modality.decode``, per sample) decodes every frame once to validate the
  file and records the frame count, size and presentation timestamps, keeping only the bytes.
  A corrupt file, one without a video stream or with too few frames, one whose frames are larger
  than the size bound of every pixel view (:func:`~jepa.vision.pixels.view_size_problem`: the
  frame, and with ``crop_size`` its evaluation resize; the size the stream declares is checked
  before any frame is decoded), and one on which the decoder raises anything, crashes or hangs,
  raises ``ValueError``, so the loader skips and counts it. Frames are decoded but not converted
  to RGB.
* :func:`read_frames` (``train_batch`` / ``eval_batch``) decodes just the frames a clip needs:
  it seeks to the key frame before the first one and decodes up to the last; if seeking does not
  land where the timestamps say (containers without an index, repeated timestamps), it re-reads
  from the start in decode order, the probe's own path.

By default (``input.decoder: process``) PyAV runs in a child process
(:mod:`~jepa.modalities.video.decoder_process`), so a decoder crash or hang costs one sample, never
the run; ``in_process`` calls PyAV directly (:mod:`~jepa.modalities.video.pyav_io`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
from torch import Tensor

from jepa.data.reading import sample_payload, sample_where
from jepa.errors import DataError
from jepa.modalities.video import pyav_io
from jepa.modalities.video.decoder_process import DecoderError, decoder as child_decoder
from jepa.vision.pixels import DEFAULT_CROP_SIZE, view_size_problem

#: Sample keys that may hold an encoded video, in the order they are looked for.
VIDEO_KEYS: tuple[str, ...] = ("mp4", "webm", "avi", "mkv", "mov")

Decoder = Literal["process", "in_process"]


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
        decoder: where PyAV runs for this item: ``process`` (a child process) or ``in_process``.
    """

    data: bytes
    num_frames: int
    height: int
    width: int
    frame_pts: tuple[int, ...] | None
    where: str
    decoder: Decoder = "process"


def probe_video(sample: dict[str, Any], min_frames: int, decoder: Decoder = "process", *,
                crop_size: int | None = None) -> VideoItem:
    """Validate the video of one shard sample by decoding all of its frames once.

    Args:
        sample: webdataset sample, extension -> bytes (plus ``__key__``/``__url__``).
        min_frames: fewest frames a usable video has (one clip's span).
        decoder: ``process`` (PyAV in a child process: a crash or hang of the decoder is a
            ``ValueError`` too) or ``in_process``.
        crop_size: the views' ``input.crop_size``: frames whose evaluation resize would pass the size
            bound are refused here too. None: the bound at the default crop size
            (:data:`~jepa.vision.pixels.DEFAULT_CROP_SIZE`, 224), as for an image decoded without an
            input section; a larger crop's views refuse a batch holding a frame past the bound at that size.

    Returns:
        The :class:`VideoItem` (bytes + frame count, size, timestamps).

    Raises:
        ValueError: no video key, empty or unreadable bytes, no video stream, frames larger than the
            size bound, fewer than ``min_frames`` frames, or the decoder raised, crashed or hung on the file.
    """
    where = sample_where(sample)
    key, data = sample_payload(sample, VIDEO_KEYS, "video")
    data = bytes(data)
    try:
        if decoder == "process":
            found = child_decoder().probe(data)  # frames are bounded by pyav_io.MAX_FRAME_PIXELS (= MAX_PIXELS)
        else:
            found = pyav_io.probe(data)
    except Exception as exc:  # noqa: BLE001 - any failure of the decoder (or its process) is the file's problem
        raise DataError(f"{where}: '{key}' is not a readable video ({_reason(exc)})") from exc
    if found["num_frames"] < min_frames or found["num_frames"] == 0:
        raise DataError(f"{where}: '{key}' has {found['num_frames']} frames, fewer than the {min_frames} one clip "
                         "spans (input.num_frames at input.frame_step); lower them or drop short videos")
    crop_size = DEFAULT_CROP_SIZE if crop_size is None else crop_size
    too_large = view_size_problem(found["height"], found["width"], crop_size)
    if too_large is not None:
        raise DataError(f"{where}: '{key}' is refused by its frame size: {too_large}")
    pts = found["pts"]
    return VideoItem(data, found["num_frames"], found["height"], found["width"],
                     None if pts is None else tuple(pts), where, decoder)


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, DecoderError) else f"{type(exc).__name__}: {exc}"


def read_frames(item: VideoItem, indices: Sequence[int]) -> Tensor:
    """Decode the frames ``indices`` of a probed video.

    Args:
        item: from :func:`probe_video`.
        indices: frame numbers in ``[0, item.num_frames)``, any order, repeats allowed.

    Returns:
        (F, H, W, 3) uint8 RGB frames in the order of ``indices``, F = len(indices).

    Raises:
        IndexError: an index outside the video.
        RuntimeError: the frames cannot be read, even from the start in decode order (the probe's
            path), though the probe decoded every frame of the file: a decoder that is not
            deterministic on this file.
    """
    indices = [int(i) for i in indices]
    if not indices or min(indices) < 0 or max(indices) >= item.num_frames:
        raise IndexError(f"{item.where}: frames {min(indices, default=0)}..{max(indices, default=0)} outside "
                         f"0..{item.num_frames - 1}")
    if item.decoder == "in_process":
        return torch.from_numpy(pyav_io.read(item.data, item.num_frames, item.height, item.width, item.frame_pts,
                                             indices))

    try:
        frames = child_decoder().read(item.data, item.num_frames, item.height, item.width, item.frame_pts, indices)
    except DecoderError:  # e.g. the seeking path crashed: decode from the start, as the probe did
        try:
            frames = child_decoder().read(item.data, item.num_frames, item.height, item.width, None, indices)
        except DecoderError as exc:
            raise RuntimeError(f"{item.where}: frames {min(indices)}..{max(indices)} cannot be read ({exc}), though "
                               "every frame decoded when the sample was probed") from exc
    return torch.from_numpy(frames.copy())
