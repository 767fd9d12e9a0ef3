"""The two views of a decoded image: the training crop and the evaluation crop (the training view:
docs/method/ijepa.md, "Training view").

The training view is I-JEPA's only augmentation: RandomResizedCrop (scale ``crop_scale``, aspect
ratio 3/4..4/3), then normalisation. No flips, no colour jitter, no blur (paper, section 5).
Every random number comes from the ``torch.Generator`` passed in, so a batch is a pure function
of its items and the generator's seed (exact resume depends on it; the crop boxes are
:func:`~jepa.vision.crops.sample_crop_boxes`, since torchvision's own ``RandomResizedCrop`` draws
from the global RNG).

Items are what :func:`~jepa.modalities.image.decode.decode_image` returns: full-size uint8
tensors, JPEGs decoded at reduced size (:class:`~.decode.ReducedImage`) or JPEGs left encoded
for the GPU (:class:`~.decode.EncodedJPEG`). Crop boxes are always drawn from the full size, so
the draws and boxes do not depend on how an image was decoded. Each crop is resized as uint8
(torch's vectorised antialiased bilinear kernel, fastest on the channels-last layout the JPEG
decoders return) and normalised into its row of the batch while it is still in cache; in a
DataLoader worker the batch is made in shared memory, as torch's ``default_collate`` does, so it
reaches the training process without another copy.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torch.utils.data import get_worker_info

from jepa.errors import ConfigError, DataError
from jepa.modalities.image.config import InputConfig
from jepa.modalities.image.decode import (  # noqa: F401 - decode_image and the constants are re-exported
    IMAGE_KEYS, IMAGE_SUFFIXES, EncodedJPEG, ImageItem, ReducedImage, decode_image, decode_jpegs_on_device,
)
from jepa.vision.crops import eval_resize_size, resized_size, sample_crop_boxes
from jepa.vision.pixels import norm_constants, normalize_uint8, view_size_problem


# --------------------------------------------------------------------------- training view


def _check_items(items: list[ImageItem], cfg: InputConfig) -> None:
    """Refuse a batch the views cannot make, before anything is resized: wrong items, or an image
    larger than the size bound (:func:`~jepa.vision.pixels.view_size_problem`; :func:`decode_image`
    already refuses those samples, one at a time, so that the loader skips them)."""
    if not items:
        raise ValueError("cannot build a batch from zero images")
    for i, x in enumerate(items):
        if not isinstance(x, EncodedJPEG):  # that one decodes to RGB
            pixels = x.pixels if isinstance(x, ReducedImage) else x
            if not isinstance(pixels, Tensor) or pixels.ndim != 3 or pixels.dtype != torch.uint8 \
                    or pixels.shape[0] != cfg.in_chans:
                what = f"{tuple(pixels.shape)} {pixels.dtype}" if isinstance(pixels, Tensor) else type(pixels).__name__
                raise ConfigError(
                    f"expected decoded images of shape ({cfg.in_chans}, H, W) uint8, got {what}; "
                    "images decode to RGB, so input.in_chans must be 3")
        height, width = (x.height, x.width) if isinstance(x, (ReducedImage, EncodedJPEG)) else x.shape[1:]
        problem = view_size_problem(int(height), int(width), cfg.crop_size)
        if problem is not None:
            raise DataError(f"image {i} of the batch is refused: {problem}; decode images with decode_image, "
                             "which refuses them one at a time (the loaders skip and count them)")


def _full_sizes(items: list[ImageItem]) -> tuple[Tensor, Tensor, Tensor]:
    """(B,) int64 full-size heights, widths and decode scales (1: decoded at full size)."""
    sizes = [(x.height, x.width, x.scale) if isinstance(x, ReducedImage) else
             (x.height, x.width, 1) if isinstance(x, EncodedJPEG) else (x.shape[1], x.shape[2], 1) for x in items]
    return torch.tensor(sizes, dtype=torch.int64).reshape(-1, 3).unbind(1)


def snap_boxes(boxes: Tensor, scales: Tensor) -> Tensor:
    """Boxes on the full-size pixel grid -> the same boxes on each item's decoded grid.

    At scale s, reduced pixel i covers full-size pixels [i s, (i + 1) s), so a box's edges are
    divided by s and rounded (each edge moves by at most s/2 full-size pixels). Scale 1 is exact.

    Args:
        boxes: (B, 4) int64 ``(top, left, height, width)`` on the full-size grid.
        scales: (B,) int64 decode scales.

    Returns:
        (B, 4) int64 boxes on the decoded grid.
    """
    s = scales.double()[:, None]
    start = torch.round(boxes[:, :2].double() / s)
    stop = torch.round((boxes[:, :2] + boxes[:, 2:]).double() / s)
    return torch.cat([start, stop - start], dim=1).long()


def _decoded_pixels(items: list[ImageItem], cfg: InputConfig) -> tuple[list[Tensor], torch.device]:
    """The items' pixels (JPEGs left encoded are decoded on the GPU here, in one call) and the batch's device."""
    encoded = [i for i, x in enumerate(items) if isinstance(x, EncodedJPEG)]
    pixels = [x.pixels if isinstance(x, ReducedImage) else x for x in items]
    if not encoded:
        return pixels, torch.device("cpu")
    device = _gpu(cfg)
    for i, image in zip(encoded, decode_jpegs_on_device([items[i] for i in encoded], device)):
        pixels[i] = image
    return [p.to(device, non_blocking=True) for p in pixels], device


def _gpu(cfg: InputConfig) -> torch.device:
    """The GPU that decodes JPEGs left encoded (``decode_device: cuda``), with the reasons it cannot."""
    if cfg.decode_device != "cuda":
        raise ConfigError("the batch holds JPEGs left encoded for the GPU but modality.input.decode_device is "
                         f"{cfg.decode_device!r}; decode them with the same input section")
    if not torch.cuda.is_available():
        raise ConfigError("modality.input.decode_device=cuda but no CUDA device is available; set it to 'cpu'")
    if get_worker_info() is not None:
        raise ConfigError("modality.input.decode_device=cuda decodes on the GPU in the process that makes the "
                         "batch, which cannot be a forked DataLoader worker: set data.num_workers=0")
    return torch.device("cuda", torch.cuda.current_device())


def _new_batch(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """An empty batch; in a DataLoader worker in shared memory (as ``default_collate`` makes its
    batches), so sending it to the training process copies nothing."""
    if device.type == "cpu" and get_worker_info() is not None:
        storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(math.prod(shape), device=device)
        return torch.empty(0, dtype=dtype).new(storage).view(shape)
    return torch.empty(shape, dtype=dtype, device=device)


def _stack_normalized(views: Iterator[Tensor], num: int, cfg: InputConfig, device: torch.device) -> Tensor:
    """(num, C, S, S) float32 of ``num`` uint8 (C, S, S) views, each normalised as it is written."""
    s = cfg.crop_size
    out = _new_batch((num, cfg.in_chans, s, s), device)
    mean, std = norm_constants(tuple(cfg.mean), tuple(cfg.std), device)
    for row, view in zip(out, views):  # one resize per image (crops differ in size), not per pixel
        row.copy_(view).sub_(mean).div_(std)  # the same arithmetic as normalize_uint8, on a row still in cache
    return out


def _stack_uint8(views: Iterator[Tensor], num: int, cfg: InputConfig, device: torch.device) -> Tensor:
    """(num, C, S, S) uint8 of ``num`` uint8 (C, S, S) views (``finish_batch`` normalises them later)."""
    s = cfg.crop_size
    out = _new_batch((num, cfg.in_chans, s, s), device, torch.uint8)
    for row, view in zip(out, views):
        row.copy_(view)
    return out


def finish_batch(inputs: Tensor, cfg: InputConfig) -> Tensor:
    """A training batch on its device -> the encoder's input: uint8 crops (``batch_dtype: uint8``) are
    normalised as :func:`train_batch` would have done (:func:`normalize_uint8`); float32 passes through."""
    return normalize_uint8(inputs, cfg.mean, cfg.std) if inputs.dtype == torch.uint8 else inputs


def train_batch(items: list[ImageItem], cfg: InputConfig, generator: torch.Generator) -> Tensor:
    """The training view: RandomResizedCrop to ``crop_size`` + normalisation.

    Args:
        items: B decoded images (:func:`decode_image`): (3, H_i, W_i) uint8 tensors (sizes may
            differ), :class:`ReducedImage` or :class:`EncodedJPEG`.
        cfg: crop size, crop scale range, mean and std.
        generator: the only source of randomness (crop boxes, drawn from the full sizes).

    Returns:
        (B, 3, S, S) float32, S = ``cfg.crop_size`` (uint8 crops, not yet normalised, when
        ``cfg.batch_dtype`` is ``uint8``: :func:`finish_batch`); on the GPU when JPEGs were left
        encoded for it.
    """
    _check_items(items, cfg)
    heights, widths, scales = _full_sizes(items)
    boxes = sample_crop_boxes(heights, widths, cfg.crop_scale, generator)
    boxes = snap_boxes(boxes, scales).tolist()
    pixels, device = _decoded_pixels(items, cfg)
    size = [cfg.crop_size, cfg.crop_size]
    views = (TF.resized_crop(x, top, left, h, w, size, antialias=True) for x, (top, left, h, w) in zip(pixels, boxes))
    stack = _stack_uint8 if cfg.batch_dtype == "uint8" else _stack_normalized
    return stack(views, len(items), cfg, device)


# --------------------------------------------------------------------------- evaluation view


def eval_batch(items: list[ImageItem], cfg: InputConfig) -> Tensor:
    """The evaluation view: resize the shorter side to ``round(S*256/224)``, centre-crop S, normalise.

    Args:
        items: B decoded images (:func:`decode_image`); a reduced image is resized to the size its
            full-size image would be resized to.
        cfg: crop size, mean and std.

    Returns:
        (B, 3, S, S) float32.
    """
    _check_items(items, cfg)
    heights, widths, _ = _full_sizes(items)
    pixels, device = _decoded_pixels(items, cfg)
    s, r = cfg.crop_size, eval_resize_size(cfg.crop_size)
    views = (TF.center_crop(TF.resize(x, resized_size(h, w, r), antialias=True), [s, s])
             for x, h, w in zip(pixels, heights.tolist(), widths.tolist()))
    return _stack_normalized(views, len(items), cfg, device)
