"""The size bound on pixels every view checks, and the normalisation of uint8 pixels.

Every image, and every video frame, is bounded before a pixel is decoded: neither the decoded
picture nor any view's resize of it may hold more than :data:`MAX_PIXELS` pixels
(:func:`view_size_problem`). A sample past the bound is refused where it is decoded, so the loader
skips and counts it, and the views refuse a batch holding one before anything is resized.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from jepa.vision.crops import eval_resize_size, resized_size

#: Most pixels (width x height) an image may declare, and most pixels any view may resize it to
#: (:func:`view_size_problem`); larger ones are refused before decoding (Pillow's own default,
#: ``PIL.Image.MAX_IMAGE_PIXELS``: about 9459 x 9459). One bound for both: no view then allocates
#: more than the largest image that may be decoded, and a square image passes at every crop size
#: a ViT here takes (8192 px: the evaluation resize to 9362 x 9362 is 87.6 M pixels).
MAX_PIXELS = 89_478_485
MAX_CROP = 8192
"""Largest crop side in pixels (8192 x 8192 = 67 Mpixel, below the 89.5 Mpixel decoding limit)."""
#: The crop size the bound assumes when a sample is decoded without an input section (the image and
#: video input sections' default ``crop_size``).
DEFAULT_CROP_SIZE = 224


def view_size_problem(height: int, width: int, crop_size: int) -> str | None:
    """Why an image (or video frame) of this size is refused, or None when every view stays within
    :data:`MAX_PIXELS`.

    Two sizes are bounded: the decoded image, and the evaluation view's shorter-side resize to
    :func:`~jepa.vision.crops.eval_resize_size`, which grows (or shrinks) both sides by the same
    factor, so a tall-thin image grows by that factor times its aspect ratio. It is the largest thing
    any view allocates: a training or LeJEPA crop is resized to at most ``crop_size`` squared, less
    than the evaluation resize, from a box inside the decoded image, and a separable resize's
    intermediate is no larger than its input or its output.

    Args:
        height: full-size height (after EXIF orientation; the bound does not depend on it).
        width: full-size width.
        crop_size: the views' output side (``input.crop_size``).
    """
    if height < 1 or width < 1:
        return f"its size is {width}x{height}"
    if height * width > MAX_PIXELS:
        return f"{width}x{height} = {height * width:,} pixels, more than the {MAX_PIXELS:,} allowed"
    h, w = resized_size(height, width, eval_resize_size(crop_size))
    if h * w > MAX_PIXELS:
        ratio = max(height, width) / min(height, width)
        return (f"the evaluation view would resize its {width}x{height} pixels (aspect ratio {ratio:,.0f}:1) to "
                f"{w}x{h} = {h * w:,} pixels, more than the {MAX_PIXELS:,} any view may allocate; such "
                "samples are skipped")
    return None


def normalize_uint8(batch: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """(B, C, H, W) uint8 -> float32 ``(x - 255 mean) / (255 std)``, in one pass."""
    m, s = norm_constants(tuple(mean), tuple(std), batch.device)
    return batch.float().sub_(m).div_(s)


@functools.lru_cache(maxsize=32)
def norm_constants(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """(C, 1, 1) float32 ``255 mean`` and ``255 std`` (the same numbers, so the same rounding, everywhere).

    A view that normalises rows one at a time (``row.copy_(view).sub_(mean).div_(std)``) uses these to
    compute exactly what :func:`normalize_uint8` does. Made once per device and kept (read-only): a
    fresh copy to the GPU for every batch would wait for the GPU (a copy from pageable host memory)
    on the training loop's hot path.
    """
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1) * 255.0
    return m.to(device), s.to(device)
