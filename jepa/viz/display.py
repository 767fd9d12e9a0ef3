"""A modality's inputs and tokens as arrays to draw: its two display hooks, checked, and painting per-token
values onto the picture of an input. No plotting library here."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from jepa.errors import PluginError
from jepa.interfaces import MissingHookError, Modality

DISPLAY_HOOKS = ("display_frames", "token_boxes")
"""The optional :class:`~jepa.interfaces.Modality` hooks every ``jepa viz`` picture of inputs needs."""


def require_hooks(modality: Modality, what: str, hooks: tuple[str, ...] = DISPLAY_HOOKS) -> None:
    """Fail before any work when ``modality`` lacks one of ``hooks`` (it keeps the base class's).

    Raises:
        MissingHookError: naming the modality, the first missing hook and ``what`` needs it.
    """
    for hook in hooks:
        if getattr(type(modality), hook) is getattr(Modality, hook):
            raise MissingHookError(modality.name, hook, what)


def input_frames(modality: Modality, x: Tensor) -> np.ndarray:
    """(F, H, W, 3) float32 in [0, 1]: ``modality.display_frames`` of one input row, checked.

    Raises:
        ValueError: the hook returned another shape (a plugin bug, named).
    """
    frames = modality.display_frames(x)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise PluginError(f"modality {modality.name!r}: display_frames returned shape {tuple(frames.shape)}, "
                         "not (F, H, W, 3); fix the plugin's hook")
    return frames.detach().to("cpu").float().clamp(0, 1).numpy()


def input_boxes(modality: Modality, x: Tensor, frames: np.ndarray) -> np.ndarray:
    """(N, 6) int64 token boxes of one input row (``modality.token_boxes``), checked against its picture.

    Raises:
        ValueError: the boxes are not (N, 6) or fall outside the :func:`input_frames` picture.
    """
    boxes = modality.token_boxes(tuple(x.shape)).detach().to("cpu").long().numpy()
    f, h, w = frames.shape[:3]
    ok = boxes.ndim == 2 and boxes.shape[1] == 6 and len(boxes) > 0
    if ok:
        f0, f1, y0, y1, x0, x1 = boxes.T
        ok = bool(((0 <= f0) & (f0 < f1) & (f1 <= f) & (0 <= y0) & (y0 < y1) & (y1 <= h)
                   & (0 <= x0) & (x0 < x1) & (x1 <= w)).all())
    if not ok:
        raise PluginError(f"modality {modality.name!r}: token_boxes gave {boxes.shape} boxes that are not (N, 6) "
                         f"ranges inside the {f} x {h} x {w} picture of an input of shape {tuple(x.shape)}; fix the "
                         "plugin's hook")
    return boxes


def tokens_on_frame(boxes: np.ndarray, frame: int) -> np.ndarray:
    """Indices of the tokens whose frame range holds ``frame``."""
    return np.nonzero((boxes[:, 0] <= frame) & (frame < boxes[:, 1]))[0]


def paint_tokens(boxes: np.ndarray, values: np.ndarray, frame: int, height: int, width: int,
                 background: float = 0.0) -> np.ndarray:
    """(H, W, C) picture of ``frame``: each token's box on it filled with its row of ``values`` (N, C)."""
    canvas = np.full((height, width, values.shape[1]), background, dtype=np.float32)
    for i in tokens_on_frame(boxes, frame):
        _, _, y0, y1, x0, x1 = boxes[i]
        canvas[y0:y1, x0:x1] = values[i]
    return canvas


def token_map(boxes: np.ndarray, idx: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """(F, H, W) bool: the pixels of the tokens ``idx``."""
    out = np.zeros(shape, dtype=bool)
    for f0, f1, y0, y1, x0, x1 in boxes[np.asarray(idx, dtype=np.int64)]:
        out[f0:f1, y0:y1, x0:x1] = True
    return out


def upscale(picture: np.ndarray, factor: int) -> np.ndarray:
    """Each pixel of the (..., H, W, C) ``picture`` repeated ``factor`` times along H and W (crisp outlines)."""
    if factor <= 1:
        return picture
    return np.repeat(np.repeat(picture, factor, axis=-3), factor, axis=-2)


def display_factor(height: int, width: int, target: int = 128) -> int:
    """The integer upscaling that brings a picture's longer side to at least ``target`` pixels."""
    return max(1, -(-target // max(1, height, width)))


def middle(frames: np.ndarray) -> np.ndarray:
    """The middle frame (H, W, 3) of (F, H, W, 3) frames."""
    return frames[frames.shape[0] // 2]
