"""Screening data for the video demo (issue 8): a full-frame smooth random texture that translates.

Each clip is a periodic random texture (white noise low-passed by a Gaussian of ``--blur`` px at
64 px) mapped between two colours, translating on the torus at ``--speed`` px per frame; the label
is the direction of travel (4 classes: right, left, down, up, heading jitter +-20 degrees; or 8
classes at 45 degree steps, jitter +-10 degrees). There is no object, so a random-init encoder
cannot read the motion from where an object sits in each frame, and every frame alone has the
same distribution in every class.

Options that made the rows of docs/video_demo.md: ``--palette random`` (two random colours per
clip, as the shipped demo) or ``fixed`` (the same two colours in every clip), ``--noise S``
(independent Gaussian pixel noise of std S in 0..255 on every frame), ``--classes 4|8``.

    python tools/video_texture_clips.py data/v8_rdk_fix --palette fixed
    jepa eval random:RECIPE --train-shards data/v8_rdk_fix/train --val-shards data/v8_rdk_fix/val \\
        --protocol linear,knn,attentive

The shards have the shipped demo's layout (MP4 clips of 32 frames at 64 px, 2000 train + 500
val, H.264 through :func:`jepa.modalities.video.demo.encode_mp4`), so the video demo recipe reads
them with ``--set data.train_shards=DIR/train``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import numpy as np

from jepa.modalities.video.demo import _HEADING, DIRECTIONS, write_clip_splits

FIXED_COLOURS = (np.array([30.0, 40.0, 140.0]), np.array([230.0, 210.0, 60.0]))


@dataclass(frozen=True)
class TextureClips:
    """Clip generator settings (see the module docstring)."""

    num_classes: int = 4
    palette: str = "random"
    noise: float = 0.0
    blur: float = 3.0
    speed: tuple[float, float] = (1.0, 2.0)
    size: int = 64
    num_frames: int = 32

    def render(self, index: int, seed: int) -> tuple[np.ndarray, int]:
        """Clip ``index`` of set ``seed``: (F, size, size, 3) uint8 frames and its label."""
        rng = np.random.default_rng([seed, index])
        label = index % self.num_classes
        if self.num_classes == 8:
            heading = label * math.pi / 4 + math.radians(rng.uniform(-10.0, 10.0))
        else:
            heading = _HEADING[DIRECTIONS[label]] + math.radians(rng.uniform(-20.0, 20.0))
        n = self.size
        speed = rng.uniform(*self.speed) * n / 64
        k = np.fft.fftfreq(n)
        ky, kx = np.meshgrid(k, k, indexing="ij")  # (n, n) cycles per pixel
        spectrum = np.fft.fft2(rng.standard_normal((n, n))) * np.exp(
            -2 * (math.pi * self.blur * n / 64) ** 2 * (kx**2 + ky**2))
        vy, vx = speed * math.sin(heading), speed * math.cos(heading)
        t = np.arange(self.num_frames)[:, None, None]
        # A translation by (vy, vx) * t is a phase ramp in frequency: exact, sub-pixel, periodic.
        field = np.fft.ifft2(spectrum[None] * np.exp(-2j * math.pi * (ky * vy + kx * vx) * t)).real  # (F, n, n)
        field = (field - field.mean()) / (field.std() + 1e-8)
        weight = 1 / (1 + np.exp(-1.5 * field))[..., None]
        while True:  # two colours at least 120 apart, as the shipped demo draws them (drawn for every
            low, high = rng.integers(0, 256, 3).astype(float), rng.integers(0, 256, 3).astype(float)
            if np.linalg.norm(low - high) >= 120:  # palette, so the noise that follows is the same)
                break
        if self.palette == "fixed":
            low, high = FIXED_COLOURS
        frames = (1 - weight) * low + weight * high
        if self.noise:
            frames = frames + self.noise * rng.standard_normal(frames.shape)
        return np.rint(np.clip(frames, 0, 255)).astype(np.uint8), label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--classes", type=int, choices=(4, 8), default=4)
    parser.add_argument("--palette", choices=("random", "fixed"), default="random")
    parser.add_argument("--noise", type=float, default=0.0)
    parser.add_argument("--blur", type=float, default=3.0)
    parser.add_argument("--speed", type=float, nargs=2, default=(1.0, 2.0))
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-val", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    clips = TextureClips(args.classes, args.palette, args.noise, args.blur, tuple(args.speed))
    names = list(DIRECTIONS) if args.classes == 4 else [f"{45 * i}deg" for i in range(8)]
    write_clip_splits(clips, args.out, {"train": args.num_train, "val": args.num_val}, seed=args.seed,
                      classes=names, workers=args.workers)


if __name__ == "__main__":
    main()
