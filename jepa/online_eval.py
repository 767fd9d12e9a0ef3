"""Online k-NN evaluation during pretraining (the recipe's ``eval`` section).

Every ``eval.every_steps`` steps (and at the last step) the target encoder, frozen and in
evaluation mode, encodes a small labelled shard set: a bank (``eval.train_shards``) and
queries (``eval.val_shards``), at most ``eval.max_samples`` each, in the modality's evaluation
view. Features are the average over tokens of the last (normed) layer, as for ``jepa eval``'s
``knn`` protocol; each query takes the weighted vote of its ``eval.k`` most similar bank
samples (cosine similarity, weights ``exp(sim / eval.temperature)``), and ``knn_top1`` /
``knn_top5`` (in [0, 1]) join that step's record of ``metrics.jsonl``.

Labels are checked as ``jepa eval`` checks them (:func:`jepa.eval.reader.label_of`), but a sample
with a bad label, or one that does not decode, is skipped and counted (a warning names the last
one), never the end of the run. When both shard sets' manifests name their classes, the query
labels are numbered by the bank's class names, and a query class the bank lacks is refused before
training starts. The votes are counted over the classes that occur, so no label's value sizes them.

The work is shared: each rank encodes its part of the shards (whole shards when there are at
least as many shards as ranks, every ``world``-th batch otherwise), pooled features are
gathered on every rank and every rank scores the same k-NN, so every rank holds the same
numbers (the stop rule and ``checkpoint.keep_best`` may use them).
"""

from __future__ import annotations

import logging
from itertools import islice
from typing import TYPE_CHECKING, Iterator

import torch
from torch import Tensor

from jepa.data import expand_shards, read_manifest
from jepa.errors import DataError, UserError
from jepa.eval.knn import StreamingKNN
from jepa.eval.probes import topk_accuracy
from jepa.eval.reader import labelled_batches
from jepa.interfaces import Encoder, Modality
from jepa.recipe import EvalConfig

if TYPE_CHECKING:
    from jepa.engine import Engine

log = logging.getLogger("jepa.eval")


class OnlineKNN:
    """k-NN accuracy of the target encoder on a small labelled set; call it on every rank.

    Args:
        cfg: the recipe's ``eval`` section (``every_steps`` set, both shard specs given).
        modality: decodes the shards and builds evaluation batches.
        engine: rank, device, precision and the gather.

    Raises:
        ValueError: a shard spec names nothing, or the query shards' manifest names a class the bank's
            lacks (checked here, before training starts).
    """

    def __init__(self, cfg: EvalConfig, modality: Modality, engine: Engine):
        assert cfg.every_steps is not None and cfg.train_shards and cfg.val_shards
        self.cfg, self.modality, self.engine = cfg, modality, engine
        self.urls = {"eval.train_shards": expand_shards(cfg.train_shards), "eval.val_shards": expand_shards(cfg.val_shards)}
        self.classes = {name: _class_names(getattr(cfg, name.split(".")[1])) for name in self.urls}
        self.query_to_bank = _query_to_bank(self.classes["eval.train_shards"], self.classes["eval.val_shards"], cfg)

    def due(self, step: int, last_step: int) -> bool:
        """Whether the probe runs after optimiser step ``step``."""
        return step % self.cfg.every_steps == 0 or step == last_step  # type: ignore[operator]

    def _my_batches(self, name: str, skipped: list[str]) -> Iterator[tuple[Tensor, Tensor]]:
        urls, classes = self.urls[name], self.classes[name]
        rank, world = self.engine.dist.rank, self.engine.dist.world_size
        batches_cap = -(-self.cfg.max_samples // self.cfg.batch_size)
        options = {"num_classes": None if classes is None else len(classes), "skipped": skipped}
        if len(urls) >= world:  # whole shards per rank; the sample cap is shared out evenly
            mine = urls[rank::world]
            yield from islice(labelled_batches("::".join(mine), self.modality, self.cfg.batch_size, **options),
                              -(-batches_cap // world))
        else:
            batches = islice(labelled_batches("::".join(urls), self.modality, self.cfg.batch_size, **options),
                             batches_cap)
            yield from islice(batches, rank, None, world)

    @torch.no_grad()
    def _features(self, encoder: Encoder, name: str) -> tuple[Tensor, Tensor]:
        pooled, labels = [], []
        device = self.engine.dist.device
        error, failed = None, None
        skipped: list[str] = []
        try:  # a failure on one rank is raised on every rank, not left waiting in the gather
            with self.engine.autocast():
                for x, y in self._my_batches(name, skipped):
                    pooled.append(encoder(x.to(device, non_blocking=True)).float().mean(dim=1).cpu())
                    labels.append(y)
        except (ValueError, RuntimeError, OSError, MemoryError) as exc:
            error, failed = _failure(exc, name, self.engine.dist.rank), exc
            pooled, labels = [], []  # what this rank holds goes; its features are not gathered
        if skipped:
            log.warning("rank %d: online evaluation skipped %d samples of %s (a bad label or not decodable); last: %s",
                        self.engine.dist.rank, len(skipped), name, skipped[-1])
        mine = (torch.cat(pooled), torch.cat(labels)) if labels else (torch.empty(0), torch.empty(0, dtype=torch.int64))
        gathered = self.engine.all_gather_object((error, mine))
        errors = [e for e, _ in gathered if e is not None]
        if errors:  # the same exception on every rank: running out of memory stays that (the CLI names the knobs)
            kind, text = min(errors, key=lambda e: list(_RAISED).index(e[0]))  # memory, then user, then a bug
            raise _RAISED[kind](text) from failed  # this rank's own failure keeps its traceback
        parts = [part for _, part in gathered]
        feats = torch.cat([f for f, _ in parts if f.numel()]) if any(f.numel() for f, _ in parts) else torch.empty(0)
        labels_N = torch.cat([y for _, y in parts])
        if labels_N.numel() == 0:
            raise DataError(f"{name}={getattr(self.cfg, name.split('.')[1])!r} yielded no labelled samples; "
                             "point it at labelled shards written by `jepa shards`")
        return feats, labels_N

    def __call__(self, encoder: Encoder) -> dict[str, float]:
        """Collective: ``{"knn_top1": ..., "knn_top5": ...}``, the same on every rank.

        ``knn_top5`` is left out when there are fewer than 5 classes.
        """
        was_training = encoder.training
        encoder.eval()
        try:
            bank, bank_labels = self._features(encoder, "eval.train_shards")
            query, query_labels = self._features(encoder, "eval.val_shards")
        finally:
            encoder.train(was_training)
        if self.query_to_bank is not None:
            query_labels = self.query_to_bank[query_labels]
        # the votes are counted over the classes that occur (numbered in order), never sized by a label's value
        occurring, compact = torch.unique(torch.cat([bank_labels, query_labels]), return_inverse=True)
        bank_labels, query_labels = compact[:bank_labels.numel()], compact[bank_labels.numel():]
        num_classes = int(occurring.numel())
        knn = StreamingKNN(query, k=self.cfg.k, temperature=self.cfg.temperature)
        knn.add(bank, bank_labels)
        scores = knn.scores(num_classes)
        ks = (1, 5) if num_classes >= 5 else (1,)
        return {f"knn_top{k}": acc for k, acc in topk_accuracy(scores, query_labels, ks).items()}


_CPU_ALLOC_FAILED = "DefaultCPUAllocator: can't allocate memory"
"""torch's host allocator raises a plain RuntimeError with this text when an allocation fails."""

_RAISED = {"gpu memory": torch.OutOfMemoryError, "host memory": MemoryError, "user": DataError, "error": RuntimeError}
"""The exception every rank raises for a failure of each kind (:func:`_failure`)."""


def _failure(exc: BaseException, name: str, rank: int) -> tuple[str, str]:
    """``(kind, message)`` of a failure on this rank while encoding ``name``, for every rank to raise
    the same: running out of GPU or host memory keeps its kind (``torch.OutOfMemoryError`` /
    ``MemoryError``), a :class:`~jepa.errors.UserError` or ``OSError`` (bad shards, a missing file)
    a :class:`~jepa.errors.DataError`, anything else (a bug) a ``RuntimeError``."""
    text, where = str(exc).strip(), f"online evaluation of {name} on rank {rank}"
    if isinstance(exc, torch.OutOfMemoryError):  # its first line says how much; the rest is allocator statistics
        return "gpu memory", f"{where}: {text.splitlines()[0] if text else 'CUDA out of memory'}"
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and _CPU_ALLOC_FAILED in text):
        # one line, the allocator's words first (the CLI quotes from them on); a MemoryError: often empty
        detail = text[text.find(_CPU_ALLOC_FAILED):].splitlines()[0] if _CPU_ALLOC_FAILED in text else \
            (text.splitlines() or [""])[-1]
        return "host memory", f"{detail} ({where})" if detail else where
    if isinstance(exc, (UserError, OSError)):
        return "user", f"online evaluation failed: {name}: {exc}"
    return "error", f"online evaluation failed: {name}: {type(exc).__name__}: {exc}"


def _class_names(shards: str) -> list[str] | None:
    """The class names of a shard set's manifest, or None when it names none (or has no manifest)."""
    try:
        manifest = read_manifest(shards)
    except ValueError:
        return None
    return list(manifest.classes) if manifest is not None and manifest.classes else None


def _query_to_bank(bank: list[str] | None, query: list[str] | None, cfg: EvalConfig) -> Tensor | None:
    """(C_query,) int64: each query class's number in the bank's numbering; None when they agree or
    either set names no classes (the numbers are then taken as they are)."""
    if bank is None or query is None or bank == query:
        return None
    position = {name: i for i, name in enumerate(bank)}
    unknown = [c for c in query if c not in position]
    if unknown:
        raise DataError(f"eval.val_shards={cfg.val_shards!r}: its manifest names class {unknown[0]!r}"
                         f"{f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''}, not among the "
                         f"{len(bank)} classes of eval.train_shards={cfg.train_shards!r}; the k-NN bank cannot "
                         "vote for it: use query shards whose classes are the bank's or some of them")
    return torch.tensor([position[c] for c in query], dtype=torch.int64)
