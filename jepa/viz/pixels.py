"""Pixel inputs as pictures: the two ``Modality`` display hooks for modalities whose inputs are normalised
pixels on a token grid (image: patches; video: tubelets). Plain torch, no plotting library, so a
modality may call it from its hooks without making ``jepa`` slower to start."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def display_pixels(pixels_CFHW: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Normalised pixels (or uint8 ones) -> (F, H, W, 3) float32 RGB in [0, 1].

    Args:
        pixels_CFHW: one input's channels, frames, height, width; float32 normalised with ``(x - mean) / std``
            (x in [0, 1]) or uint8 in 0..255. One channel is shown as grey, more than three as the first three.
        mean, std: the normalisation, one number per channel.
    """
    assert pixels_CFHW.ndim == 4, pixels_CFHW.shape
    x = pixels_CFHW.detach().to("cpu", torch.float32)
    c = x.shape[0]
    if pixels_CFHW.dtype == torch.uint8:
        x = x / 255.0
    else:
        x = x * torch.tensor(std[:c], dtype=torch.float32).view(-1, 1, 1, 1) \
            + torch.tensor(mean[:c], dtype=torch.float32).view(-1, 1, 1, 1)
    x = x[:3] if c >= 3 else x[:1].expand(3, *x.shape[1:])
    return x.clamp(0, 1).permute(1, 2, 3, 0).contiguous()


def grid_boxes(frames: int, height: int, width: int, *, patch: int, tubelet: int = 1) -> Tensor:
    """(N, 6) int64 ``(frame_start, frame_stop, top, bottom, left, right)`` of the tokens of a
    ``tubelet x patch x patch`` grid over ``frames x height x width`` pixels, in raster order (frames
    slowest, then rows, then columns: the order of a strided convolution's flattened output)."""
    t, h, w = frames // tubelet, height // patch, width // patch
    ti, hi, wi = (g.reshape(-1) for g in torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"))
    return torch.stack([ti * tubelet, (ti + 1) * tubelet, hi * patch, (hi + 1) * patch, wi * patch, (wi + 1) * patch],
                       dim=1).to(torch.int64)
