"""``jepa viz features``: the first three principal components of an encoder's token features as colours,
painted where each token lies (clips: the tokens of the middle frame), next to the input. The components
are fitted over all the pictured samples together, so a colour means the same direction in every row;
sources side by side (a pretrained encoder and its random initialisation) each get their own fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from jepa.errors import ConfigError
from jepa.sources import load_source
from jepa.viz.display import input_boxes, input_frames, middle, paint_tokens, require_hooks, tokens_on_frame
from jepa.viz.figure import bare, new_figure, save_png
from jepa.viz.samples import read_samples

CLIP_PERCENT = 1.0
"""Each component is mapped to [0, 1] between its ``CLIP_PERCENT`` and ``100 - CLIP_PERCENT`` percentiles."""


def principal_components(x_ND: np.ndarray, num: int = 3) -> np.ndarray:
    """(N, num) projections of the rows on their first ``num`` principal components (zeros past the rank), each
    signed so that its largest loading is positive (the same features give the same colours)."""
    centred = x_ND - x_ND.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    vt = vt[:num]
    vt = vt * np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])[:, None]
    out = np.zeros((x_ND.shape[0], num))
    out[:, :len(vt)] = centred @ vt.T
    return out


def to_unit(values_NC: np.ndarray) -> np.ndarray:
    """Each column mapped to [0, 1] between its :data:`CLIP_PERCENT` percentiles."""
    lo = np.percentile(values_NC, CLIP_PERCENT, axis=0)
    hi = np.percentile(values_NC, 100 - CLIP_PERCENT, axis=0)
    return ((values_NC - lo) / np.where(hi > lo, hi - lo, 1.0)).clip(0, 1).astype(np.float32)


def token_colours(tokens_BND: np.ndarray, border_N: np.ndarray, foreground: bool) -> np.ndarray:
    """(B, N, 3) colours of the tokens of B inputs from one PCA over all B * N tokens.

    With ``foreground``, the first component splits the tokens: the side that holds most of the tokens on
    the picture's border is background (black), and the colours come from a second PCA over the rest.
    """
    b, n, d = tokens_BND.shape
    flat = tokens_BND.reshape(b * n, d)
    if not foreground:
        return to_unit(principal_components(flat)).reshape(b, n, 3)
    first = principal_components(flat, 1)[:, 0].reshape(b, n)
    if border_N.any() and first[:, border_N].mean() > 0:
        first = -first
    keep = (first > 0).reshape(-1)
    colours = np.zeros((b * n, 3), dtype=np.float32)
    if keep.sum() >= 2:
        colours[keep] = to_unit(principal_components(flat[keep]))
    return colours.reshape(b, n, 3)


@torch.no_grad()
def feature_pictures(src: Any, x: torch.Tensor, *, foreground: bool = False) -> list[np.ndarray]:
    """(H, W, 3) pictures of the token features of each input of the batch ``x`` (``src.modality``'s evaluation
    view) under the encoder of ``src`` (:class:`jepa.sources.EncoderSource`); clips: their middle frame.

    Raises:
        ValueError: the encoder gives another number of tokens than the modality's token grid has.
    """
    modality = src.modality
    frames = input_frames(modality, x[0])
    boxes = input_boxes(modality, x[0], frames)
    tokens = src.encoder(x)
    if tokens.ndim != 3 or tokens.shape[1] != len(boxes):
        raise ConfigError(f"{src.source}: the encoder gives {tuple(tokens.shape)} features, not one token per cell of "
                         f"the modality's {len(boxes)}-token grid; `jepa viz features` needs an encoder of tokens")
    frame = frames.shape[0] // 2
    sel = tokens_on_frame(boxes, frame)
    h, w = frames.shape[1:3]
    shown = boxes[sel]
    border = (shown[:, 2] == 0) | (shown[:, 4] == 0) | (shown[:, 3] == h) | (shown[:, 5] == w)
    colours = token_colours(tokens[:, torch.as_tensor(sel)].float().cpu().numpy(), border, foreground)
    return [paint_tokens(shown, colours[i], frame, h, w) for i in range(x.shape[0])]


def source_label(src: Any) -> str:
    """A column title: what the source is, and its step."""
    if src.kind == "random":
        return f"random init\n{src.description}"
    name = Path(src.source).name or src.source
    step = "" if src.step is None else f", step {src.step}"
    return f"{name} ({src.kind}{step})\n{src.description}"


def features_picture(sources: list[str], data: str, out: Path, *, num: int, foreground: bool = False,
                     which: str | None = None, trust_torchscript: bool = False) -> Path:
    """Write the features picture: one row per sample of ``data``, the input then one column per source."""
    loaded = [load_source(s, which=which, trust_torchscript=trust_torchscript) for s in sources]  # type: ignore[arg-type]
    for src in loaded:
        require_hooks(src.modality, "`jepa viz features`")
    inputs: dict[str, tuple[Any, torch.Tensor]] = {}  # one read per distinct evaluation view
    columns = []
    for src in loaded:
        key = repr(src.modality.cfg)
        if key not in inputs:
            samples = read_samples(data, src.modality, num)
            inputs[key] = (samples, src.modality.eval_batch(samples.items))
        samples, x = inputs[key]
        columns.append((source_label(src), feature_pictures(src, x, foreground=foreground)))
    samples, x = inputs[repr(loaded[0].modality.cfg)]
    rows = x.shape[0]
    fig, axes = new_figure(rows, 1 + len(columns), panel_in=(1.6, 1.6),
                           title=f"token features, first 3 principal components as RGB (fitted over the {rows} "
                                 f"samples together, per encoder){', foreground only' if foreground else ''}; "
                                 f"{samples.source}")
    for r in range(rows):
        picture = middle(input_frames(loaded[0].modality, x[r]))
        axes[r][0].imshow(picture, interpolation="nearest")
        axes[r][0].set_ylabel(samples.label_name(r), fontsize=7)
        for c, (label, pictures) in enumerate(columns, start=1):
            axes[r][c].imshow(pictures[r], interpolation="nearest")
            if r == 0:
                axes[r][c].set_title(label, fontsize=7)
        for ax in axes[r]:
            bare(ax)
    axes[0][0].set_title("input", fontsize=7)
    return save_png(fig, out)
