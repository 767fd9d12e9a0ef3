"""The two views of a video: the training clip and the evaluation clip.

Training view (V-JEPA): ``num_frames`` frames ``frame_step`` apart from a uniformly random start,
one RandomResizedCrop box for the whole clip (area ``crop_scale``, aspect ``crop_aspect``), an
optional left-right flip of the whole clip with probability 1/2, then normalisation. Every random
number comes from the batch's ``torch.Generator``, drawn in this order: clip starts (B), crop
boxes (the vectorised :func:`~jepa.vision.crops.sample_crop_boxes` of every pixel view),
flips (B); so a batch is a pure function of its items and the generator's seed.

Difference from the authors' sampler: frames are exactly ``frame_step`` apart and a clip spans
``(num_frames - 1) * frame_step + 1`` frames (theirs: ``linspace`` over ``num_frames * frame_step``
frames, steps of ~4.27 for 16 x 4); videos shorter than one clip are rejected by ``decode`` (theirs
repeat the last frame).

Evaluation view: the centre clip, shorter side resized to ``round(S * 256 / 224)``, centre crop S.

Every view first checks each video's frame size against the bound of every pixel view
(:func:`~jepa.vision.pixels.view_size_problem`), before a frame is read or resized.
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from jepa.errors import ConfigError, DataError
from jepa.modalities.video.config import VideoInputConfig
from jepa.modalities.video.decode import VideoItem, read_frames
from jepa.vision.crops import eval_resize_size, sample_crop_boxes
from jepa.vision.pixels import normalize_uint8, view_size_problem


def _check_items(items: list[VideoItem], cfg: VideoInputConfig) -> None:
    if not items:
        raise ValueError("cannot build a batch from zero videos")
    if cfg.in_chans != 3:
        raise ConfigError(f"videos decode to RGB, so input.in_chans must be 3, got {cfg.in_chans}")
    for item in items:
        if not isinstance(item, VideoItem):
            raise ValueError(f"expected videos from VideoModality.decode, got {type(item).__name__}")
        if item.num_frames < cfg.clip_span:
            raise DataError(f"{item.where} has {item.num_frames} frames, fewer than the {cfg.clip_span} a clip "
                             "spans; it was decoded under another input.num_frames / input.frame_step")
        too_large = view_size_problem(item.height, item.width, cfg.crop_size)
        if too_large is not None:
            raise DataError(f"{item.where} is refused by its frame size: {too_large}")


def clip_indices(starts_B: Tensor, cfg: VideoInputConfig) -> Tensor:
    """(B,) int64 first frames -> (B, F) frame numbers ``start + frame_step * arange(F)``."""
    return starts_B[:, None] + cfg.frame_step * torch.arange(cfg.num_frames)


def sample_clip_starts(num_frames_B: Tensor, cfg: VideoInputConfig, generator: torch.Generator) -> Tensor:
    """Uniform clip starts in ``[0, num_frames - clip_span]`` per video, (B,) int64."""
    num_starts = num_frames_B - cfg.clip_span + 1
    u = torch.rand(num_frames_B.shape[0], dtype=torch.float64, generator=generator)
    return torch.minimum((u * num_starts).long(), num_starts - 1)


def _to_batch(frames_BFCSS: Tensor, cfg: VideoInputConfig) -> Tensor:
    """(B, F, C, S, S) uint8 -> (B, C, F, S, S) float32 normalised clips."""
    b, f, c, s, _ = frames_BFCSS.shape
    x = normalize_uint8(frames_BFCSS.view(b * f, c, s, s), cfg.mean, cfg.std).view(b, f, c, s, s)
    return x.permute(0, 2, 1, 3, 4).contiguous()


def train_batch(items: list[VideoItem], cfg: VideoInputConfig, generator: torch.Generator) -> Tensor:
    """The training view of a batch of probed videos.

    Args:
        items: B videos from :func:`~jepa.modalities.video.decode.probe_video`.
        cfg: clip length and step, crop size, scale and aspect, flip, mean and std.
        generator: the only source of randomness.

    Returns:
        (B, 3, F, S, S) float32 clips, F = ``num_frames``, S = ``crop_size``; with ``cfg.batch_dtype``
        ``uint8`` the (B, F, 3, S, S) uint8 frames instead, which :func:`finish_batch` turns into those.
    """
    _check_items(items, cfg)
    s, b = cfg.crop_size, len(items)
    starts = sample_clip_starts(torch.tensor([it.num_frames for it in items]), cfg, generator)
    heights = torch.tensor([it.height for it in items])
    widths = torch.tensor([it.width for it in items])
    boxes = sample_crop_boxes(heights, widths, cfg.crop_scale, generator, ratio=cfg.crop_aspect).tolist()
    flips = (torch.rand(b, generator=generator) < 0.5).tolist()
    out = torch.empty(b, cfg.num_frames, 3, s, s, dtype=torch.uint8)
    for i, (item, idx, (top, left, h, w)) in enumerate(zip(items, clip_indices(starts, cfg).tolist(), boxes)):
        frames = read_frames(item, idx).permute(0, 3, 1, 2)  # (F, 3, H, W); only this clip is decoded
        clip = TF.resized_crop(frames, top, left, h, w, [s, s], antialias=True)
        out[i] = clip.flip(-1) if cfg.horizontal_flip and flips[i] else clip
    return out if cfg.batch_dtype == "uint8" else _to_batch(out, cfg)


def finish_batch(inputs: Tensor, cfg: VideoInputConfig) -> Tensor:
    """A training batch on its device -> the encoder's input: (B, F, C, S, S) uint8 frames
    (``batch_dtype: uint8``) become the normalised (B, C, F, S, S) float32 clips; float32 passes through."""
    return _to_batch(inputs, cfg) if inputs.dtype == torch.uint8 else inputs


def eval_clip_start(num_frames: int, cfg: VideoInputConfig) -> int:
    """The first frame of the evaluation view's clip of a ``num_frames``-frame video: the centre clip."""
    return (num_frames - cfg.clip_span) // 2


def eval_batch(items: list[VideoItem], cfg: VideoInputConfig) -> Tensor:
    """The evaluation view: centre clip, shorter side to ``round(S*256/224)``, centre crop S.

    Returns:
        (B, 3, F, S, S) float32 clips.
    """
    _check_items(items, cfg)
    s, r = cfg.crop_size, eval_resize_size(cfg.crop_size)
    starts = torch.tensor([eval_clip_start(it.num_frames, cfg) for it in items])
    out = torch.empty(len(items), cfg.num_frames, 3, s, s, dtype=torch.uint8)
    for i, (item, idx) in enumerate(zip(items, clip_indices(starts, cfg).tolist())):
        frames = read_frames(item, idx).permute(0, 3, 1, 2)
        out[i] = TF.center_crop(TF.resize(frames, [r], antialias=True), [s, s])
    return _to_batch(out, cfg)
