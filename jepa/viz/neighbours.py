"""``jepa viz neighbours``: validation samples and their k nearest training samples under an encoder's pooled
features (cosine similarity, as the k-NN probe of ``jepa eval``), with class names; a neighbour of the query's
class is framed green, one of another class red."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from jepa.errors import ConfigError
from jepa.eval import open_labelled
from jepa.eval.knn import StreamingKNN
from jepa.eval.reader import PassSpec, align_classes
from jepa.sources import load_source
from jepa.viz.display import input_frames, middle, require_hooks
from jepa.viz.figure import new_figure, save_png

RIGHT, WRONG = "#1a9641", "#d7191c"


def _spread_mask(n: int, count: int) -> torch.Tensor:
    """(n,) bool: ``count`` positions spread evenly over ``range(n)``."""
    keep = torch.zeros(n, dtype=torch.bool)
    keep[torch.linspace(0, n - 1, min(count, n)).round().long()] = True
    return keep


def _one_per_class(labels_N: torch.Tensor, count: int) -> torch.Tensor:
    """(N,) bool: ``count`` samples taken class by class (the first of every class, then the second, ...)."""
    order = torch.argsort(labels_N, stable=True)
    first = torch.searchsorted(labels_N[order], labels_N[order], right=False)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order)) - first  # how many of its class come before it
    keep = torch.zeros(len(labels_N), dtype=torch.bool)
    keep[torch.argsort(rank * (int(labels_N.max()) + 1) + labels_N, stable=True)[:count]] = True
    return keep


@torch.no_grad()
def _pooled(src: Any, x: torch.Tensor) -> torch.Tensor:
    return src.layers(x, 1)[-1].float().mean(dim=1)


@torch.no_grad()
def nearest(src: Any, train: Any, val: Any, *, queries: int, k: int, max_train: int, batch_size: int = 64
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` most cosine-similar training samples of ``queries`` validation samples (both splits scanned).

    Returns:
        ``(query_idx_Q, query_x, neighbour_idx_QK, similarity_QK)``: positions in the validation scan, the
        queries' inputs, positions in the training scan, cosine similarities.
    """
    keep = _one_per_class(val.index.labels_N, queries)
    xs, idxs = zip(*[(x, idx) for x, _, idx in val.passes(PassSpec(batch_size=batch_size, keep_N=keep))])
    query_x, query_idx = torch.cat(xs), torch.cat(idxs)
    knn = StreamingKNN(_pooled(src, query_x), k=k)
    for x, _, idx in train.passes(PassSpec(batch_size=batch_size, keep_N=_spread_mask(train.index.num_samples,
                                                                                     max_train))):
        knn.add(_pooled(src, x), idx)  # the "labels" kept with each neighbour are its positions in the scan
    return query_idx, query_x, knn.top_label_QK, knn.top_sim_QK


def neighbours_picture(source: str, train_data: str, val_data: str, out: Path, *, queries: int, k: int,
                       max_train: int, which: str | None = None, trust_torchscript: bool = False) -> Path:
    """Write the neighbours picture: one row per query, the query then its ``k`` neighbours, best first."""
    for flag, value in (("--queries", queries), ("--k", k), ("--max-train", max_train)):
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    src = load_source(source, which=which, trust_torchscript=trust_torchscript)  # type: ignore[arg-type]
    modality = src.modality
    require_hooks(modality, "`jepa viz neighbours`", ("display_frames",))
    train, val = open_labelled(train_data, modality), open_labelled(val_data, modality)
    train.scan()
    val.scan()
    align_classes(train, val)
    query_idx, query_x, nb_idx, nb_sim = nearest(src, train, val, queries=queries, k=k, max_train=max_train)
    wanted = torch.zeros(train.index.num_samples, dtype=torch.bool)
    wanted[nb_idx.reshape(-1)] = True
    found = {int(i): x_i for x, _, idx in train.passes(PassSpec(batch_size=64, keep_N=wanted))
             for i, x_i in zip(idx, x)}
    classes = train.index.classes

    def name(label: int) -> str:
        return classes[label] if classes and label < len(classes) else str(label)

    rows, cols = len(query_idx), 1 + nb_idx.shape[1]
    fig, axes = new_figure(rows, cols, panel_in=(1.2, 1.35),
                           title=f"{src.description} ({source}): {rows} queries of {val_data} and their {k} nearest "
                                 f"of {min(max_train, train.index.num_samples)} samples of {train_data} (cosine, "
                                 "pooled tokens); green: same class, red: another")
    for r in range(rows):
        q_label = int(val.index.labels_N[query_idx[r]])
        panels = [(query_x[r], f"query: {name(q_label)}", None)]
        for j in range(nb_idx.shape[1]):
            t = int(nb_idx[r, j])
            label = int(train.index.labels_N[t])
            panels.append((found[t], f"{name(label)} {nb_sim[r, j]:.2f}", RIGHT if label == q_label else WRONG))
        for c, (x, title, frame) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(middle(input_frames(modality, x)), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=6)
            for spine in ax.spines.values():
                spine.set_visible(frame is not None)
                if frame is not None:
                    spine.set_edgecolor(frame)
                    spine.set_linewidth(3)
    return save_png(fig, out)
