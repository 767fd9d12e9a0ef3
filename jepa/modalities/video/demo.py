"""Generated demo clips whose label is the motion, so that no single frame tells the class.

Each clip shows one regular polygon (3, 4 or 5 sides) that translates and rotates over a static,
softly textured background. The **label** is the motion: the direction of travel (right, left,
down, up; ``num_classes`` 2..4 uses the first directions) or the direction and the rotation sense
(``num_classes`` 5..8, label ``2 * direction + sense``, sense 0 counter-clockwise on screen, 1
clockwise). Everything else is
random and independent of the label: shape, size, colours, background texture, start position,
start angle, speed (within ranges) and a heading jitter of up to +-20 degrees.

The shape moves on a torus (it leaves one edge and re-enters at the opposite one) and its start
position and angle are uniform, so **every frame, taken alone, has the same distribution in
every class**: only the change between frames carries the label.

Clips are encoded as H.264 in MP4 (yuv420p, CRF 10, one encoder thread, so the bytes are a pure
function of the arguments), i.e. the same kind of file as real training data.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from pathlib import Path
from typing import Iterator, Protocol

import av
import numpy as np

from jepa.data import Manifest, ShardSample, derive_seed, write_shard_set
from jepa.errors import ConfigError

DIRECTIONS: tuple[str, ...] = ("right", "left", "down", "up")
_HEADING = {"right": 0.0, "left": math.pi, "down": math.pi / 2, "up": -math.pi / 2}  # image coords, y down
NUM_CLASSES_CHOICES = range(2, 9)
FPS = 25
_SUPERSAMPLE = 2


@dataclass(frozen=True)
class ClipParams:
    """What a clip shows (for tests and inspection)."""

    label: int
    direction: str
    clockwise: bool
    num_sides: int
    radius: float
    speed: float  # pixels per frame
    angular_speed: float  # radians per frame, > 0
    foreground: tuple[int, int, int]
    background: tuple[int, int, int]


def class_names(num_classes: int = 4) -> list[str]:
    """Label -> name, e.g. ``right`` or ``right-ccw``."""
    _check_classes(num_classes)
    if num_classes <= len(DIRECTIONS):
        return list(DIRECTIONS[:num_classes])
    return [f"{d}-{s}" for d in DIRECTIONS for s in ("ccw", "cw")][:num_classes]


def _check_classes(num_classes: int) -> None:
    if num_classes not in NUM_CLASSES_CHOICES:
        raise ConfigError(f"the video demo has 2..4 (direction) or 5..8 (direction x rotation sense) classes, "
                         f"got {num_classes}; pass e.g. --classes 4")


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Foreground and background colours at least 120 apart (Euclidean, 0..255)."""
    while True:
        fg, bg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        if np.linalg.norm(fg - bg) >= 120:
            return fg.astype(np.float64), bg.astype(np.float64)


def _texture(size: int, freqs: np.ndarray, phases: np.ndarray, amplitudes: np.ndarray) -> np.ndarray:
    """(size, size, 3) static background texture: three periodic plane waves (one per row of
    ``freqs`` (3, 2) in cycles per frame side), mixed into the channels by ``amplitudes`` (3, 3)."""
    y, x = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    waves = np.sin(2 * math.pi * (freqs[:, 0, None, None] * y + freqs[:, 1, None, None] * x) / size + phases[:, None, None])
    return np.einsum("kyx,kc->yxc", waves, amplitudes) / 3


def render_clip(index: int, seed: int, size: int = 64, num_frames: int = 16,
                num_classes: int = 4) -> tuple[np.ndarray, ClipParams]:
    """Render clip ``index`` of the demo set ``seed``.

    Args:
        index: clip number; the label is ``index % num_classes`` (balanced classes).
        seed: demo-set seed; the clip is a pure function of ``(seed, index)`` and the sizes.
        size: frame side in pixels (even, for yuv420p).
        num_frames: frames in the clip.
        num_classes: 2..4 (direction) or 5..8 (direction x rotation sense).

    Returns:
        frames: (F, size, size, 3) uint8 RGB.
        params: the clip's label and nuisance parameters.
    """
    _check_classes(num_classes)
    if size < 8 or size % 2 or num_frames < 2:
        raise ConfigError(f"demo clips need an even size >= 8 and >= 2 frames, got size={size}, num_frames={num_frames}")
    rng = np.random.default_rng([seed, index])
    label = index % num_classes
    by_direction = num_classes <= len(DIRECTIONS)
    direction = DIRECTIONS[label if by_direction else label // 2]
    clockwise = bool(rng.integers(0, 2)) if by_direction else bool(label % 2)
    fg, bg = _colours(rng)
    num_sides = int(rng.integers(3, 6))
    radius = rng.uniform(0.12, 0.2) * size
    speed = rng.uniform(0.6, 1.2) * size / 32
    angular_speed = math.radians(rng.uniform(4.0, 8.0))
    heading = _HEADING[direction] + math.radians(rng.uniform(-20.0, 20.0))
    start, angle0 = rng.uniform(0, size, 2), rng.uniform(0, 2 * math.pi)
    waves = rng.integers(-2, 3, (3, 2)), rng.uniform(0, 2 * math.pi, 3), rng.uniform(-1, 1, (3, 3))

    f = np.arange(num_frames)[:, None]
    centres = (start + f * speed * np.array([math.sin(heading), math.cos(heading)])) % size  # (F, 2) as (y, x)
    # Image coordinates have y pointing down, so a clockwise turn on screen increases the angle.
    angles = angle0 + (1.0 if clockwise else -1.0) * angular_speed * np.arange(num_frames)  # (F,)

    n = size * _SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / _SUPERSAMPLE  # sub-pixel centres
    dy = (coords[None, :, None] - centres[:, 0, None, None] + size / 2) % size - size / 2  # (F, n, 1), torus
    dx = (coords[None, None, :] - centres[:, 1, None, None] + size / 2) % size - size / 2  # (F, 1, n)
    normals = angles[:, None] + math.pi / num_sides + 2 * math.pi * np.arange(num_sides) / num_sides  # (F, k)
    apothem = radius * math.cos(math.pi / num_sides)
    dist = dy[..., None] * np.sin(normals)[:, None, None, :] + dx[..., None] * np.cos(normals)[:, None, None, :]
    inside = (dist <= apothem).all(-1)  # (F, n, n)
    cover = inside.reshape(num_frames, size, _SUPERSAMPLE, size, _SUPERSAMPLE).mean((2, 4))[..., None]

    background = np.clip(bg + 16.0 * _texture(size, *waves), 0, 255)
    frames = (1 - cover) * background[None] + cover * fg
    params = ClipParams(label, direction, clockwise, num_sides, float(radius), float(speed), float(angular_speed),
                        tuple(int(c) for c in fg), tuple(int(c) for c in bg))  # type: ignore[arg-type]
    return np.rint(frames).astype(np.uint8), params


def encode_mp4(frames: np.ndarray, fps: int = FPS, crf: int = 10) -> bytes:
    """(F, H, W, 3) uint8 RGB frames -> H.264 MP4 bytes (yuv420p; H and W even). The bytes of a few clips differ
    from process to process (libx264, single-threaded; docs/video_demo.md), the decoded frames by a few pixels."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (F, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "threads": "1", "preset": "medium"}
        for frame in frames:
            # converted to yuv420p here: the encoder's own conversion gave other bytes more often (117 of 500 clips
            # against 8 of 250 now); these planes are the same in every process, the rest is libx264's own
            yuv = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24").reformat(format="yuv420p")
            for packet in stream.encode(yuv):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def demo_clip(index: int, seed: int, size: int = 64, num_frames: int = 16, num_classes: int = 4) -> tuple[bytes, int]:
    """Clip ``index`` of the demo set ``seed`` as MP4 bytes, with its label (see :func:`render_clip`)."""
    frames, params = render_clip(index, seed, size, num_frames, num_classes)
    return encode_mp4(frames), params.label


#: Frames per generated clip: enough for the demo recipe's clip span with room for random starts.
DEMO_NUM_FRAMES = 32
_SPLITS = {"train": 0, "val": 1}


def split_seed(seed: int, split: str) -> int:
    """The clip-set seed of ``split`` ("train" or "val") of the demo data set ``seed``: val clips are independent of
    train clips."""
    return derive_seed(seed, _SPLITS[split])


class ClipRenderer(Protocol):
    """Draws clip ``index`` of the clip set ``seed``: frames (F, H, W, 3) uint8 and the label."""

    def render(self, index: int, seed: int) -> tuple[np.ndarray, int]: ...


@dataclass(frozen=True)
class ClipChunk:
    """Chunk job for :func:`jepa.data.write_shard_set`: clips ``start .. start+count`` of a split, as MP4."""

    clips: ClipRenderer
    seed: int
    split: str
    start: int
    count: int

    def __call__(self) -> Iterator[ShardSample]:
        clip_set = split_seed(self.seed, self.split)
        for i in range(self.start, self.start + self.count):
            frames, label = self.clips.render(i, clip_set)
            yield ShardSample(f"{self.split}_{i:07d}", "mp4", encode_mp4(frames), label)


def write_clip_splits(clips: ClipRenderer, out_dir: str | Path, sizes: dict[str, int], *, seed: int,
                      classes: list[str], max_count: int = 250, workers: int = 1,
                      show_progress: bool = True) -> dict[str, Manifest]:
    """Write a shard set of labelled MP4 clips (``cls`` = label) into ``out_dir/SPLIT`` for each split
    (``"train"``, ``"val"``) and clip count of ``sizes``."""
    manifests = {}
    for split, n in sizes.items():
        jobs = [ClipChunk(clips, seed, split, start, min(max_count, n - start)) for start in range(0, n, max_count)]
        manifests[split] = write_shard_set(
            jobs, Path(out_dir) / split, prefix=split, max_count=max_count, max_bytes=1 << 40, workers=workers,
            classes=classes, total_items=n, show_progress=show_progress)
    return manifests


@dataclass(frozen=True)
class _DemoClips:
    """The demo clips of :func:`render_clip` as a :class:`ClipRenderer`."""

    size: int
    num_frames: int
    num_classes: int

    def render(self, index: int, seed: int) -> tuple[np.ndarray, int]:
        frames, params = render_clip(index, seed, self.size, self.num_frames, self.num_classes)
        return frames, params.label


def write_demo_dataset(out_dir: str | Path, *, num_train: int, num_val: int, size: int = 64,
                       num_frames: int = DEMO_NUM_FRAMES, num_classes: int = 4, seed: int = 0,
                       max_count: int = 250, workers: int = 1, show_progress: bool = True) -> dict[str, Manifest]:
    """Write ``out_dir/train`` and ``out_dir/val`` shard sets of labelled MP4 clips (``cls`` = motion class).

    Raises:
        ValueError: bad counts, size, frame count or class count.
    """
    _check_classes(num_classes)
    if num_train < 1 or num_val < 0:
        raise ConfigError(f"need num_train >= 1 and num_val >= 0 (got {num_train}, {num_val})")
    if size < 16 or size % 2 or num_frames < 2:
        raise ConfigError(f"demo clips need an even size >= 16 and >= 2 frames, got size={size}, num_frames={num_frames}")
    sizes = {split: n for split, n in (("train", num_train), ("val", num_val)) if n}
    return write_clip_splits(_DemoClips(size, num_frames, num_classes), out_dir, sizes, seed=seed,
                             classes=class_names(num_classes), max_count=max_count, workers=workers,
                             show_progress=show_progress)
