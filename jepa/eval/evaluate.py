"""Frozen-feature evaluation: encode both splits once, then fit and score every requested probe.

Protocols (the paper evaluates the target encoder):

``linear``     linear classifier (multinomial logistic regression, L-BFGS, L2 strength picked
               on a hold-out of the training split) on the standardised, average-pooled last layer;
``linear4``    the same on the last 4 layers (all layers of shallower encoders), each
               average-pooled, concatenated (the paper's layers and pooling, not its training protocol);
``knn``        weighted k-nearest neighbours under cosine similarity (k, temperature);
``attentive``  one learned query cross-attending over the frozen patch tokens + linear head.

With ``low_shot`` every probe is fitted on a seeded, class-balanced fraction of the training
labels; the validation split is always complete.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor

from jepa.eval.features import Features, extract_features, progress_bar
from jepa.eval.probes import attentive_probe_scores, knn_scores, linear_probe_scores, low_shot_indices, topk_accuracy
from jepa.eval.report import EvalReport, ProbeResult
from jepa.sources import EncoderSource

PROTOCOLS: tuple[str, ...] = ("linear", "linear4", "knn", "attentive")
DEFAULT_EPOCHS = {"linear": 100, "linear4": 100, "attentive": 20}


@dataclass
class EvalSettings:
    """What ``jepa eval`` runs, with the defaults of the command line.

    Attributes:
        protocols: subset of :data:`PROTOCOLS`, run in the given order.
        k: neighbours of the k-NN probe.
        temperature: k-NN vote temperature.
        low_shot: fraction of each class's training labels to use, or None for all.
        epochs: L-BFGS iterations of the linear probes (full batch: about one pass each) and
            AdamW epochs of the attentive probe (None: per-protocol default, ``DEFAULT_EPOCHS``;
            the attentive probe runs at least ``MIN_ATTENTIVE_STEPS`` steps).
        batch_size: images per encoder forward while extracting features.
        probe_batch_size: samples per attentive-probe optimiser step.
        lr: peak AdamW learning rate of the attentive probe.
        seed: seeds the low-shot subset and the probes' initialisation and shuffling.
        num_workers: data-loader processes while reading shards.
        device: where the encoder runs (``cpu``, ``cuda``, ``cuda:1``); probes run on the CPU.
    """

    protocols: tuple[str, ...] = ("linear", "knn")
    k: int = 20
    temperature: float = 0.07
    low_shot: float | None = None
    epochs: int | None = None
    batch_size: int = 64
    probe_batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    num_workers: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown or not self.protocols:
            raise ValueError(f"--protocol: unknown {', '.join(map(repr, unknown)) or 'empty list'}; "
                             f"choose from {', '.join(PROTOCOLS)} (comma-separated)")
        if self.k < 1:
            raise ValueError(f"--k must be >= 1, got {self.k}")
        if self.low_shot is not None and not 0 < self.low_shot <= 1:
            raise ValueError(f"--low-shot must be a fraction in (0, 1], got {self.low_shot}; e.g. 0.01 for 1 % of labels")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        try:
            device = torch.device(self.device)
        except RuntimeError as exc:
            raise ValueError(f"--device {self.device!r} is not a device name; use cpu, cuda or cuda:N") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {self.device!r}, but torch sees no CUDA device here; use --device cpu")

    def epochs_for(self, protocol: str) -> int:
        return self.epochs if self.epochs is not None else DEFAULT_EPOCHS[protocol]


def parse_protocols(text: str) -> tuple[str, ...]:
    """``"linear,knn"`` -> ``("linear", "knn")`` (validated by :class:`EvalSettings`)."""
    return tuple(p.strip() for p in text.split(",") if p.strip())


def run_probe(protocol: str, train: Features, val: Features, num_classes: int, settings: EvalSettings) -> ProbeResult:
    """Fit one protocol on ``train`` and score it on ``val``."""
    start = time.perf_counter()
    scores, info = _fit_and_score(protocol, train, val, num_classes, settings)
    ks = (1, 5) if num_classes >= 10 else (1,)
    acc = topk_accuracy(scores, val.labels_N, ks)
    return ProbeResult(protocol, acc[1], acc.get(5), len(train), time.perf_counter() - start, info)


def _fit_and_score(protocol: str, train: Features, val: Features, num_classes: int,
                   settings: EvalSettings) -> tuple[Tensor, dict]:
    if protocol in ("linear", "linear4"):
        if protocol == "linear":
            train_x, val_x = train.pooled_ND, val.pooled_ND
            info: dict = {}
        else:
            assert train.pooled_last4_NE is not None and val.pooled_last4_NE is not None
            train_x, val_x = train.pooled_last4_NE, val.pooled_last4_NE
            info = {"layers": train_x.shape[1] // train.pooled_ND.shape[1]}
        scores, wd = linear_probe_scores(train_x, train.labels_N, val_x, num_classes,
                                         max_iter=settings.epochs_for(protocol), seed=settings.seed)
        info.update({"features": train_x.shape[1], "lbfgs_iters": settings.epochs_for(protocol), "wd": wd})
    elif protocol == "knn":
        scores = knn_scores(train.pooled_ND, train.labels_N, val.pooled_ND, num_classes,
                            k=settings.k, temperature=settings.temperature)
        info = {"k": min(settings.k, len(train)), "T": settings.temperature}
    elif protocol == "attentive":
        assert train.tokens_NTD is not None and val.tokens_NTD is not None
        scores, epochs = attentive_probe_scores(train.tokens_NTD, train.labels_N, val.tokens_NTD, num_classes,
                                                epochs=settings.epochs_for(protocol), lr=settings.lr,
                                                batch_size=settings.probe_batch_size, seed=settings.seed)
        info = {"epochs": epochs, "lr": settings.lr}
    else:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    return scores, info


def evaluate_features(
    train: Features, val: Features, settings: EvalSettings, *, source: str = "<features>",
    source_kind: str = "features", model: str = "?", step: int | None = None, encoder: str = "target",
    feature_seconds: float = 0.0,
) -> EvalReport:
    """Run every protocol of ``settings`` on already extracted features."""
    num_classes = int(max(train.labels_N.max().item(), val.labels_N.max().item())) + 1
    if settings.low_shot is not None:
        train = train.subset(low_shot_indices(train.labels_N, settings.low_shot, settings.seed))
    counts = torch.bincount(val.labels_N, minlength=num_classes)
    report = EvalReport(
        source=source, source_kind=source_kind, model=model, step=step, encoder=encoder,
        num_classes=num_classes, num_train=len(train), num_val=len(val), low_shot=settings.low_shot,
        feature_seconds=feature_seconds, chance_top1=counts.max().item() / len(val),
    )
    for protocol in settings.protocols:
        report.results.append(run_probe(protocol, train, val, num_classes, settings))
    return report


def evaluate(
    source: EncoderSource, train_batches: Iterable[tuple[Tensor, Tensor]],
    val_batches: Iterable[tuple[Tensor, Tensor]], settings: EvalSettings,
    *, train_total: int | None = None, val_total: int | None = None,
) -> EvalReport:
    """Extract frozen features of both splits with ``source``'s encoder, then run the probes.

    Args:
        source: the frozen encoder.
        train_batches, val_batches: ``(inputs, labels)`` in evaluation view.
        settings: protocols and their settings.
        train_total, val_total: sample counts, if known (progress bars only).
    """
    num_last = min(4, source.depth) if "linear4" in settings.protocols else 1
    tokens = "attentive" in settings.protocols
    start = time.perf_counter()
    source.encoder.to(settings.device)
    with progress_bar() as progress:
        train = extract_features(source.layers, train_batches, num_last=num_last, keep_tokens=tokens,
                                 description="train features", total=train_total, progress=progress,
                                 device=settings.device)
        val = extract_features(source.layers, val_batches, num_last=num_last, keep_tokens=tokens,
                               description="val features", total=val_total, progress=progress,
                               device=settings.device)
    return evaluate_features(
        train, val, settings, source=source.source, source_kind=source.kind, model=source.description,
        step=source.step, encoder=source.which, feature_seconds=time.perf_counter() - start,
    )


def evaluate_shards(source: EncoderSource, train_shards: str, val_shards: str, settings: EvalSettings) -> EvalReport:
    """:func:`evaluate` on labelled WebDataset shards, in the modality's evaluation view.

    Both shard specs are checked before any feature is computed.

    Raises:
        ValueError: the shards do not exist or carry no labels (from :mod:`jepa.data`, :mod:`jepa.eval.reader`).
    """
    from jepa.data import expand_shards, shards_total
    from jepa.eval.reader import labelled_batches

    train_urls, val_urls = expand_shards(train_shards), expand_shards(val_shards)

    def batches(pattern: str):
        return labelled_batches(pattern, source.modality, settings.batch_size,
                                num_workers=settings.num_workers)

    return evaluate(source, batches(train_shards), batches(val_shards), settings,
                    train_total=shards_total(train_urls), val_total=shards_total(val_urls))
