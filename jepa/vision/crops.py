"""Crop geometry of pixel views: RandomResizedCrop boxes, the evaluation resize, the crop scales of
multi-view augmentation.

Every random number comes from the ``torch.Generator`` passed in, so a batch of views is a pure
function of its items and the generator's seed (exact resume depends on it; torchvision's own
``RandomResizedCrop`` draws from the global RNG and is therefore not used). Boxes are drawn for a
whole batch of sizes at once; a clip gets one box for all of its frames.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field, model_validator
from torch import Tensor

from jepa.config import check_range
from jepa.vision.photometric import PhotometricConfig

#: Aspect-ratio (w/h) range of the training crop, as in RandomResizedCrop.
CROP_RATIO: tuple[float, float] = (3 / 4, 4 / 3)
#: Attempts at a crop box per image before falling back to a centre crop (as in torchvision).
_CROP_ATTEMPTS = 10


def sample_crop_boxes(heights: Tensor, widths: Tensor, scale: tuple[float, float],
                      generator: torch.Generator, ratio: tuple[float, float] = CROP_RATIO) -> Tensor:
    """RandomResizedCrop boxes for a batch of image sizes, drawn only from ``generator``.

    Same distribution as torchvision's ``RandomResizedCrop.get_params`` (10 attempts of area
    fraction ~ U(scale) and log-uniform aspect ratio, else the largest centred box within
    ``ratio``), vectorised over the batch.

    Args:
        heights: (B,) int64 image heights.
        widths: (B,) int64 image widths.
        scale: (low, high) fraction of the image area covered by the crop.
        generator: the only source of randomness.
        ratio: (low, high) crop aspect ratio w/h.

    Returns:
        (B, 4) int64 boxes ``(top, left, height, width)``.
    """
    b, n = heights.shape[0], _CROP_ATTEMPTS
    h_img, w_img = heights.double()[:, None], widths.double()[:, None]
    area = h_img * w_img
    target_area = area * torch.empty(b, n, dtype=torch.float64).uniform_(scale[0], scale[1], generator=generator)
    log_r = torch.empty(b, n, dtype=torch.float64).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_r)
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    ok = (w > 0) & (h > 0) & (w <= w_img) & (h <= h_img)
    u_top, u_left = torch.rand(2, b, dtype=torch.float64, generator=generator)

    first = ok.to(torch.uint8).argmax(dim=1)  # first successful attempt (0 when none)
    rows = torch.arange(b)
    h_sel, w_sel = h[rows, first], w[rows, first]

    # Fallback (no attempt fits): the whole image, clamped to the ratio range, centred.
    hh, ww = h_img[:, 0], w_img[:, 0]
    in_ratio = ww / hh
    fb_w = torch.where(in_ratio < ratio[0], ww, torch.where(in_ratio > ratio[1], torch.round(hh * ratio[1]), ww))
    fb_h = torch.where(in_ratio < ratio[0], torch.round(ww / ratio[0]), hh)
    any_ok = ok.any(dim=1)
    h_sel = torch.where(any_ok, h_sel, fb_h)
    w_sel = torch.where(any_ok, w_sel, fb_w)
    top = torch.where(any_ok, torch.floor(u_top * (hh - h_sel + 1)), torch.floor((hh - h_sel) / 2))
    left = torch.where(any_ok, torch.floor(u_left * (ww - w_sel + 1)), torch.floor((ww - w_sel) / 2))
    return torch.stack([top, left, h_sel, w_sel], dim=1).long()


def eval_resize_size(crop_size: int) -> int:
    """Shorter-side resize before the centre crop: 256 for a 224 crop (the usual ratio)."""
    return round(crop_size * 256 / 224)


def resized_size(height: int, width: int, shorter: int) -> list[int]:
    """(h, w) after resizing the shorter side to ``shorter``, as torchvision computes it."""
    if height <= width:
        return [shorter, int(shorter * width / height)]
    return [int(shorter * height / width), shorter]


class CropViewsConfig(PhotometricConfig):
    """The crop scales of global and local views (shared by the image and video views)."""

    global_scale: tuple[float, float] = Field((0.3, 1.0), description="RandomResizedCrop area fraction of a global "
                                              "view (cropped to input.crop_size)")
    local_scale: tuple[float, float] = Field((0.05, 0.3), description="RandomResizedCrop area fraction of a local view")

    @model_validator(mode="after")
    def _crop_ranges(self) -> "CropViewsConfig":
        check_range("global_scale", self.global_scale, 1.0)
        check_range("local_scale", self.local_scale, 1.0)
        return self
