"""Frozen-feature evaluation: scan both splits, check memory, then run every requested protocol.

The protocols are declared in :mod:`jepa.eval.protocols` (``docs/eval_protocols.md`` states each
exactly, and which paper protocol it matches); this module knows none of them by name. It asks
each selected protocol what it declares (features, grid, stores, memory needs) and calls its
``run`` in the requested order.

Nothing N x tokens is held unless a protocol stores tokens that fit in host memory: otherwise
tokens live for one batch. Pooled features (N x width) are stored once (in host memory or a
memory-mapped file, ``feature_cache``) when a protocol reads them more than once. With
``low_shot`` every probe is fitted on a seeded, class-balanced fraction of the training labels;
the validation split is always complete.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor

from jepa.data import MANIFEST_NAME, is_local
from jepa.errors import ConfigError, DataError
from jepa.eval.context import EvalRun, PlanInput, Shapes, Splits
from jepa.eval.features import FeatureSpec, PooledStore, autocast_for, fill_pooled, progress_bar
from jepa.eval.folder import FolderData
from jepa.eval.memory import (F32, POOLED_IN_MEMORY_FRACTION, Need, check_fits, device_available_bytes,
                              disk_free_bytes, encoder_forward_bytes, host_available_bytes, place_of)
from jepa.eval.probes import class_balanced_subset
from jepa.eval.protocols import PROTOCOLS, Protocol
from jepa.eval.reader import LabelledData, ShardData, align_classes
from jepa.eval.report import EvalReport, ProbeResult
from jepa.eval.settings import EvalSettings, default_device, parse_protocols
from jepa.host_memory import retain_freed_memory
from jepa.interfaces import Modality
from jepa.sources import EncoderSource

__all__ = ["PROTOCOLS", "EvalSettings", "default_device", "evaluate", "evaluate_shards", "holdout_mask",
           "open_labelled", "parse_protocols"]


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


def _shapes(source: EncoderSource, val: LabelledData, device: torch.device, precision: str) -> Shapes:
    x = val.first_inputs(2)
    with torch.no_grad(), autocast_for(device, precision):
        out = source.layers(x.to(device), 1)[-1]
    params = sum(p.numel() * p.element_size() for p in source.encoder.parameters())
    params += sum(b.numel() * b.element_size() for b in source.encoder.buffers())
    return Shapes(int(out.shape[1]), int(out.shape[2]), source.depth, int(x[0].numel()), params)


def _pooled_store(selected: list[Protocol], settings: EvalSettings, shapes: Shapes) -> FeatureSpec | None:
    """What the pooled store holds: the deepest pooled features any selected protocol reads (every
    pooled protocol scores from the store when there is one), or None when no protocol trains on it."""
    if not any(p.stores_pooled(settings) for p in selected):
        return None
    layers = max((shapes.layers(p.features) for p in selected if p.features.kind == "pooled"), default=1)
    return FeatureSpec("pooled", layers)


def _plan(selected: list[Protocol], plan: PlanInput) -> tuple[list[Need], dict[str, int], str | None]:
    """Every protocol's peak needs, what each place has free, and where pooled features go."""
    settings, shapes = plan.settings, plan.shapes
    device = settings.torch_device
    dev = place_of(device)
    B, T, D = settings.batch_size, shapes.tokens, shapes.dim
    available = {dev: device_available_bytes(device), "host memory": plan.host_bytes}
    encoder = encoder_forward_bytes(shapes.encoder_bytes, B, T, D, shapes.input_numel, plan.cuda)
    loader = 2 * max(1, settings.num_workers) * B * shapes.input_numel * F32
    needs = [Need("the frozen encoder", dev, [("weights and one forward", encoder)], "lower --batch-size"),
             Need("the data loader", "host memory", [("decoded batches in flight", loader)],
                  "lower --batch-size or --num-workers")]
    store_dir = None
    store = _pooled_store(selected, settings, shapes)
    if store is not None:
        n, width = plan.num_train + plan.num_val, shapes.width(store)
        store_bytes = n * width * F32
        if settings.feature_cache == "memory" or (settings.feature_cache == "auto" and
                                                   store_bytes <= POOLED_IN_MEMORY_FRACTION * plan.host_bytes):
            needs.append(Need("stored pooled features", "host memory", [(f"{n} x {width}", store_bytes)],
                              "--feature-cache DIR (a folder on a disk with room) stores them on disk"))
        else:
            store_dir = tempfile.gettempdir() if settings.feature_cache == "auto" else settings.feature_cache
            if not Path(store_dir).is_dir():
                raise ConfigError(f"--feature-cache {store_dir}: no such folder; name an existing folder, 'memory' "
                                 "or 'auto'")
            place = f"disk ({store_dir})"
            available[place] = disk_free_bytes(store_dir)
            needs.append(Need("stored pooled features", place, [(f"{n} x {width}", store_bytes)],
                              "--feature-cache DIR on a disk with more room"))
    for protocol in selected:
        needs.extend(protocol.needs(plan))
    return needs, available, store_dir


def _fill_stores(run: EvalRun, store_dir: str | None, store: FeatureSpec) -> None:
    width, layers = run.shapes.width(store), run.shapes.layers(store)
    run.store_train = PooledStore(run.train_labels.numel(), width, store_dir)
    run.store_val = PooledStore(run.val_labels.numel(), width, store_dir)
    fill_pooled(run.store_val, run.passes(run.val, None), run.source.layers, layers, run.device, run.precision,
                run.progress, "val: pooled features", run.val_labels.numel())
    fill_pooled(run.store_train, run.passes(run.train, run.splits.eligible), run.source.layers, layers,
                run.device, run.precision, run.progress, "train: pooled features", int(run.splits.eligible.sum()))


def evaluate(source: EncoderSource, train: LabelledData, val: LabelledData, settings: EvalSettings) -> EvalReport:
    """Run every protocol of ``settings`` on ``source``'s frozen encoder.

    Steps: scan both splits (labels; a folder's files are checked to decode), number the
    validation labels by the training split's class names, choose the low-shot subset and the
    held-out split, measure the encoder's output on two samples, check that every protocol fits
    in memory (refusing with numbers otherwise), store pooled features (and tokens) when a protocol
    reads them, then train and score the protocols in order.

    Raises:
        ValueError: unreadable or unlabelled data, a bad label, a validation class the training split
            lacks, ``--augment flip`` for a modality without an evaluation augmentation, or a plan that
            does not fit in memory.
    """
    start = time.perf_counter()
    selected = settings.selected()
    _check_augment(train, settings)
    workers = settings.num_workers
    train_index, _ = train.scan(workers), val.scan(workers)
    align_classes(train, val)  # the validation labels in the training split's numbering, by class name
    val_index = val.index
    assert val_index is not None
    num_classes = max(train_index.num_classes, val_index.num_classes)
    eligible = torch.ones(train_index.num_samples, dtype=torch.bool)
    if settings.low_shot is not None:
        eligible = class_balanced_subset(train_index.labels_N, settings.low_shot, settings.seed)
    grids = {p.name: p.grid(settings) for p in selected if p.grid(settings) is not None}
    held = holdout_mask(train_index.labels_N, eligible, settings.holdout, settings.seed) \
        if grids else torch.zeros_like(eligible)
    splits = Splits(eligible, held, eligible & ~held)
    chosen = [name for name, grid in grids.items() if len(grid) > 1]  # type: ignore[arg-type]
    if chosen and not held.any():
        raise DataError(f"no training class has two samples, so nothing can be held out to choose among the heads of "
                         f"{', '.join(chosen)}; use more labels (--low-shot) or one value each for the grid's lrs and wds")
    device = settings.torch_device
    if device.type == "cpu":
        retain_freed_memory()  # the same activations every batch, without page faults (jepa.host_memory)
    source.encoder.to(device)
    shapes = _shapes(source, val, device, settings.autocast)
    plan = PlanInput(settings, shapes, num_classes, int(eligible.sum()), val_index.num_samples, host_available_bytes())
    needs, available, store_dir = _plan(selected, plan)
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
        run = EvalRun(source, train, val, settings, splits, num_classes, shapes, progress)
        try:
            store = _pooled_store(selected, settings, shapes)
            if store is not None:
                t0 = time.perf_counter()
                _fill_stores(run, store_dir, store)
                report.feature_seconds = time.perf_counter() - t0
                report.skipped.update({"train_undecodable": train.skipped_last_pass,
                                       "val_undecodable": val.skipped_last_pass})
            token_users = [p.name for p in selected if p.stores_tokens(plan)]
            if token_users:
                t0 = time.perf_counter()
                run.store_tokens(", ".join(token_users))
                report.feature_seconds += time.perf_counter() - t0
            report.num_train = run.decoded("train", eligible)
            report.num_val = run.decoded("val", torch.ones(val_index.num_samples, dtype=torch.bool))
            for protocol in selected:
                t0 = time.perf_counter()
                out = protocol.run(run)
                report.results.append(ProbeResult(protocol.name, out.accuracy[1], out.accuracy.get(5), out.num_train,
                                                  time.perf_counter() - t0, out.settings, out.grid))
        finally:
            for stored in (run.store_train, run.store_val, run.tokens_train, run.tokens_val):
                if stored is not None:
                    stored.close()
    report.total_seconds = time.perf_counter() - start
    return report


def _check_augment(train: LabelledData, settings: EvalSettings) -> None:
    """``--augment flip`` asks the modality for its evaluation augmentation (``Modality.eval_augment``):
    refuse a modality that has none rather than train unaugmented under that name."""
    modality = train.modality
    if "flip" in settings.augment and isinstance(modality, Modality) and \
            type(modality).eval_augment is Modality.eval_augment:
        raise ConfigError(f"--augment {settings.augment}: modality {modality.name!r} defines no evaluation "
                         "augmentation (Modality.eval_augment); use --augment none or crop")


def open_labelled(spec: str, modality: Modality) -> LabelledData:
    """The reader for what ``--train-data`` / ``--val-data`` name: a folder of class sub-folders
    (:class:`~jepa.eval.folder.FolderData`), or labelled shards (:class:`~jepa.eval.reader.ShardData`: a shard
    folder, a brace pattern, URLs, several joined with ``'::'``).

    Raises:
        ValueError: the path does not exist, or a folder holds neither shards nor class folders.
    """
    path = Path(spec)
    if "::" not in spec and is_local(spec) and path.is_dir():
        entries = [p for p in path.iterdir() if not p.name.startswith(".")]
        if (path / MANIFEST_NAME).is_file() or any(p.is_file() and p.name.endswith(".tar") for p in entries):
            return ShardData(spec, modality)
        suffixes = tuple(modality.file_suffixes()) if modality is not None else ()
        if any(p.is_dir() or p.name.lower().endswith(suffixes) for p in entries):
            return FolderData(spec, modality)
        raise DataError(f"{spec}: a folder with neither shards (*.tar, {MANIFEST_NAME}) nor class sub-folders; "
                         "pass labelled shards (`jepa shards` writes them) or a folder of class sub-folders")
    return ShardData(spec, modality)


def evaluate_shards(source: EncoderSource, train_data: str, val_data: str, settings: EvalSettings) -> EvalReport:
    """:func:`evaluate` on what ``--train-data`` / ``--val-data`` name: labelled shards (folder,
    pattern, URLs) or a folder of class sub-folders, in the modality's evaluation view.

    Raises:
        ValueError: the data do not exist or carry no labels (from :mod:`jepa.eval.reader`).
    """
    return evaluate(source, open_labelled(train_data, source.modality), open_labelled(val_data, source.modality),
                    settings)
