"""Decoding one image sample, safely whatever its bytes, into what the views crop from.

Three kinds of decoded item, one per ``modality.input`` setting (see :class:`~.config.InputConfig`):

* a ``(3, H, W)`` uint8 tensor: the whole image, full size (the default, as the authors decode);
* a :class:`ReducedImage`: a JPEG decoded at 1/2, 1/4 or 1/8 of its size by DCT scaling
  (``jpeg_reduced_decode``), only when *every* crop the training view can draw from it, and the
  evaluation view's resize, is still at least the output size at that scale: the image is then
  only ever shrunk, never enlarged, as before. Crop boxes are drawn from the full size, so the
  random draws and the boxes are the same as with a full-size decode;
* an :class:`EncodedJPEG`: a JPEG whose header was checked but whose pixels are decoded later, a
  batch at a time, on the GPU (``decode_device: cuda``). A file without its end-of-image marker
  (cut short) is decoded here instead, so the commonest corruption is still skipped and counted;
  damage inside the entropy-coded data is found only by the GPU decode, which then fails the
  batch with an error naming the file.

Every image is also bounded here, from its header, before a pixel is decoded: neither the decoded
image nor any view's resize of it may hold more than :data:`~jepa.vision.pixels.MAX_PIXELS` pixels
(:func:`~jepa.vision.pixels.view_size_problem`). The evaluation view resizes the shorter side, so a
tall-thin image of a few hundred bytes (1 x 60000 px) would grow by the resize factor in both
directions; the bound on the resized size is what bounds the aspect ratio. Such a sample is skipped
and counted like an undecodable one.

Why the reduction is decided here, from the header, and not per crop box: the box is drawn only
when the batch is made, and a sample that fails to decode must fail *here*, where the loader skips
and counts it (:mod:`jepa.data.shard_loader`); a decode put off until the batch is made cannot be
skipped. The bound over every possible box is :func:`smallest_crop_side`.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
import torchvision.io
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from jepa.data.reading import sample_payload, sample_where
from jepa.errors import DataError
from jepa.modalities.image.config import InputConfig
from jepa.vision.crops import CROP_RATIO, eval_resize_size
from jepa.vision.pixels import DEFAULT_CROP_SIZE, MAX_PIXELS, view_size_problem

#: Sample keys that may hold an encoded image, in the order they are looked for.
IMAGE_KEYS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "ppm", "bmp")
#: Image file suffix (lower case) -> sample key its bytes are stored under (``ImageModality.file_suffixes``).
IMAGE_SUFFIXES: dict[str, str] = {
    ".jpg": "jpg", ".jpeg": "jpeg", ".png": "png", ".webp": "webp", ".ppm": "ppm", ".bmp": "bmp",
}
#: DCT scaling factors libjpeg offers through Pillow's ``draft``, largest first.
JPEG_REDUCTIONS: tuple[int, ...] = (8, 4, 2)
#: EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPS_SIDES = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ReducedImage:
    """A JPEG decoded at ``1/scale`` of its size by DCT scaling.

    Attributes:
        pixels: (3, ceil(height / scale), ceil(width / scale)) uint8; pixel (i, j) covers the
            full-size pixels [i*scale, (i+1)*scale) x [j*scale, (j+1)*scale).
        height: full-size height (after EXIF orientation): what crop boxes are drawn from.
        width: full-size width (after EXIF orientation).
        scale: 2, 4 or 8.
    """

    pixels: Tensor
    height: int
    width: int
    scale: int


@dataclass(frozen=True)
class EncodedJPEG:
    """A JPEG whose header was read and checked, left encoded for a batched GPU decode.

    Attributes:
        data: (N,) uint8, the file's bytes (on the CPU).
        height: image height (EXIF orientation 1: as stored).
        width: image width.
        where: names the sample in errors.
    """

    data: Tensor
    height: int
    width: int
    where: str


#: What :func:`decode_image` returns (and the views take).
ImageItem = Union[Tensor, ReducedImage, EncodedJPEG]


def decode_image(sample: dict[str, Any], cfg: InputConfig | None = None) -> ImageItem:
    """Decode the image of one shard sample to RGB, safely whatever its bytes.

    The header is read first (Pillow reads only the header when it opens a file) and the image
    is refused before any pixel is decoded when it declares more than
    :data:`~jepa.vision.pixels.MAX_PIXELS` pixels (a decompression bomb). JPEG is decoded by
    torchvision (libjpeg-turbo) at full size, by Pillow (same library) when decoded at reduced size;
    every other format by Pillow: torchvision 0.29's PNG decoder crashes the process (SIGSEGV) on a
    PNG whose image data stops early, where Pillow raises an error. The format comes from the bytes,
    not the key, so a PNG stored as ``.jpg`` decodes too.

    Args:
        sample: webdataset sample, extension -> bytes (plus ``__key__``/``__url__``).
        cfg: the input section; its ``jpeg_reduced_decode`` and ``decode_device`` decide the kind
            of item a JPEG becomes (module docstring). None: always a full-size tensor.

    Returns:
        (3, H, W) uint8 tensor (grayscale, palette and RGBA images are converted to RGB; 16-bit
        images are scaled to 8 bits; EXIF orientation is applied), or for a JPEG a
        :class:`ReducedImage` / :class:`EncodedJPEG` as ``cfg`` asks.

    Raises:
        ValueError: the sample has no image key, or its bytes are not a readable image (corrupt,
            truncated, not an image, or too large): the loader skips and counts such samples.
    """
    key, data = sample_payload(sample, IMAGE_KEYS, "image")
    where = sample_where(sample)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as pil:  # the header only
                width, height = pil.size
                if width * height > MAX_PIXELS:
                    raise DataError(f"{width}x{height} = {width * height:,} pixels, more than the {MAX_PIXELS:,} "
                                     "allowed (a decompression bomb?)")
                too_large = view_size_problem(height, width, DEFAULT_CROP_SIZE if cfg is None else cfg.crop_size)
                if too_large is not None:
                    raise _TooLarge(too_large)
                if pil.format == "JPEG":
                    image = _decode_jpeg(data, pil, cfg, where)
                    if image is not None:
                        return image
                pil = ImageOps.exif_transpose(pil)
                return _pil_to_rgb(pil)
    except _TooLarge as exc:
        raise DataError(f"{where}: '{key}' is refused: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, struct.error,
            Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{where}: '{key}' is not a readable image ({type(exc).__name__}: {exc})") from None


class _TooLarge(Exception):
    """A readable image that a view would resize past :data:`~jepa.vision.pixels.MAX_PIXELS` (the message
    says which)."""


def _decode_jpeg(data: bytes | bytearray | memoryview, pil: Any, cfg: InputConfig | None,
                 where: str) -> ImageItem | None:
    """A JPEG as ``cfg`` asks, or None when torchvision cannot read it (Pillow tries next)."""
    if cfg is not None and (cfg.jpeg_reduced_decode or cfg.decode_device == "cuda"):
        orientation = pil.getexif().get(_EXIF_ORIENTATION, 1)
        height, width = (pil.width, pil.height) if orientation in _SWAPS_SIDES else (pil.height, pil.width)
        if cfg.decode_device == "cuda" and orientation == 1 and pil.mode in ("RGB", "L") and _ends_complete(data):
            # nvjpeg applies no EXIF orientation and reads no CMYK, and a file without its end marker
            # (truncated, or with data appended) is decoded here, where a broken one is skipped.
            return EncodedJPEG(torch.frombuffer(bytearray(data), dtype=torch.uint8), height, width, where)
        scale = jpeg_reduction(height, width, cfg) if cfg.jpeg_reduced_decode else 1
        if scale > 1:
            return _decode_reduced(pil, scale, height, width, orientation)
    try:
        return torchvision.io.decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                          mode=torchvision.io.ImageReadMode.RGB, apply_exif_orientation=True)
    except RuntimeError:
        return None


def _ends_complete(data: bytes | bytearray | memoryview) -> bool:
    """Whether a JPEG ends with its end-of-image marker (zero padding allowed): a truncated file does not."""
    return bytes(data[-64:]).rstrip(b"\x00").endswith(b"\xff\xd9")


def _decode_reduced(pil: Any, scale: int, height: int, width: int, orientation: int) -> ReducedImage:
    """Decode an opened JPEG at ``1/scale`` (libjpeg DCT scaling through Pillow's ``draft``)."""
    stored = pil.size
    pil.draft("RGB", (stored[0] // scale, stored[1] // scale))
    expected = (math.ceil(stored[0] / scale), math.ceil(stored[1] / scale))
    assert pil.size == expected, (pil.size, expected, scale)  # draft picks exactly `scale` for these sizes
    pil.load()  # a corrupt file raises OSError here
    pixels = _pil_to_rgb(ImageOps.exif_transpose(pil) if orientation != 1 else pil)
    assert pixels.shape[1:] == (math.ceil(height / scale), math.ceil(width / scale)), (pixels.shape, height, width)
    return ReducedImage(pixels, height, width, scale)


def _pil_to_rgb(pil: Any) -> Tensor:
    """(3, H, W) uint8 of a Pillow image (decodes it; 16-bit values are scaled by >> 8, as torchvision does).

    RGB comes back as a channels-last view (strides (1, 3W, 3)), as torchvision's JPEG decoder
    returns it: the antialiased uint8 resize is fastest on that layout.
    """
    if pil.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        array = np.asarray(pil).astype(np.int64).clip(0, 65535) >> 8
        gray = torch.from_numpy(array.astype(np.uint8))
        return gray.expand(3, *gray.shape).contiguous()
    pil = pil.convert("RGB")
    array = torch.frombuffer(bytearray(pil.tobytes()), dtype=torch.uint8)
    return array.view(pil.height, pil.width, 3).permute(2, 0, 1)


# --------------------------------------------------------------------------- reduced-size decoding


def smallest_crop_side(height: int, width: int, min_scale: float, ratio: tuple[float, float] = CROP_RATIO) -> int:
    """A lower bound on the shorter side of every box :func:`~jepa.vision.crops.sample_crop_boxes` can
    draw from an image of this size (area fraction >= ``min_scale``, aspect ratio in ``ratio``).

    A sampled box has w = round(sqrt(A r)), h = round(sqrt(A / r)) with A >= min_scale * H * W,
    so its sides are at least floor(sqrt(min_scale * H * W * min(r_low, 1 / r_high))); the
    fallback box (no attempt fits) is the whole image clamped to the ratio range.
    """
    sampled = math.floor(math.sqrt(min_scale * height * width * min(ratio[0], 1 / ratio[1])))
    aspect = width / height
    fallback_w = round(height * ratio[1]) if aspect > ratio[1] else width
    fallback_h = round(width / ratio[0]) if aspect < ratio[0] else height
    return max(0, min(sampled, fallback_w, fallback_h))


def jpeg_reduction(height: int, width: int, cfg: InputConfig) -> int:
    """The largest DCT scaling (8, 4, 2; else 1) at which nothing the views make is enlarged.

    At scale s a box of side b becomes a box of side >= b/s - 1 (its edges are rounded to the
    reduced pixel grid), so every training crop stays at least ``crop_size`` when
    :func:`smallest_crop_side` >= s * (crop_size + 1); the evaluation view's shorter-side resize
    (``round(crop_size * 256 / 224)``) must likewise stay a reduction.

    Args:
        height: full-size image height (after EXIF orientation).
        width: full-size image width.
        cfg: crop size and scale.
    """
    side = smallest_crop_side(height, width, cfg.crop_scale[0])
    shorter = min(height, width)
    for scale in JPEG_REDUCTIONS:
        if side >= scale * (cfg.crop_size + 1) and shorter >= scale * (eval_resize_size(cfg.crop_size) + 1):
            return scale
    return 1


# --------------------------------------------------------------------------- GPU decoding


def decode_jpegs_on_device(items: list[EncodedJPEG], device: torch.device) -> list[Tensor]:
    """Decode a batch of JPEGs in one nvjpeg call on ``device`` (a CUDA device).

    Returns:
        One (3, H, W) uint8 tensor on ``device`` per item.

    Raises:
        ValueError: a file does not decode (named: found by decoding the batch one file at a time).
    """
    mode = torchvision.io.ImageReadMode.RGB
    try:
        return torchvision.io.decode_jpeg([x.data for x in items], mode=mode, device=device)
    except RuntimeError:
        pass
    out = []
    for x in items:  # only after a failure: find the file
        try:
            out.append(torchvision.io.decode_jpeg(x.data, mode=mode, device=device))
        except RuntimeError as exc:
            raise DataError(f"{x.where}: the JPEG does not decode on {device} ({exc}); with "
                             "modality.input.decode_device=cuda a corrupt file stops the batch instead of being "
                             "skipped: rewrite the shards with `jepa shards` (it checks every file)") from None
    return out
