"""The per-view flip and colour augmentation of view-based objectives (LeJEPA, and DINO before it).

Each step is drawn per view of every sample: left-right flip, colour jitter (brightness, contrast,
saturation, hue in a random order), grayscale, and for images Gaussian blur and solarization
(:func:`draw_photometric`, :func:`apply_photometric`). A clip is one view: one draw for all of its
frames, so they change together.

The draws come only from the ``torch.Generator`` passed in, the same in number and order whatever
the probabilities. The colour steps run in float32 on the 0..255 scale only on the rows that draw
one, and round back to uint8, so a view with every probability 0 is its input (flipped where drawn).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from jepa.config import StrictModel

#: Solarization inverts the values at or above this (of 255), as PIL's ``ImageOps.solarize`` default.
SOLARIZE_THRESHOLD = 128.0
#: ITU-R 601-2 luma weights of R, G, B (what torchvision's grayscale uses).
GREY_WEIGHTS = (0.2989, 0.587, 0.114)
#: The blur kernel reaches this many standard deviations (of the largest sigma drawable) each side.
BLUR_TRUNCATE = 3.0

_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)
#: The factor (shift, for the hue) of each jitter step that changes nothing.
_IDENTITY = (1.0, 1.0, 1.0, 0.0)


class PhotometricConfig(StrictModel):
    """Per-view flip and colour augmentation of view-based objectives (LeJEPA; shared by the image and
    video views). Every probability is drawn independently per view of every sample."""

    flip_p: float = Field(0.5, ge=0, le=1, description="Probability of a left-right flip")
    jitter_p: float = Field(0.8, ge=0, le=1, description="Probability of colour jitter (the four adjustments below, "
                            "in a random order per view)")
    brightness: float = Field(0.4, ge=0, description="Brightness factor drawn from [max(0, 1 - x), 1 + x]")
    contrast: float = Field(0.4, ge=0, description="Contrast factor drawn from [max(0, 1 - x), 1 + x]")
    saturation: float = Field(0.2, ge=0, description="Saturation factor drawn from [max(0, 1 - x), 1 + x]")
    hue: float = Field(0.1, ge=0, le=0.5, description="Hue shift drawn from [-x, x] (fractions of the colour circle)")
    grayscale_p: float = Field(0.2, ge=0, le=1, description="Probability of converting a view to grey (kept 3 channels)")


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
