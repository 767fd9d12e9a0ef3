"""Image decoding and the two views of an image: the training crop and the evaluation crop.

The training view is I-JEPA's only augmentation: RandomResizedCrop (scale ``crop_scale``, aspect
ratio 3/4..4/3), then normalisation. No flips, no colour jitter, no blur (paper, section 5).
Every random number comes from the ``torch.Generator`` passed in, so a batch is a pure function
of its items and the generator's seed (exact resume depends on it; torchvision's own
``RandomResizedCrop`` draws from the global RNG and is therefore not used).
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from typing import Any

import numpy as np
import torch
import torchvision.io
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from jepa.modalities.image.config import InputConfig

#: Sample keys that may hold an encoded image, in the order they are looked for.
IMAGE_KEYS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "ppm", "bmp")
#: Image file suffix (lower case) -> sample key its bytes are stored under (``ImageModality.file_suffixes``).
IMAGE_SUFFIXES: dict[str, str] = {
    ".jpg": "jpg", ".jpeg": "jpeg", ".png": "png", ".webp": "webp", ".ppm": "ppm", ".bmp": "bmp",
}
#: Most pixels (width x height) an image may declare; larger ones are refused before decoding
#: (Pillow's own default, ``PIL.Image.MAX_IMAGE_PIXELS``: about 9459 x 9459).
MAX_PIXELS = 89_478_485
#: Aspect-ratio (w/h) range of the training crop, as in RandomResizedCrop.
CROP_RATIO: tuple[float, float] = (3 / 4, 4 / 3)
#: Attempts at a crop box per image before falling back to a centre crop (as in torchvision).
_CROP_ATTEMPTS = 10


# --------------------------------------------------------------------------- decoding


def decode_image(sample: dict[str, Any]) -> Tensor:
    """Decode the image of one shard sample to RGB, safely whatever its bytes.

    The header is read first (Pillow reads only the header when it opens a file) and the image
    is refused before any pixel is decoded when it declares more than :data:`MAX_PIXELS` pixels
    (a decompression bomb). JPEG is decoded by torchvision (libjpeg-turbo); every other format by
    Pillow: torchvision 0.29's PNG decoder crashes the process (SIGSEGV) on a PNG whose image data
    stops early, where Pillow raises an error. The format comes from the bytes, not the key, so a
    PNG stored as ``.jpg`` decodes too.

    Args:
        sample: webdataset sample, extension -> bytes (plus ``__key__``/``__url__``).

    Returns:
        (3, H, W) uint8 tensor. Grayscale, palette and RGBA images are converted to RGB;
        16-bit images are scaled to 8 bits; EXIF orientation is applied.

    Raises:
        ValueError: the sample has no image key, or its bytes are not a readable image (corrupt,
            truncated, not an image, or too large): the loader skips and counts such samples.
    """
    from jepa.data.reading import sample_payload, sample_where

    key, data = sample_payload(sample, IMAGE_KEYS, "image")
    where = sample_where(sample)
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as pil:  # the header only
                width, height = pil.size
                if width * height > MAX_PIXELS:
                    raise ValueError(f"{width}x{height} = {width * height:,} pixels, more than the {MAX_PIXELS:,} "
                                     "allowed (a decompression bomb?)")
                if pil.format == "JPEG":
                    image = _decode_jpeg(data)
                    if image is not None:
                        return image
                pil = ImageOps.exif_transpose(pil)
                return _pil_to_rgb(pil)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, struct.error,
            Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"{where}: '{key}' is not a readable image ({type(exc).__name__}: {exc})") from None


def _decode_jpeg(data: bytes | bytearray | memoryview) -> Tensor | None:
    """torchvision's JPEG decoder (fast), or None when it cannot read the file (Pillow tries next)."""
    try:
        image = torchvision.io.decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                           mode=torchvision.io.ImageReadMode.RGB, apply_exif_orientation=True)
    except RuntimeError:
        return None
    return image


def _pil_to_rgb(pil: Any) -> Tensor:
    """(3, H, W) uint8 of a Pillow image (decodes it; 16-bit values are scaled by >> 8, as torchvision does)."""
    if pil.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        array = np.asarray(pil).astype(np.int64).clip(0, 65535) >> 8
        gray = torch.from_numpy(array.astype(np.uint8))
        return gray.expand(3, *gray.shape).contiguous()
    pil = pil.convert("RGB")
    array = torch.frombuffer(bytearray(pil.tobytes()), dtype=torch.uint8)
    return array.view(pil.height, pil.width, 3).permute(2, 0, 1).contiguous()


# --------------------------------------------------------------------------- training view


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


def normalize_uint8(batch: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """(B, C, H, W) uint8 -> float32 ``(x / 255 - mean) / std``, in one pass."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    return batch.float().sub_(m).div_(s)


def _check_items(items: list[Tensor], cfg: InputConfig) -> None:
    if not items:
        raise ValueError("cannot build a batch from zero images")
    for x in items:
        if x.ndim != 3 or x.dtype != torch.uint8 or x.shape[0] != cfg.in_chans:
            raise ValueError(
                f"expected decoded images of shape ({cfg.in_chans}, H, W) uint8, got {tuple(x.shape)} {x.dtype}; "
                "images decode to RGB, so input.in_chans must be 3")


def train_batch(items: list[Tensor], cfg: InputConfig, generator: torch.Generator) -> Tensor:
    """The training view: RandomResizedCrop to ``crop_size`` + normalisation.

    Args:
        items: B decoded images, each (3, H_i, W_i) uint8 (sizes may differ).
        cfg: crop size, crop scale range, mean and std.
        generator: the only source of randomness (crop boxes).

    Returns:
        (B, 3, S, S) float32, S = ``cfg.crop_size``.
    """
    _check_items(items, cfg)
    s = cfg.crop_size
    heights = torch.tensor([x.shape[1] for x in items])
    widths = torch.tensor([x.shape[2] for x in items])
    boxes = sample_crop_boxes(heights, widths, cfg.crop_scale, generator).tolist()
    out = torch.empty(len(items), cfg.in_chans, s, s, dtype=torch.uint8)
    for i, (x, (top, left, h, w)) in enumerate(zip(items, boxes)):  # one call per image, not per pixel
        out[i] = TF.resized_crop(x, top, left, h, w, [s, s], antialias=True)
    return normalize_uint8(out, cfg.mean, cfg.std)


# --------------------------------------------------------------------------- evaluation view


def eval_resize_size(crop_size: int) -> int:
    """Shorter-side resize before the centre crop: 256 for a 224 crop (the usual ratio)."""
    return round(crop_size * 256 / 224)


def eval_batch(items: list[Tensor], cfg: InputConfig) -> Tensor:
    """The evaluation view: resize the shorter side to ``round(S*256/224)``, centre-crop S, normalise.

    Args:
        items: B decoded images, each (3, H_i, W_i) uint8.
        cfg: crop size, mean and std.

    Returns:
        (B, 3, S, S) float32.
    """
    _check_items(items, cfg)
    s, r = cfg.crop_size, eval_resize_size(cfg.crop_size)
    out = torch.empty(len(items), cfg.in_chans, s, s, dtype=torch.uint8)
    for i, x in enumerate(items):
        out[i] = TF.center_crop(TF.resize(x, [r], antialias=True), [s, s])
    return normalize_uint8(out, cfg.mean, cfg.std)
