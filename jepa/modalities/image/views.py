"""Several augmented views of every image, for view-based objectives (LeJEPA): ``ImageModality.train_views``
(docs/method/lejepa.md, "Views").

Each view is a RandomResizedCrop (global views: to ``input.crop_size`` at ``views.global_scale``;
local views: to the smaller ``views.local_size`` at ``views.local_scale``) followed by the
photometric augmentation of the LeJEPA paper (and DINO before it), each step drawn per view of
every image: left-right flip, colour jitter (brightness, contrast, saturation, hue in a random
order), grayscale, Gaussian blur and solarization (:func:`~jepa.vision.photometric.draw_photometric`,
:func:`~jepa.vision.photometric.apply_photometric`; the video views use them too, without blur and
solarization).

A view is what :func:`~jepa.modalities.image.transforms.train_batch` makes, with more augmentation:
the same items (full-size, reduced or GPU-decoded), crop boxes drawn by the same
:func:`~jepa.vision.crops.sample_crop_boxes` from the full sizes, the same uint8 antialiased resize,
then the same dtype and normalisation (uint8 crops with ``input.batch_dtype:
uint8``, which ``finish_batch`` normalises on the device, else normalised float32). The colour
steps run in float32 on the 0..255 scale only on the rows that draw one, and round back to uint8, so
a view with every probability 0 is exactly a ``train_batch`` crop, and the uint8 and float32 paths
agree bitwise. Every random number comes from the generator passed in, drawn per view in a fixed
order (crop boxes, then the photometric draws), so the views are a pure function of the items and the
generator's seed.

Every item is first checked against the size bound of :func:`~jepa.vision.pixels.view_size_problem`
(as ``train_batch`` checks it), before anything is cropped or resized.

Items decoded at reduced size (``input.jpeg_reduced_decode``) were reduced for ``input.crop_scale``
at ``input.crop_size``; a local crop may then be enlarged slightly more than at full size.
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from jepa.interfaces import ViewSpec
from jepa.modalities.image.config import InputConfig, ViewsConfig
from jepa.modalities.image.transforms import (
    ImageItem, _check_items, _decoded_pixels, _full_sizes, _new_batch, snap_boxes,
)
from jepa.vision.crops import sample_crop_boxes
from jepa.vision.photometric import apply_photometric, draw_photometric
from jepa.vision.pixels import norm_constants

#: The LeJEPA paper's local view side at a 224 px global view.
LOCAL_SIZE_AT_224 = 96


# --------------------------------------------------------------------------- sizes and checks


def local_view_size(views: ViewsConfig, crop_size: int, patch_size: int) -> int:
    """Side of a local view: ``views.local_size``, or by default ``round(crop_size * 96 / 224)``
    rounded to the nearest multiple of ``patch_size`` (at least one patch)."""
    if views.local_size is not None:
        return views.local_size
    return max(1, round(round(crop_size * LOCAL_SIZE_AT_224 / 224) / patch_size)) * patch_size


def check_views(views: ViewsConfig, crop_size: int, patch_size: int) -> list[tuple[str, str]]:
    """``(field_path, problem_and_fix)`` pairs for the ``views`` section (paths relative to it)."""
    size = views.local_size
    if size is None:
        return []
    problems = []
    if size % patch_size:
        lower = size // patch_size * patch_size
        problems.append(("local_size", f"{size} is not a multiple of encoder.patch_size={patch_size}; use a "
                         f"multiple of {patch_size} (e.g. {lower or patch_size}), or leave it unset for the default "
                         f"({local_view_size(views.model_copy(update={'local_size': None}), crop_size, patch_size)})"))
    if size > crop_size:
        problems.append(("local_size", f"{size} is larger than input.crop_size={crop_size}; a local view is at most "
                         "the global view's size"))
    return problems


# --------------------------------------------------------------------------- the views


def train_views(items: list[ImageItem], cfg: InputConfig, views: ViewsConfig, local_size: int, spec: ViewSpec,
                generator: torch.Generator) -> list[Tensor]:
    """``spec.num_views`` augmented views of every image: the global views first, then the local ones.

    Args:
        items: B decoded images (as for :func:`~jepa.modalities.image.transforms.train_batch`).
        cfg: the input section: crop size, batch dtype, mean and std.
        views: scales and augmentation probabilities and strengths.
        local_size: side of a local view (:func:`local_view_size`).
        spec: how many global and local views.
        generator: the only source of randomness.

    Returns:
        ``spec.num_global`` batches (B, 3, S, S) with S = ``cfg.crop_size``, then ``spec.num_local``
        batches (B, 3, L, L) with L = ``local_size``; float32 normalised, or uint8 (not yet
        normalised: ``finish_batch``) when ``cfg.batch_dtype`` is ``uint8``. Row b of each comes from
        ``items[b]``.
    """
    _check_items(items, cfg)
    heights, widths, scales = _full_sizes(items)
    pixels, device = _decoded_pixels(items, cfg)  # decoded once for every view
    out = []
    for v in range(spec.num_views):
        is_global = v < spec.num_global
        size = cfg.crop_size if is_global else local_size
        boxes = sample_crop_boxes(heights, widths, views.global_scale if is_global else views.local_scale, generator)
        boxes = snap_boxes(boxes, scales).tolist()
        draws = draw_photometric(len(items), views, generator, blur_p=views.blur_p if is_global else views.local_blur_p,
                                 blur_sigma=views.blur_sigma, solarize_p=views.solarize_p)
        crops = torch.stack([TF.resized_crop(x, top, left, h, w, [size, size], antialias=True)
                             for x, (top, left, h, w) in zip(pixels, boxes)])
        out.append(_as_batch(apply_photometric(crops, draws), cfg))
    return out


def _as_batch(crops: Tensor, cfg: InputConfig) -> Tensor:
    """(B, C, S, S) uint8 crops -> the batch ``train_batch`` would hand over (in shared memory in a
    loader worker): uint8 as is with ``batch_dtype: uint8``, else normalised float32 (the same arithmetic
    as :func:`~jepa.vision.pixels.normalize_uint8`)."""
    if cfg.batch_dtype == "uint8":
        return _new_batch(tuple(crops.shape), crops.device, torch.uint8).copy_(crops)
    mean, std = norm_constants(tuple(cfg.mean), tuple(cfg.std), crops.device)
    return _new_batch(tuple(crops.shape), crops.device).copy_(crops).sub_(mean).div_(std)
