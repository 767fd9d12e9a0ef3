"""Frozen-feature evaluation: scan both splits, check memory, then run every requested protocol.

Protocols (``docs/eval_protocols.md`` states each exactly, and which paper protocol it matches):

``linear``     grid of linear heads on the average over tokens of the last layer, trained by
               minibatch AdamW on the device (cosine schedule), best head chosen on a held-out
               part of the training split;
``linear4``    the same on the average-pooled last 4 layers (all layers of shallower encoders), concatenated;
``attentive``  grid of attentive probes (cross-attention pooler with a learnable query,
               ``attentive_depth`` blocks) on the last layer's tokens: without augmentation and
               when they fit in host memory the tokens are encoded once and stored, otherwise
               the encoder runs inside the training loop every epoch;
``knn``        weighted k-nearest neighbours under cosine similarity, streamed on the device;
``logreg``     full-batch multinomial logistic regression by L-BFGS on standardised features
               (the small-set protocol: every training feature is held in host memory);
``logreg4``    the same on the average-pooled last 4 layers.

Nothing N x tokens is ever held: tokens live for one batch. Pooled features (N x width) are
stored once (in host memory or a memory-mapped file, ``feature_cache``) when a protocol reads
them more than once. With ``low_shot`` every probe is fitted on a seeded, class-balanced
fraction of the training labels; the validation split is always complete.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from jepa.eval.features import (FeatureSpec, PooledStore, autocast_for, encoder_features, fill_pooled, iterate_rows,
                                progress_bar)
from jepa.eval.grid import Grid, choose, grid_rows
from jepa.eval.heads import AttentiveGrid, LinearGrid
from jepa.eval.knn import StreamingKNN
from jepa.eval.memory import (F32, Need, attentive_step_bytes, check_fits, device_available_bytes, disk_free_bytes,
                              encoder_forward_bytes, host_available_bytes, knn_bytes, linear_step_bytes, place_of)
from jepa.eval.probes import class_balanced_subset, linear_probe_scores, topk_accuracy
from jepa.eval.reader import AUGMENTS, LabelledData, PassSpec, align_classes, open_labelled
from jepa.eval.report import EvalReport, ProbeResult
from jepa.eval.training import score_grid, train_grid
from jepa.host_memory import retain_freed_memory
from jepa.sources import EncoderSource

PROTOCOLS: tuple[str, ...] = ("linear", "linear4", "attentive", "knn", "logreg", "logreg4")
GRID_PROTOCOLS = ("linear", "linear4", "attentive")
DEFAULT_EPOCHS = {"linear": 100, "linear4": 100, "attentive": 20}
LINEAR_LRS: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
LINEAR_WDS: tuple[float, ...] = (0.0, 1e-4, 1e-3)
ATTENTIVE_LRS: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2)
ATTENTIVE_WDS: tuple[float, ...] = (1e-2, 1e-1, 4e-1)
POOLED_IN_MEMORY_FRACTION = 0.25
"""``feature_cache="auto"`` keeps pooled features in host memory up to this share of the free memory, else on disk."""
_SEED_OF = {p: i for i, p in enumerate(PROTOCOLS)}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class EvalSettings:
    """What ``jepa eval`` runs, with the defaults of the command line (``jepa eval --help``).

    Attributes:
        protocols: subset of :data:`PROTOCOLS`, run in the given order.
        k, temperature: the k-NN probe.
        low_shot: fraction of each class's training labels to use, or None for all.
        epochs: epochs of the grid probes (None: ``DEFAULT_EPOCHS`` per protocol).
        lbfgs_iters: L-BFGS iterations of ``logreg`` / ``logreg4``.
        batch_size: samples per encoder forward and per optimiser step.
        linear_lrs, linear_wds: the grid of ``linear`` / ``linear4`` (every pair is one head).
        attentive_lrs, attentive_wds: the grid of ``attentive``.
        attentive_depth: blocks of the attentive probe (``depth - 1`` self-attention, then cross-attention).
        attentive_heads: attention heads of the attentive probe (None: width / 64, at least 1).
        warmup_epochs: linear learning-rate warmup of the grid probes.
        holdout: fraction of the (low-shot) training split held out to choose the best head.
        augment: training view of the streamed probes (see :data:`~jepa.eval.reader.AUGMENTS`);
            with ``none``, ``linear`` / ``linear4`` train on stored features.
        feature_cache: where pooled features are stored: ``auto``, ``memory`` or a folder.
        shuffle_buffer: raw samples per loader worker buffered for shuffling shards.
        seed: seeds subsets, splits, initialisation, shuffling and augmentation.
        num_workers: data-loader processes.
        device: where the encoder and the probes run (None: ``cuda`` if available, else ``cpu``).
        precision: ``bf16`` autocast (CUDA only), ``fp32``, or ``auto`` (bf16 on CUDA, fp32 on CPU).
    """

    protocols: tuple[str, ...] = ("linear", "knn")
    k: int = 20
    temperature: float = 0.07
    low_shot: float | None = None
    epochs: int | None = None
    lbfgs_iters: int = 100
    batch_size: int = 64
    linear_lrs: tuple[float, ...] = LINEAR_LRS
    linear_wds: tuple[float, ...] = LINEAR_WDS
    attentive_lrs: tuple[float, ...] = ATTENTIVE_LRS
    attentive_wds: tuple[float, ...] = ATTENTIVE_WDS
    attentive_depth: int = 1
    attentive_heads: int | None = None
    warmup_epochs: float = 0.0
    holdout: float = 0.1
    augment: str = "none"
    feature_cache: str = "auto"
    shuffle_buffer: int = 1000
    seed: int = 0
    num_workers: int = 0
    device: str | None = None
    precision: str = "auto"
    linear_grid: Grid = field(init=False)
    attentive_grid: Grid = field(init=False)

    def __post_init__(self) -> None:
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown or not self.protocols:
            raise ValueError(f"--protocol: unknown {', '.join(map(repr, unknown)) or 'empty list'}; "
                             f"choose from {', '.join(PROTOCOLS)} (comma-separated)")
        checks = [
            (self.k >= 1, f"--k must be >= 1, got {self.k}"),
            (self.temperature > 0, f"--temperature must be > 0, got {self.temperature}"),
            (self.low_shot is None or 0 < self.low_shot <= 1,
             f"--low-shot must be a fraction in (0, 1], got {self.low_shot}; e.g. 0.01 for 1 % of labels"),
            (self.epochs is None or self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.lbfgs_iters >= 1, f"--lbfgs-iters must be >= 1, got {self.lbfgs_iters}"),
            (self.batch_size >= 2, f"--batch-size must be >= 2, got {self.batch_size}"),
            (self.attentive_depth >= 1, f"--attentive-depth must be >= 1, got {self.attentive_depth}"),
            (self.attentive_heads is None or self.attentive_heads >= 1,
             f"--attentive-heads must be >= 1, got {self.attentive_heads}"),
            (self.warmup_epochs >= 0, f"--warmup-epochs must be >= 0, got {self.warmup_epochs}"),
            (0 <= self.holdout < 1, f"--holdout must be a fraction in [0, 1), got {self.holdout}"),
            (self.augment in AUGMENTS, f"--augment {self.augment!r}: choose from {', '.join(AUGMENTS)}"),
            (self.shuffle_buffer >= 1, f"--shuffle-buffer must be >= 1, got {self.shuffle_buffer}"),
            (self.num_workers >= 0, f"--num-workers must be >= 0, got {self.num_workers}"),
            (self.precision in ("auto", "bf16", "fp32"), f"--precision {self.precision!r}: choose auto, bf16 or fp32"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.linear_grid = Grid(tuple(self.linear_lrs), tuple(self.linear_wds))
        self.attentive_grid = Grid(tuple(self.attentive_lrs), tuple(self.attentive_wds))
        for protocol, grid, flag in (("linear", self.linear_grid, "--linear"), ("linear4", self.linear_grid, "--linear"),
                                     ("attentive", self.attentive_grid, "--attentive")):
            if protocol in self.protocols and len(grid) > 1 and self.holdout == 0:
                raise ValueError(f"--holdout 0 leaves no held-out split to choose among the {len(grid)} heads of "
                                 f"{protocol}; keep --holdout > 0 (default 0.1) or give one value to {flag}-lrs "
                                 f"and {flag}-wds")
        if self.device is None:
            self.device = default_device()
        try:
            device = torch.device(self.device)
        except RuntimeError as exc:
            raise ValueError(f"--device {self.device!r} is not a device name; use cpu, cuda or cuda:N") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {self.device!r}, but torch sees no CUDA device here; use --device cpu")
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"--device {self.device!r}: evaluation runs on cpu or cuda")

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)  # type: ignore[arg-type]

    @property
    def autocast(self) -> str:
        """The precision actually used: ``bf16`` only on CUDA."""
        if self.precision == "auto":
            return "bf16" if self.torch_device.type == "cuda" else "fp32"
        return self.precision if self.torch_device.type == "cuda" else "fp32"

    def epochs_for(self, protocol: str) -> int:
        return self.epochs if self.epochs is not None else DEFAULT_EPOCHS[protocol]


def parse_protocols(text: str) -> tuple[str, ...]:
    """``"linear,knn"`` -> ``("linear", "knn")`` (validated by :class:`EvalSettings`)."""
    return tuple(p.strip() for p in text.split(",") if p.strip())


# --------------------------------------------------------------------------- splits and shapes


def holdout_mask(labels_N: Tensor, eligible_N: Tensor, fraction: float, seed: int) -> Tensor:
    """(N,) bool: a seeded, class-stratified ``fraction`` of the eligible samples: per class
    ``round(fraction * count)``, at least one, and never the class's last training sample (a
    class of one sample is never held out)."""
    held = torch.zeros_like(eligible_N)
    if fraction <= 0:
        return held
    idx = eligible_N.nonzero().flatten()
    labels = labels_N[idx]
    counts = torch.bincount(labels)
    n_hold = torch.minimum((counts.double() * fraction).round().long().clamp_min(1), (counts - 1).clamp_min(0))
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(idx.numel(), generator=gen)
    order = order[labels[order].argsort(stable=True)]  # grouped by class, random within a class
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(idx.numel()) - starts[labels[order]]
    held[idx[order[rank < n_hold[labels[order]]]]] = True
    return held


@dataclass
class _Splits:
    """Which training samples each protocol uses (all (N,) bool over the training scan)."""

    eligible: Tensor  # after low-shot subsetting
    held: Tensor  # held out for choosing among heads
    fit: Tensor  # eligible and not held out

    @property
    def num_fit(self) -> int:
        return int(self.fit.sum())


@dataclass
class _Shapes:
    tokens: int
    dim: int
    depth: int
    input_numel: int
    encoder_bytes: int


def _shapes(source: EncoderSource, val: LabelledData, device: torch.device, precision: str) -> _Shapes:
    x = val.first_inputs(2)
    with torch.no_grad(), autocast_for(device, precision):
        out = source.layers(x.to(device), 1)[-1]
    params = sum(p.numel() * p.element_size() for p in source.encoder.parameters())
    params += sum(b.numel() * b.element_size() for b in source.encoder.buffers())
    return _Shapes(int(out.shape[1]), int(out.shape[2]), source.depth, int(x[0].numel()), params)


def _attn_heads(settings: EvalSettings, dim: int) -> int:
    if settings.attentive_heads is not None:
        if dim % settings.attentive_heads:
            raise ValueError(f"--attentive-heads {settings.attentive_heads} does not divide the token width {dim}; "
                             "pick a divisor")
        return settings.attentive_heads
    heads = max(1, dim // 64)
    while dim % heads:
        heads -= 1
    return heads


def _pooled_layers(settings: EvalSettings, depth: int) -> int:
    """Layers the pooled store holds: 4 (or the depth) when a ``*4`` protocol reads it, else 1."""
    fourfold = any(p in settings.protocols for p in ("linear4", "logreg4"))
    return min(4, depth) if fourfold else 1


def _uses_store(settings: EvalSettings) -> bool:
    stored = ("knn", "logreg", "logreg4") + (("linear", "linear4") if settings.augment == "none" else ())
    return any(p in settings.protocols for p in stored)


def _tokens_in_memory(settings: EvalSettings, n: int, tokens: int, dim: int, host_bytes: int) -> bool:
    """Whether ``attentive`` encodes every sample once and trains on the stored tokens: only without
    augmentation (the view is the same every epoch), with ``--feature-cache auto`` or ``memory``, and
    (for ``auto``) when the tokens of both splits take at most :data:`POOLED_IN_MEMORY_FRACTION` of the
    free host memory. Otherwise the encoder runs inside the training loop every epoch."""
    if "attentive" not in settings.protocols or settings.augment != "none":
        return False
    if settings.feature_cache == "memory":
        return True
    return settings.feature_cache == "auto" and n * tokens * dim * F32 <= POOLED_IN_MEMORY_FRACTION * host_bytes


# --------------------------------------------------------------------------- the memory plan


def _plan(settings: EvalSettings, shapes: _Shapes, num_classes: int, n_train: int, n_val: int,
          n_fit: int) -> tuple[list[Need], dict[str, int], str | None]:
    """Every protocol's peak needs, what each place has free, and where pooled features go."""
    device = settings.torch_device
    cuda = device.type == "cuda"
    dev = place_of(device)
    B, T, D = settings.batch_size, shapes.tokens, shapes.dim
    available = {dev: device_available_bytes(device), "host memory": host_available_bytes()}
    encoder = encoder_forward_bytes(shapes.encoder_bytes, B, T, D, shapes.input_numel, cuda)
    loader = 2 * max(1, settings.num_workers) * B * shapes.input_numel * F32
    needs = [Need("the frozen encoder", dev, [("weights and one forward", encoder)], "lower --batch-size"),
             Need("the data loader", "host memory", [("decoded batches in flight", loader)],
                  "lower --batch-size or --num-workers")]
    store_dir = None
    if _uses_store(settings):
        width = _pooled_layers(settings, shapes.depth) * D
        store_bytes = (n_train + n_val) * width * F32
        if settings.feature_cache == "memory" or (settings.feature_cache == "auto" and
                                                   store_bytes <= POOLED_IN_MEMORY_FRACTION * available["host memory"]):
            needs.append(Need("stored pooled features", "host memory", [(f"{n_train + n_val} x {width}", store_bytes)],
                              "--feature-cache DIR (a folder on a disk with room) stores them on disk"))
        else:
            store_dir = tempfile.gettempdir() if settings.feature_cache == "auto" else settings.feature_cache
            if not Path(store_dir).is_dir():
                raise ValueError(f"--feature-cache {store_dir}: no such folder; name an existing folder, 'memory' "
                                 "or 'auto'")
            place = f"disk ({store_dir})"
            available[place] = disk_free_bytes(store_dir)
            needs.append(Need("stored pooled features", place, [(f"{n_train + n_val} x {width}", store_bytes)],
                              "--feature-cache DIR on a disk with more room"))
        if "knn" in settings.protocols:
            needs.append(Need("knn", dev, [("queries, top-k and similarity blocks",
                                            knn_bytes(n_val, D, settings.k, max(B, 8192))),
                                           (f"votes, {n_val} x {num_classes} classes", n_val * num_classes * F32)],
                              "lower --k; or --device cpu"))
        for p in ("logreg", "logreg4"):
            if p in settings.protocols:
                w = (4 if p == "logreg4" else 1) * D
                needs.append(Need(p, "host memory", [("full-batch features, copies and gradients",
                                                      4 * n_train * w * F32 + n_val * w * F32)],
                                  f"use the streaming protocol {'linear4' if p == 'logreg4' else 'linear'} instead"))
    for p in ("linear", "linear4"):
        if p in settings.protocols:
            w = (min(4, shapes.depth) if p == "linear4" else 1) * D
            state, acts = linear_step_bytes(len(settings.linear_grid), B, w, num_classes)
            needs.append(Need(p, dev, [(f"{len(settings.linear_grid)} heads with AdamW state", state),
                                       ("one step", acts)], "lower --batch-size or the grid (--linear-lrs, --linear-wds)"))
    if _tokens_in_memory(settings, n_train + n_val, T, D, available["host memory"]):
        needs.append(Need("stored tokens (attentive)", "host memory",
                          [(f"{n_train + n_val} x {T} x {D}", (n_train + n_val) * T * D * F32)],
                          "--feature-cache DIR streams the encoder every epoch instead"))
    if "attentive" in settings.protocols:
        G = len(settings.attentive_grid)
        state, acts = attentive_step_bytes(G, B, T, D, num_classes, settings.attentive_depth,
                                           _attn_heads(settings, D), cuda)
        needs.append(Need("attentive", dev, [(f"{G} heads with AdamW state", state), ("one step", acts)],
                          "lower --batch-size, --attentive-depth or the grid (--attentive-lrs, --attentive-wds)"))
    return needs, available, store_dir


# --------------------------------------------------------------------------- evaluation


class _Run:
    """State shared by the protocols of one evaluation (the flat steps live in :func:`evaluate`)."""

    def __init__(self, source: EncoderSource, train: LabelledData, val: LabelledData, settings: EvalSettings,
                 splits: _Splits, num_classes: int, progress):
        self.source, self.train, self.val, self.settings = source, train, val, settings
        self.splits, self.num_classes, self.progress = splits, num_classes, progress
        self.device, self.precision = settings.torch_device, settings.autocast
        self.ks = (1, 5) if num_classes >= 10 else (1,)
        assert train.index is not None and val.index is not None
        self.train_labels, self.val_labels = train.index.labels_N, val.index.labels_N
        self.store_train: PooledStore | None = None
        self.store_val: PooledStore | None = None
        self.tokens_train: PooledStore | None = None  # attentive: (N, T * D) last-layer tokens, when stored
        self.tokens_val: PooledStore | None = None
        self.token_dim = 0

    def passes(self, data: LabelledData, keep: Tensor | None, *, epoch: int = 0, shuffle_seed: int | None = None,
               augment: str = "none"):
        spec = PassSpec(self.settings.batch_size, keep, shuffle_seed, epoch, augment, self.settings.shuffle_buffer)
        return data.passes(spec, self.settings.num_workers)

    def encoded(self, data: LabelledData, keep: Tensor | None, spec: FeatureSpec, description: str, *,
                epoch: int = 0, shuffle_seed: int | None = None, augment: str = "none", total: int | None = None):
        """``(probe inputs on the device, labels on the device)`` of one pass through the encoder."""
        task = None if description == "" else self.progress.add_task(description, total=total)
        for x, y, _ in self.passes(data, keep, epoch=epoch, shuffle_seed=shuffle_seed, augment=augment):
            yield encoder_features(self.source.layers, x, spec, self.device, self.precision), y.to(self.device)
            if task is not None:
                self.progress.advance(task, y.shape[0])

    def store_tokens(self, shapes: _Shapes) -> None:
        """Encode the eligible training samples and the validation split once and keep their
        last-layer tokens, flattened to ``T * D`` columns, in host-memory stores."""
        spec = FeatureSpec("tokens")
        self.token_dim = shapes.dim
        for split, data, keep, labels in (("train", self.train, self.splits.eligible, self.train_labels),
                                          ("val", self.val, None, self.val_labels)):
            store = PooledStore(labels.numel(), shapes.tokens * shapes.dim)
            setattr(self, f"tokens_{split}", store)
            task = self.progress.add_task(f"attentive: {split} tokens",
                                          total=labels.numel() if keep is None else int(keep.sum()))
            for x, y, idx in self.passes(data, keep):
                store.write(idx, encoder_features(self.source.layers, x, spec, self.device, self.precision).flatten(1))
                self.progress.advance(task, y.shape[0])

    def decoded(self, split: str, keep: Tensor) -> int:
        """Samples of ``keep`` that a probe reads: with features or tokens stored, those that decoded
        (an undecodable sample leaves its row unfilled and out of every probe); else all of them."""
        for store in (getattr(self, f"store_{split}"), getattr(self, f"tokens_{split}")):
            if store is not None:
                return int((keep & store.filled_N).sum())
        return int(keep.sum())

    def stored_tokens(self, split: str, keep: Tensor | None, generator: torch.Generator | None = None):
        """Batches ``(tokens_BTD, labels_B)`` of the stored tokens, on the device, shuffled when
        ``generator`` is given."""
        store = self.tokens_train if split == "train" else self.tokens_val
        assert store is not None
        labels = self.train_labels if split == "train" else self.val_labels
        keep = torch.ones_like(store.filled_N) if keep is None else keep
        for feats, y in self.stored(store, labels, keep, slice(None), generator):
            yield feats.view(feats.shape[0], -1, self.token_dim), y

    def stored(self, store: PooledStore, labels_N: Tensor, keep: Tensor, columns: slice, generator=None):
        idx = (keep & store.filled_N).nonzero().flatten()
        for rows, feats in iterate_rows(store, idx, self.settings.batch_size, columns, generator):
            yield feats.to(self.device, non_blocking=True), labels_N[rows].to(self.device, non_blocking=True)


def _fill_stores(run: _Run, store_dir: str | None, num_layers: int, shapes: _Shapes) -> None:
    width = num_layers * shapes.dim
    run.store_train = PooledStore(run.train_labels.numel(), width, store_dir)
    run.store_val = PooledStore(run.val_labels.numel(), width, store_dir)
    fill_pooled(run.store_val, run.passes(run.val, None), run.source.layers, num_layers, run.device, run.precision,
                run.progress, "val: pooled features", run.val_labels.numel())
    fill_pooled(run.store_train, run.passes(run.train, run.splits.eligible), run.source.layers, num_layers,
                run.device, run.precision, run.progress, "train: pooled features", int(run.splits.eligible.sum()))


def _columns(protocol: str, run: _Run, dim: int) -> slice:
    """The store's columns a protocol reads: the last layer, or all stored layers."""
    return slice(None) if protocol.endswith("4") else slice(run.store_train.width - dim, None)  # type: ignore[union-attr]


def _run_knn(run: _Run, dim: int) -> tuple[Tensor, dict]:
    assert run.store_train is not None and run.store_val is not None
    val_idx = run.store_val.filled_N.nonzero().flatten()
    cols = _columns("knn", run, dim)
    knn = StreamingKNN(run.store_val.rows(val_idx, cols).to(run.device), run.settings.k, run.settings.temperature)
    for feats, y in run.stored(run.store_train, run.train_labels, run.splits.eligible, cols):
        knn.add(feats, y)
    scores = knn.scores(run.num_classes)
    k = min(run.settings.k, knn.seen)
    return topk_accuracy(scores.cpu(), run.val_labels[val_idx], run.ks), {"k": k, "T": run.settings.temperature}


def _run_logreg(protocol: str, run: _Run, dim: int) -> tuple[dict, dict]:
    assert run.store_train is not None and run.store_val is not None
    cols = _columns(protocol, run, dim)
    train_idx = (run.splits.eligible & run.store_train.filled_N).nonzero().flatten()
    val_idx = run.store_val.filled_N.nonzero().flatten()
    scores, wd = linear_probe_scores(run.store_train.rows(train_idx, cols), run.train_labels[train_idx],
                                     run.store_val.rows(val_idx, cols), run.num_classes,
                                     max_iter=run.settings.lbfgs_iters, seed=run.settings.seed)
    width = run.store_train.width if cols == slice(None) else dim
    info = {"features": width, "lbfgs_iters": run.settings.lbfgs_iters, "wd": wd}
    return topk_accuracy(scores, run.val_labels[val_idx], run.ks), info


def _steps_per_epoch(run: _Run) -> int:
    workers = run.settings.num_workers
    return math.ceil(run.splits.num_fit / run.settings.batch_size) + max(0, workers - 1)


def _run_grid(protocol: str, run: _Run, shapes: _Shapes) -> tuple[dict, dict, list[dict]]:
    """Train, choose on the held-out split, score on validation: ``linear``, ``linear4``, ``attentive``."""
    from jepa.data import derive_seed

    s = run.settings
    epochs = s.epochs_for(protocol)
    seed = derive_seed(s.seed, _SEED_OF[protocol])
    gen = torch.Generator().manual_seed(seed)
    from_store = protocol != "attentive" and s.augment == "none"
    if protocol == "attentive":
        grid = s.attentive_grid
        spec = FeatureSpec("tokens")
        heads = AttentiveGrid(len(grid), shapes.dim, run.num_classes, attn_heads=_attn_heads(s, shapes.dim),
                              depth=s.attentive_depth, generator=gen)
        info: dict = {"depth": s.attentive_depth, "attn_heads": heads.attn_heads}
    else:
        grid = s.linear_grid
        layers = min(4, shapes.depth) if protocol == "linear4" else 1
        spec = FeatureSpec("pooled", layers)
        heads = LinearGrid(len(grid), layers * shapes.dim, run.num_classes)
        info = {"layers": layers, "features": layers * shapes.dim}
    heads.to(run.device)
    cols = _columns(protocol, run, shapes.dim) if from_store else slice(None)
    tokens_stored = protocol == "attentive" and run.tokens_train is not None
    if tokens_stored:
        info["stored_tokens"] = True

    def train_feed(epoch: int):
        if tokens_stored:
            return run.stored_tokens("train", run.splits.fit, torch.Generator().manual_seed(derive_seed(seed, epoch)))
        if from_store:
            assert run.store_train is not None
            return run.stored(run.store_train, run.train_labels, run.splits.fit, cols,
                              torch.Generator().manual_seed(derive_seed(seed, epoch)))
        return run.encoded(run.train, run.splits.fit, spec, "", epoch=epoch, shuffle_seed=seed, augment=s.augment)

    name = f"{protocol} ({len(grid)} heads)"
    train_grid(heads, grid, train_feed, epochs=epochs, steps_per_epoch=_steps_per_epoch(run),
               warmup_epochs=s.warmup_epochs, device=run.device, precision=run.precision, progress=run.progress,
               description=name)
    stored_eval = protocol != "attentive" and run.store_train is not None
    if tokens_stored:
        held, val = run.stored_tokens("train", run.splits.held), run.stored_tokens("val", None)
    elif stored_eval:
        assert run.store_train is not None and run.store_val is not None
        held = run.stored(run.store_train, run.train_labels, run.splits.held, cols)
        val = run.stored(run.store_val, run.val_labels, torch.ones_like(run.store_val.filled_N), cols)
    else:
        held = run.encoded(run.train, run.splits.held, spec, f"{protocol}: held-out", total=int(run.splits.held.sum()))
        val = run.encoded(run.val, None, spec, f"{protocol}: val", total=run.val_labels.numel())
    holdout = score_grid(heads, held, run.ks, run.device, run.precision) if run.splits.held.any() else None
    scores = score_grid(heads, val, run.ks, run.device, run.precision)
    best = choose(holdout)
    lr, wd = grid.pairs()[best]
    acc = {k: scores[f"top{k}"][best] for k in run.ks}
    info.update({"lr": lr, "wd": wd, "epochs": epochs, "batch": s.batch_size, "augment": s.augment,
                 "heads": len(grid), "holdout": s.holdout})
    return acc, info, grid_rows(grid, holdout, scores)


def evaluate(source: EncoderSource, train: LabelledData, val: LabelledData, settings: EvalSettings) -> EvalReport:
    """Run every protocol of ``settings`` on ``source``'s frozen encoder.

    Steps: scan both splits (labels; a folder's files are checked to decode), number the
    validation labels by the training split's class names, choose the low-shot subset and the
    held-out split, measure the encoder's output on two samples, check that every protocol fits
    in memory (refusing with numbers otherwise), store pooled features when a protocol reads
    them, then train and score the protocols in order.

    Raises:
        ValueError: unreadable or unlabelled data, a bad label, a validation class the training split
            lacks, or a plan that does not fit in memory.
    """
    start = time.perf_counter()
    workers = settings.num_workers
    train_index, _ = train.scan(workers), val.scan(workers)
    align_classes(train, val)  # the validation labels in the training split's numbering, by class name
    val_index = val.index
    assert val_index is not None
    num_classes = max(train_index.num_classes, val_index.num_classes)
    eligible = torch.ones(train_index.num_samples, dtype=torch.bool)
    if settings.low_shot is not None:
        eligible = class_balanced_subset(train_index.labels_N, settings.low_shot, settings.seed)
    held = holdout_mask(train_index.labels_N, eligible, settings.holdout, settings.seed) \
        if any(p in settings.protocols for p in GRID_PROTOCOLS) else torch.zeros_like(eligible)
    splits = _Splits(eligible, held, eligible & ~held)
    grids = [p for p in settings.protocols if p in GRID_PROTOCOLS and
             len(settings.attentive_grid if p == "attentive" else settings.linear_grid) > 1]
    if grids and not held.any():
        raise ValueError(f"no training class has two samples, so nothing can be held out to choose among the heads of "
                         f"{', '.join(grids)}; use more labels (--low-shot) or one value each for the grid's lrs and wds")
    device = settings.torch_device
    if device.type == "cpu":
        retain_freed_memory()  # the same activations every batch, without page faults (jepa.host_memory)
    source.encoder.to(device)
    shapes = _shapes(source, val, device, settings.autocast)
    needs, available, store_dir = _plan(settings, shapes, num_classes, int(eligible.sum()), val_index.num_samples,
                                        splits.num_fit)
    check_fits(needs, available)
    counts = torch.bincount(val_index.labels_N, minlength=num_classes)
    report = EvalReport(
        source=source.source, source_kind=source.kind, model=source.description, step=source.step,
        encoder=source.which, num_classes=num_classes, num_train=int(eligible.sum()), num_val=val_index.num_samples,
        low_shot=settings.low_shot, feature_seconds=0.0, chance_top1=counts.max().item() / val_index.num_samples,
        train_data=train.spec, val_data=val.spec, device=str(device), precision=settings.autocast,
        tokens=shapes.tokens, width=shapes.dim,
        memory_plan=[{"what": n.what, "place": n.place, "bytes": n.total} for n in needs],
        skipped={"train_files": len(train_index.skipped), "val_files": len(val_index.skipped)},
    )
    with progress_bar() as progress:
        run = _Run(source, train, val, settings, splits, num_classes, progress)
        try:
            if _uses_store(settings):
                t0 = time.perf_counter()
                _fill_stores(run, store_dir, _pooled_layers(settings, shapes.depth), shapes)
                report.feature_seconds = time.perf_counter() - t0
                report.skipped.update({"train_undecodable": train.skipped_last_pass,
                                       "val_undecodable": val.skipped_last_pass})
            if _tokens_in_memory(settings, int(eligible.sum()) + val_index.num_samples, shapes.tokens, shapes.dim,
                                 available["host memory"]):
                t0 = time.perf_counter()
                run.store_tokens(shapes)
                report.feature_seconds += time.perf_counter() - t0
            report.num_train = run.decoded("train", eligible)
            report.num_val = run.decoded("val", torch.ones(val_index.num_samples, dtype=torch.bool))
            for protocol in settings.protocols:
                t0 = time.perf_counter()
                rows: list[dict] = []
                if protocol == "knn":
                    acc, info = _run_knn(run, shapes.dim)
                    num = run.decoded("train", eligible)
                elif protocol in ("logreg", "logreg4"):
                    acc, info = _run_logreg(protocol, run, shapes.dim)
                    num = run.decoded("train", eligible)
                else:
                    acc, info, rows = _run_grid(protocol, run, shapes)
                    num = run.decoded("train", splits.fit)
                report.results.append(ProbeResult(protocol, acc[1], acc.get(5), num, time.perf_counter() - t0,
                                                  info, rows))
        finally:
            for store in (run.store_train, run.store_val, run.tokens_train, run.tokens_val):
                if store is not None:
                    store.close()
    report.total_seconds = time.perf_counter() - start
    return report


def evaluate_shards(source: EncoderSource, train_data: str, val_data: str, settings: EvalSettings) -> EvalReport:
    """:func:`evaluate` on what ``--train-data`` / ``--val-data`` name: labelled shards (folder,
    pattern, URLs) or a folder of class sub-folders, in the modality's evaluation view.

    Raises:
        ValueError: the data do not exist or carry no labels (from :mod:`jepa.eval.reader`).
    """
    return evaluate(source, open_labelled(train_data, source.modality), open_labelled(val_data, source.modality),
                    settings)
