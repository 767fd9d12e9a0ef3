"""Several augmented views of every image, for view-based objectives (LeJEPA): ``ImageModality.train_views``.

Each view is a RandomResizedCrop (global views: to ``input.crop_size`` at ``views.global_scale``;
local views: to the smaller ``views.local_size`` at ``views.local_scale``) followed by the
photometric augmentation of the LeJEPA paper (and DINO before it), each step drawn per view of
every image: left-right flip, colour jitter (brightness, contrast, saturation, hue in a random
order), grayscale, Gaussian blur and solarization (:func:`draw_photometric`, :func:`apply_photometric`;
the video views use them too, without blur and solarization).

A view is what :func:`~jepa.modalities.image.transforms.train_batch` makes, with more augmentation:
the same items (full-size, reduced or GPU-decoded), crop boxes drawn by the same
:func:`~jepa.modalities.image.transforms.sample_crop_boxes` from the full sizes, the same uint8
antialiased resize, then the same dtype and normalisation (uint8 crops with ``input.batch_dtype:
uint8``, which ``finish_batch`` normalises on the device, else normalised float32). The colour
steps run in float32 on the 0..255 scale only on the rows that draw one, and round back to uint8, so
a view with every probability 0 is exactly a ``train_batch`` crop, and the uint8 and float32 paths
agree bitwise. Every random number comes from the generator passed in, drawn per view in a fixed
order (crop boxes, then the photometric draws), so the views are a pure function of the items and the
generator's seed.

Every item is first checked against the size bound of :func:`~jepa.modalities.image.decode.view_size_problem`
(as ``train_batch`` checks it), before anything is cropped or resized.

Items decoded at reduced size (``input.jpeg_reduced_decode``) were reduced for ``input.crop_scale``
at ``input.crop_size``; a local crop may then be enlarged slightly more than at full size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from jepa.interfaces import ViewSpec
from jepa.modalities.image.config import InputConfig, PhotometricConfig, ViewsConfig
from jepa.modalities.image.transforms import (
    ImageItem, _check_items, _decoded_pixels, _full_sizes, _new_batch, _norm_constants, sample_crop_boxes, snap_boxes,
)

#: The LeJEPA paper's local view side at a 224 px global view.
LOCAL_SIZE_AT_224 = 96
#: Solarization inverts the values at or above this (of 255), as PIL's ``ImageOps.solarize`` default.
SOLARIZE_THRESHOLD = 128.0
#: ITU-R 601-2 luma weights of R, G, B (what torchvision's grayscale uses).
GREY_WEIGHTS = (0.2989, 0.587, 0.114)
#: The blur kernel reaches this many standard deviations (of the largest sigma drawable) each side.
BLUR_TRUNCATE = 3.0

_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)
#: The factor (shift, for the hue) of each jitter step that changes nothing.
_IDENTITY = (1.0, 1.0, 1.0, 0.0)


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


# --------------------------------------------------------------------------- photometric augmentation


@dataclass(frozen=True)
class PhotometricDraws:
    """The random draws of :func:`apply_photometric` for a batch of B views (all on the CPU).

    Attributes:
        flip_B: (B,) bool, flip left-right.
        jitter_B: (B,) bool, apply colour jitter.
        factors_B4: (B, 4) float32 brightness, contrast and saturation factors and the hue shift.
        order_B4: (B, 4) int64, each row a permutation of the four jitter steps (the order they run in).
        grey_B: (B,) bool, convert to grey.
        blur_B: (B,) bool, Gaussian blur.
        sigma_B: (B,) float32 blur standard deviations in pixels.
        blur_radius: half the blur kernel width, the same for every row (from the largest drawable sigma).
        solarize_B: (B,) bool, solarize.
    """

    flip_B: Tensor
    jitter_B: Tensor
    factors_B4: Tensor
    order_B4: Tensor
    grey_B: Tensor
    blur_B: Tensor
    sigma_B: Tensor
    blur_radius: int
    solarize_B: Tensor


def draw_photometric(batch_size: int, cfg: PhotometricConfig, generator: torch.Generator, *, blur_p: float = 0.0,
                     blur_sigma: tuple[float, float] = (0.1, 2.0), solarize_p: float = 0.0) -> PhotometricDraws:
    """Draw the augmentation of ``batch_size`` views from ``generator`` alone.

    The draws are the same in number and order whatever the probabilities (the flips first, as the
    video training view draws them), so changing one probability changes no other draw.

    Args:
        batch_size: B.
        cfg: flip, jitter and grayscale probabilities and the jitter strengths.
        generator: the only source of randomness.
        blur_p: probability of a Gaussian blur (0: never).
        blur_sigma: (low, high) range of the blur's standard deviation in pixels.
        solarize_p: probability of solarization (0: never).
    """
    b = batch_size
    flip = torch.rand(b, generator=generator) < cfg.flip_p
    apply = torch.rand(b, 4, generator=generator)  # jitter, grey, blur, solarize
    u = torch.rand(b, 4, generator=generator)
    order = torch.rand(b, 4, generator=generator).argsort(dim=1)
    sigma = blur_sigma[0] + (blur_sigma[1] - blur_sigma[0]) * torch.rand(b, generator=generator)
    lows = torch.tensor([max(0.0, 1 - cfg.brightness), max(0.0, 1 - cfg.contrast), max(0.0, 1 - cfg.saturation), -cfg.hue])
    highs = torch.tensor([1 + cfg.brightness, 1 + cfg.contrast, 1 + cfg.saturation, cfg.hue])
    return PhotometricDraws(
        flip_B=flip, jitter_B=apply[:, 0] < cfg.jitter_p, factors_B4=lows + (highs - lows) * u, order_B4=order,
        grey_B=apply[:, 1] < cfg.grayscale_p, blur_B=apply[:, 2] < blur_p, sigma_B=sigma,
        blur_radius=math.ceil(BLUR_TRUNCATE * blur_sigma[1]), solarize_B=apply[:, 3] < solarize_p,
    )


def apply_photometric(x: Tensor, draws: PhotometricDraws) -> Tensor:
    """Augment a batch of uint8 views: flip, colour jitter, grey, blur, solarize (in that order).

    Args:
        x: (B, *, 3, H, W) uint8 (images: (B, 3, H, W); clips: (B, F, 3, H, W), one draw per clip).
        draws: from :func:`draw_photometric` for B views.

    Returns:
        (B, *, 3, H, W) uint8 on ``x``'s device; rows that draw no colour step are ``x``'s pixels
        (flipped where drawn).
    """
    assert x.dtype == torch.uint8 and x.ndim >= 4 and x.shape[-3] == 3, (x.dtype, x.shape)
    dev = x.device
    flipped = draws.flip_B.nonzero().squeeze(1).to(dev)
    if flipped.numel():
        x = x.index_copy(0, flipped, x[flipped].flip(-1))
    colour = draws.jitter_B | draws.grey_B | draws.blur_B | draws.solarize_B
    rows = colour.nonzero().squeeze(1)
    if rows.numel() == 0:
        return x
    y = x[rows.to(dev)].float()  # 0..255
    jitter, grey, blur, solarize = (m[rows].to(dev) for m in (draws.jitter_B, draws.grey_B, draws.blur_B, draws.solarize_B))
    factors, order = draws.factors_B4[rows].to(dev), draws.order_B4[rows].to(dev)
    steps = [(step, adjust) for step, adjust in ((_BRIGHTNESS, adjust_brightness), (_CONTRAST, adjust_contrast),
                                                 (_SATURATION, adjust_saturation), (_HUE, adjust_hue))
             if (factors[:, step] != _IDENTITY[step]).any()]  # a strength of 0 draws the identity: skip it
    for position in range(4):  # each row runs its own permutation of the four steps
        for step, adjust in steps:
            sel = jitter & (order[:, position] == step)
            if sel.any():
                y[sel] = adjust(y[sel], factors[sel, step])
    if grey.any():
        y[grey] = _grey(y[grey]).expand(-1, *y.shape[1:])
    if blur.any():
        y[blur] = gaussian_blur(y[blur], draws.sigma_B[rows].to(dev)[blur], draws.blur_radius)
    if solarize.any():
        z = y[solarize]
        y[solarize] = z + (z >= SOLARIZE_THRESHOLD).to(z.dtype) * (255.0 - 2 * z)  # 255 - z at and above it
    return x.index_copy(0, rows.to(dev), y.round_().clamp_(0, 255).to(torch.uint8))


def _per_row(values_N: Tensor, x: Tensor) -> Tensor:
    """(N,) -> (N, 1, ..., 1) broadcasting against ``x``."""
    return values_N.to(x.dtype).view(-1, *[1] * (x.ndim - 1))


def _grey(x: Tensor) -> Tensor:
    """(N, *, 3, H, W) float -> (N, *, 1, H, W) luma."""
    r, g, b = x.unbind(-3)
    return (GREY_WEIGHTS[0] * r + GREY_WEIGHTS[1] * g + GREY_WEIGHTS[2] * b).unsqueeze(-3)


def adjust_brightness(x: Tensor, factor_N: Tensor) -> Tensor:
    """Scale (N, *, 3, H, W) float 0..255 values by a factor per row."""
    return (x * _per_row(factor_N, x)).clamp_(0, 255)


def adjust_contrast(x: Tensor, factor_N: Tensor) -> Tensor:
    """Blend each image (each frame of a clip) with its mean grey level, a factor per row."""
    f = _per_row(factor_N, x)
    mean = _grey(x).mean(dim=(-3, -2, -1), keepdim=True)
    return (f * x + (1 - f) * mean).clamp_(0, 255)


def adjust_saturation(x: Tensor, factor_N: Tensor) -> Tensor:
    """Blend each pixel with its grey value, a factor per row."""
    f = _per_row(factor_N, x)
    return (f * x + (1 - f) * _grey(x)).clamp_(0, 255)


def adjust_hue(x: Tensor, shift_N: Tensor) -> Tensor:
    """Rotate the hue by ``shift`` of the colour circle per row (the HSV hue; value and saturation kept).

    Hue is measured in sixths of the circle (red 0, green 2, blue 4). A channel of a pixel with
    maximum ``top``, chroma ``delta`` and hue ``h`` is ``top - delta * clamp(d - 1, 0, 1)``, ``d`` the
    circular distance from ``h`` to the channel's primary, so the rotated pixel is written without
    converting back from HSV. Arithmetic selects instead of ``torch.where`` and without ``remainder``
    (both many times slower than a multiply on CPU tensors).

    Args:
        x: (N, *, 3, H, W) float 0..255.
        shift_N: (N,) shifts in [-0.5, 0.5].
    """
    r, g, b = x.unbind(-3)
    top = torch.maximum(torch.maximum(r, g), b)
    delta = top - torch.minimum(torch.minimum(r, g), b)
    inv = delta.clamp_min(1e-6).reciprocal_()  # a grey pixel (delta 0) has every channel = top whatever its hue
    red = (r >= top).to(x.dtype)
    green = (g >= top).to(x.dtype) * (1 - red)
    blue = 1 - red - green
    hue6 = red * ((g - b) * inv) + green * ((b - r) * inv + 2) + blue * ((r - g) * inv + 4)  # in [-1, 5]
    hue6 += 6.0 * _per_row(shift_N, hue6)  # in [-4, 8]
    out = torch.empty_like(x)
    for channel, primary in enumerate((0.0, 2.0, 4.0)):
        a = (hue6 - primary).abs_()  # at most 8, so the circular distance is min(a, |6 - a|)
        d = torch.minimum(a, (6.0 - a).abs_())
        torch.sub(top, delta * d.sub_(1.0).clamp_(0, 1), out=out.select(-3, channel))
    return out


def gaussian_blur(x: Tensor, sigma_N: Tensor, radius: int) -> Tensor:
    """Separable Gaussian blur with a standard deviation per row, reflecting at the borders.

    Args:
        x: (N, *, C, H, W) float.
        sigma_N: (N,) standard deviations in pixels.
        radius: half the kernel width (cut down to fit a small image).

    Returns:
        (N, *, C, H, W) float.
    """
    h, w = x.shape[-2:]
    radius = min(radius, h - 1, w - 1)
    if radius <= 0:
        return x
    n, planes = x.shape[0], math.prod(x.shape[1:-2])
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma_N.float()[:, None]) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(planes, dim=0)  # (N * planes, K)
    y = x.reshape(1, n * planes, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=n * planes)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=n * planes)
    return y.reshape(x.shape)


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
    as :func:`~jepa.modalities.image.transforms.normalize_uint8`)."""
    if cfg.batch_dtype == "uint8":
        return _new_batch(tuple(crops.shape), crops.device, torch.uint8).copy_(crops)
    mean, std = _norm_constants(tuple(cfg.mean), tuple(cfg.std), crops.device)
    return _new_batch(tuple(crops.shape), crops.device).copy_(crops).sub_(mean).div_(std)
