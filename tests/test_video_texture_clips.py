"""tools/video_texture_clips.py (the video demo's screening data): the texture moves the way the
label says, a frame alone does not tell the label, and a clip is a pure function of (seed, index)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tool_module import load_tool


def _tool():
    return load_tool("video_texture_clips")


def _shift(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(dy, dx) on the torus that moves frame ``a`` onto frame ``b`` (peak of the phase correlation)."""
    fa, fb = np.fft.fft2(a - a.mean()), np.fft.fft2(b - b.mean())
    cross = fb * np.conj(fa)
    corr = np.fft.ifft2(cross / (np.abs(cross) + 1e-9)).real
    dy, dx = np.unravel_index(np.argmax(corr), corr.shape)
    n = a.shape[0]
    return (dy + n // 2) % n - n // 2, (dx + n // 2) % n - n // 2


@pytest.mark.parametrize("num_classes", [4, 8])
def test_the_texture_moves_in_the_labelled_direction(num_classes):
    clips = _tool().TextureClips(num_classes=num_classes, palette="fixed")
    for index in range(2 * num_classes):
        frames, label = clips.render(index, seed=3)
        assert frames.shape == (32, 64, 64, 3) and frames.dtype == np.uint8 and label == index % num_classes
        grey = frames.astype(np.float64).mean(-1)
        dy, dx = _shift(grey[0], grey[8])  # 8 frames at 1..2 px per frame: 8..16 px
        assert 6 <= math.hypot(dy, dx) <= 18
        if num_classes == 4:
            heading = {0: 0.0, 1: math.pi, 2: math.pi / 2, 3: -math.pi / 2}[label]
            tolerance = 20
        else:
            heading, tolerance = label * math.pi / 4, 10
        error = math.degrees(abs((math.atan2(dy, dx) - heading + math.pi) % (2 * math.pi) - math.pi))
        assert error <= tolerance + 8  # the jitter plus the 1-px rounding of the shift


def test_one_frame_has_the_same_statistics_in_every_class_and_clips_are_reproducible():
    clips = _tool().TextureClips(palette="random", noise=10.0)
    means = {label: [] for label in range(4)}
    for index in range(200):
        frames, label = clips.render(index, seed=0)
        means[label].append(frames[16].mean())
    overall = np.mean([m for v in means.values() for m in v])
    for values in means.values():  # class means of one frame's brightness within noise of each other
        assert abs(np.mean(values) - overall) < 4 * np.std(values) / math.sqrt(len(values)) + 1
    a, _ = clips.render(7, seed=0)
    b, _ = clips.render(7, seed=0)
    c, _ = clips.render(7, seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
