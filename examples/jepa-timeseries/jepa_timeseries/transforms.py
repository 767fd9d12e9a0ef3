"""Decoding ``.npy`` samples and the training / evaluation views of multichannel sequences.

A sample stores one float array of shape (C, L_stored) as ``.npy`` bytes under the key ``npy``
(a 1-D array is read as one channel). Views cut ``seq_len`` steps out of it:

* training: a random crop in time, per-channel standardisation (when enabled), then a random
  amplitude factor per sequence, log-uniform in ``amplitude_scale``;
* evaluation: the centre crop, standardised the same way.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from jepa_timeseries.config import InputConfig

SAMPLE_KEY = "npy"
STANDARDIZE_EPS = 1e-6


def decode_series(sample: dict[str, Any], cfg: InputConfig) -> Tensor:
    """One shard sample -> (C, L_stored) float32 tensor.

    Raises:
        ValueError: no ``npy`` payload, unreadable bytes (pickled objects are refused), not a
            real-valued (C, L) array with ``cfg.in_chans`` channels, shorter than ``cfg.seq_len``,
            or not finite.
    """
    where = f"time-series sample {sample.get('__key__', '?')!r}"
    if SAMPLE_KEY not in sample:
        raise ValueError(f"{where} has no {SAMPLE_KEY!r} payload (keys: {sorted(k for k in sample if not k.startswith('__'))}); "
                         "store each sequence as a .npy file")
    try:
        array = np.load(io.BytesIO(bytes(sample[SAMPLE_KEY])), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{where}: not a readable .npy array ({exc})") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        raise ValueError(f"{where}: expected a real-valued array, got {getattr(array, 'dtype', type(array))}")
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[0] != cfg.in_chans:
        raise ValueError(f"{where}: shape {array.shape}, expected (C={cfg.in_chans}, L) (set input.in_chans to the "
                         "number of channels of your data)")
    if array.shape[1] < cfg.seq_len:
        raise ValueError(f"{where}: {array.shape[1]} time steps, fewer than input.seq_len={cfg.seq_len}; "
                         "use longer sequences or a shorter input.seq_len")
    series = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if not bool(torch.isfinite(series).all()):
        raise ValueError(f"{where}: contains NaN or Inf values")
    return series


def standardize(x_BCL: Tensor) -> Tensor:
    """Zero mean, unit standard deviation per sequence and channel, over time."""
    mean = x_BCL.mean(dim=-1, keepdim=True)
    std = x_BCL.std(dim=-1, keepdim=True, unbiased=False)
    return (x_BCL - mean) / (std + STANDARDIZE_EPS)


def _crops(items: list[Tensor], starts: list[int], length: int) -> Tensor:
    return torch.stack([item[:, s:s + length] for item, s in zip(items, starts)])


def train_batch(items: list[Tensor], cfg: InputConfig, generator: torch.Generator) -> Tensor:
    """Random crops of ``seq_len`` steps, standardised, scaled by a random amplitude: (B, C, seq_len)."""
    room = torch.tensor([item.shape[-1] - cfg.seq_len + 1 for item in items], dtype=torch.float64)
    starts = (torch.rand(len(items), generator=generator, dtype=torch.float64) * room).long().tolist()
    x = _crops(items, starts, cfg.seq_len)
    if cfg.standardize:
        x = standardize(x)
    lo, hi = math.log(cfg.amplitude_scale[0]), math.log(cfg.amplitude_scale[1])
    scale = torch.exp(lo + torch.rand(len(items), generator=generator) * (hi - lo))
    return x * scale.view(-1, 1, 1)


def eval_batch(items: list[Tensor], cfg: InputConfig) -> Tensor:
    """Centre crops of ``seq_len`` steps, standardised: (B, C, seq_len)."""
    starts = [(item.shape[-1] - cfg.seq_len) // 2 for item in items]
    x = _crops(items, starts, cfg.seq_len)
    return standardize(x) if cfg.standardize else x


def encode_series(array: np.ndarray) -> bytes:
    """The ``.npy`` bytes of a (C, L) float32 array, as stored in shards."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()
