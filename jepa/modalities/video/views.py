"""Several augmented views of every video, for view-based objectives (LeJEPA): ``VideoModality.train_views``.

Every view is a clip as the training view (:func:`~jepa.modalities.video.transforms.train_batch`)
samples one: frames ``input.frame_step`` apart from a uniformly random start and one
RandomResizedCrop box for the whole clip. Global views have ``input.num_frames`` frames cropped to
``input.crop_size`` at ``views.global_scale``; local views ``views.local_num_frames`` frames (default:
as many) cropped to the smaller ``views.local_size`` at ``views.local_scale``. Each view then gets
the flip, colour jitter and grayscale of the image views
(:func:`~jepa.vision.photometric.apply_photometric`, one draw per clip, so a clip's frames change
together; no blur or solarization).

Per view, the draws come in the order of the training view (clip starts, crop boxes, flips) and then
the colour draws, so a global view without colour augmentation (``jitter_p`` and ``grayscale_p`` 0,
``flip_p`` 0.5) is the training view of the same generator state; the views are a pure function of
the items and the generator's seed. Each video is decoded once for all of its views (the union of
their frames). Batches have the training view's dtype and layout: (B, 3, F, S, S) float32, or with
``input.batch_dtype: uint8`` (B, F, 3, S, S) uint8 frames that ``finish_batch`` normalises.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from jepa.interfaces import ViewSpec
from jepa.modalities.video.config import VideoInputConfig, VideoViewsConfig
from jepa.modalities.video.decode import VideoItem, read_frames
from jepa.modalities.video.transforms import _check_items, _to_batch, clip_indices, sample_clip_starts
from jepa.vision.crops import sample_crop_boxes
from jepa.vision.photometric import PhotometricDraws, apply_photometric, draw_photometric


def local_clip_size(views: VideoViewsConfig, crop_size: int, patch_size: int) -> int:
    """Side of a local view: ``views.local_size``, or by default half of ``crop_size`` rounded to the
    nearest multiple of ``patch_size`` (at least one patch)."""
    if views.local_size is not None:
        return views.local_size
    return max(1, round(crop_size / 2 / patch_size)) * patch_size


def local_clip_frames(views: VideoViewsConfig, num_frames: int) -> int:
    """Frames of a local view: ``views.local_num_frames``, or by default ``num_frames``."""
    return num_frames if views.local_num_frames is None else views.local_num_frames


def check_views(views: VideoViewsConfig, input_cfg: VideoInputConfig, patch_size: int,
                tubelet_size: int) -> list[tuple[str, str]]:
    """``(field_path, problem_and_fix)`` pairs for the ``views`` section (paths relative to it)."""
    problems = []
    size, crop = views.local_size, input_cfg.crop_size
    if size is not None and size % patch_size:
        problems.append(("local_size", f"{size} is not a multiple of encoder.patch_size={patch_size}; use a multiple "
                         f"of {patch_size} (e.g. {size // patch_size * patch_size or patch_size}), or leave it unset "
                         f"for the default ({max(1, round(crop / 2 / patch_size)) * patch_size})"))
    if size is not None and size > crop:
        problems.append(("local_size", f"{size} is larger than input.crop_size={crop}; a local view is at most the "
                         "global view's size"))
    frames, num_frames = views.local_num_frames, input_cfg.num_frames
    if frames is not None and frames % tubelet_size:
        problems.append(("local_num_frames", f"{frames} is not a multiple of encoder.tubelet_size={tubelet_size}; "
                         f"use a multiple of {tubelet_size} (e.g. {frames // tubelet_size * tubelet_size or tubelet_size})"))
    if frames is not None and frames > num_frames:
        problems.append(("local_num_frames", f"{frames} is more than input.num_frames={num_frames}; a local view has "
                         "at most the global view's frames"))
    return problems


@dataclass(frozen=True)
class _ViewPlan:
    """The draws of one view: (B, F) frame numbers, B crop boxes, the output side and the photometric draws."""

    frames_BF: Tensor
    boxes: list[list[int]]
    size: int
    photometric: PhotometricDraws


def train_views(items: list[VideoItem], cfg: VideoInputConfig, views: VideoViewsConfig, spec: ViewSpec,
                generator: torch.Generator, *, local_size: int, local_frames: int) -> list[Tensor]:
    """``spec.num_views`` augmented clips of every video: the global views first, then the local ones.

    Args:
        items: B videos from :func:`~jepa.modalities.video.decode.probe_video`.
        cfg: the input section: clip length and step, crop size and aspect, batch dtype, mean and std.
        views: scales and augmentation probabilities and strengths.
        spec: how many global and local views.
        generator: the only source of randomness.
        local_size: side of a local view (:func:`local_clip_size`).
        local_frames: frames of a local view (:func:`local_clip_frames`), at most ``cfg.num_frames``.

    Returns:
        ``spec.num_global`` batches (B, 3, F, S, S), then ``spec.num_local`` batches (B, 3, F_l, L, L)
        float32; with ``cfg.batch_dtype`` ``uint8`` the (B, F, 3, S, S) uint8 frames instead. Row b of
        each comes from ``items[b]``.
    """
    _check_items(items, cfg)
    assert local_frames <= cfg.num_frames, (local_frames, cfg.num_frames)
    b = len(items)
    num_frames_B = torch.tensor([it.num_frames for it in items])
    heights = torch.tensor([it.height for it in items])
    widths = torch.tensor([it.width for it in items])
    local_cfg = cfg.model_copy(update={"num_frames": local_frames})
    plans = []
    for v in range(spec.num_views):
        is_global = v < spec.num_global
        view_cfg = cfg if is_global else local_cfg
        starts = sample_clip_starts(num_frames_B, view_cfg, generator)
        boxes = sample_crop_boxes(heights, widths, views.global_scale if is_global else views.local_scale, generator,
                                  ratio=cfg.crop_aspect).tolist()
        plans.append(_ViewPlan(clip_indices(starts, view_cfg), boxes, cfg.crop_size if is_global else local_size,
                               draw_photometric(b, views, generator)))
    out = [torch.empty(b, p.frames_BF.shape[1], 3, p.size, p.size, dtype=torch.uint8) for p in plans]
    for i, item in enumerate(items):
        wanted = torch.cat([p.frames_BF[i] for p in plans])
        unique, where = torch.unique(wanted, return_inverse=True)
        frames = read_frames(item, unique.tolist())  # (U, H, W, 3): each frame decoded once for all views
        for plan, batch, where_F in zip(plans, out, where.split([p.frames_BF.shape[1] for p in plans])):
            top, left, h, w = plan.boxes[i]
            clip = frames[where_F].permute(0, 3, 1, 2)  # (F, 3, H, W), the training view's layout
            batch[i] = TF.resized_crop(clip, top, left, h, w, [plan.size, plan.size], antialias=True)
    out = [apply_photometric(batch, plan.photometric) for plan, batch in zip(plans, out)]
    return out if cfg.batch_dtype == "uint8" else [_to_batch(batch, cfg) for batch in out]
