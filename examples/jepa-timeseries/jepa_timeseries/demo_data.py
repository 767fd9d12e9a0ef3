"""A labelled synthetic time-series dataset for demos and tests (no download).

Each class is a waveform family; every sample draws its own base frequency (a period of 16 to 64
steps, shared by its channels), per-channel phase and amplitude, and white noise, so the class is
the shape of the wave, not its frequency or scale. Sequences are (C, L) float32, stored as
``.npy`` in WebDataset shards through the core's labelled-split writer
(:func:`jepa.data.write_labelled_splits`), one picklable chunk job per ``max_count`` sequences so
``workers`` processes render them in parallel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from jepa_timeseries.transforms import SAMPLE_KEY, encode_series

_SPLITS = {"train": 0, "val": 1}
TWO_PI = 2 * np.pi


def _sine(theta, cycle, t, rng):
    return np.sin(theta)


def _square(theta, cycle, t, rng):
    return np.sign(np.sin(theta))


def _sawtooth(theta, cycle, t, rng):
    return 2 * cycle - 1


def _triangle(theta, cycle, t, rng):
    return 2 * np.abs(2 * cycle - 1) - 1


def _chirp(rising: bool):
    def wave(theta, cycle, t, rng):
        # Instantaneous frequency ramps linearly between f and 3f over the sequence.
        frac = t / t.shape[-1]
        ramp = frac ** 2 if rising else 2 * frac - frac ** 2
        return np.sin(theta + (theta[..., -1:] - theta[..., :1]) * ramp)
    return wave


def _amplitude_modulated(theta, cycle, t, rng):
    envelope_phase = rng.uniform(0, TWO_PI, size=(theta.shape[0], 1, 1))
    return np.sin(theta) * (0.6 + 0.4 * np.sin(theta / 6 + envelope_phase))


def _pulses(theta, cycle, t, rng):
    return np.where(cycle < 0.15, 1.0, -0.2)


def _bursts(theta, cycle, t, rng):
    return np.sin(3 * theta) * (np.sin(theta / 4) > 0.3)


def _red_noise(theta, cycle, t, rng):
    walk = np.cumsum(rng.standard_normal(theta.shape), axis=-1)
    walk -= walk.mean(axis=-1, keepdims=True)
    return walk / (walk.std(axis=-1, keepdims=True) + 1e-6)


#: Class name -> wave function ``(theta, cycle, t, rng) -> (n, C, L)``, in label order.
WAVEFORMS: dict[str, Callable[..., np.ndarray]] = {
    "sine": _sine, "square": _square, "sawtooth": _sawtooth, "triangle": _triangle,
    "chirp_up": _chirp(True), "chirp_down": _chirp(False), "amplitude_modulated": _amplitude_modulated,
    "pulses": _pulses, "bursts": _bursts, "red_noise": _red_noise,
}
CLASS_NAMES = tuple(WAVEFORMS)


def render_series(labels: np.ndarray, num_channels: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """Signals of the given classes: (n, C, L) float32.

    Args:
        labels: (n,) class indices into :data:`CLASS_NAMES`.
        num_channels: C.
        length: L time steps.
        rng: the only source of randomness.
    """
    n = labels.shape[0]
    t = np.arange(length, dtype=np.float64)
    period = rng.uniform(16, 64, size=(n, 1, 1))
    theta = TWO_PI * t / period + rng.uniform(0, TWO_PI, size=(n, num_channels, 1))  # (n, C, L)
    cycle = np.mod(theta / TWO_PI, 1.0)
    out = np.empty((n, num_channels, length))
    for label, wave in enumerate(WAVEFORMS.values()):
        rows = labels == label
        if rows.any():
            out[rows] = wave(theta[rows], cycle[rows], t, rng)
    amplitude = rng.uniform(0.5, 1.5, size=(n, num_channels, 1))
    noise = rng.uniform(0.05, 0.3, size=(n, 1, 1)) * rng.standard_normal((n, num_channels, length))
    return (amplitude * out + noise).astype(np.float32)


@dataclass(frozen=True)
class DemoChunk:
    """One chunk of a split, sequences ``start .. start+count``, as ``({"npy": bytes}, label)`` pairs
    (a module-level frozen dataclass, so it pickles into the writer's worker processes)."""

    seed: int
    split: str
    start: int
    count: int
    num_classes: int
    num_channels: int
    length: int

    def __call__(self) -> Iterator[tuple[dict[str, bytes], int]]:
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], self.start])
        labels = np.arange(self.start, self.start + self.count) % self.num_classes
        series = render_series(labels, self.num_channels, self.length, rng)
        for label, array in zip(labels.tolist(), series):
            yield {SAMPLE_KEY: encode_series(array)}, label


def write_demo_series(out_dir: str | Path, *, num_train: int, num_val: int, num_classes: int, num_channels: int,
                      length: int, seed: int = 0, max_count: int = 500, workers: int = 1,
                      show_progress: bool = True) -> dict[str, Any]:
    """Write labelled ``out_dir/train`` and ``out_dir/val`` shard sets (each with its manifest).

    Returns:
        ``{"train": Manifest, "val": Manifest}`` (a split with no samples is left out).

    Raises:
        ValueError: bad counts or class count.
    """
    from jepa.data import write_labelled_splits

    if not 2 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(f"num_classes must be in 2..{len(CLASS_NAMES)} (got {num_classes})")
    if num_train < 1 or num_val < 0 or max_count < 1:
        raise ValueError(f"need num_train >= 1, num_val >= 0 and max_count >= 1 (got {num_train}, {num_val}, {max_count})")
    splits = {split: [DemoChunk(seed, split, start, min(max_count, n - start), num_classes, num_channels, length)
                      for start in range(0, n, max_count)]
              for split, n in (("train", num_train), ("val", num_val)) if n > 0}
    return write_labelled_splits(out_dir, splits, CLASS_NAMES[:num_classes], max_count=max_count, workers=workers,
                                 show_progress=show_progress)
