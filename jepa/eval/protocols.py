"""The protocols of ``jepa eval``, each declared once, in a registry the evaluator iterates.

A protocol is one :class:`Protocol` registered in :data:`PROTOCOLS` (:func:`register`). It declares
everything the evaluator asks of it:

* ``name``: what ``--protocol`` names;
* ``features``: what it reads from the frozen encoder (:class:`~jepa.eval.features.FeatureSpec`):
  the pooled last layer, the pooled last 4 layers (fewer for shallower encoders) or the last
  layer's tokens;
* ``seed_salt``: a constant mixed into the run's seed (``derive_seed(seed, seed_salt)``) for every
  random draw of the protocol (head initialisation, shuffling, augmentation). Salts are fixed
  forever and unique: changing one changes the protocol's numbers. The built-ins' salts are the
  positions they had in the protocol tuple of report version 2, so their numbers did not move;
* ``default_epochs`` and ``grid`` (the (lr, wd) heads chosen on the held-out split, or None when
  nothing is chosen);
* ``stores_pooled`` / ``stores_tokens``: whether it reads pooled features (or tokens) stored once
  instead of running the encoder every epoch;
* ``needs``: its peak memory, per place (:mod:`jepa.eval.memory`);
* ``run``: fit and score, returning an :class:`Outcome`.

The evaluator (:func:`jepa.eval.evaluate.evaluate`) knows no protocol by name: adding one is one
:func:`register` call (here for a built-in, or in a plugin or a test). ``docs/eval_protocols.md``
states each built-in exactly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from jepa.data import derive_seed
from jepa.errors import ConfigError, PluginError
from jepa.eval.features import FeatureSpec
from jepa.eval.grid import Grid, choose, grid_rows
from jepa.eval.heads import AttentiveGrid, LinearGrid
from jepa.eval.knn import StreamingKNN
from jepa.eval.memory import (F32, POOLED_IN_MEMORY_FRACTION, Need, attentive_step_bytes, knn_bytes,
                              linear_step_bytes)
from jepa.eval.probes import linear_probe_scores, topk_accuracy
from jepa.eval.training import score_grid, train_grid

if TYPE_CHECKING:
    from jepa.eval.context import EvalRun, PlanInput
    from jepa.eval.settings import EvalSettings


@dataclass
class Outcome:
    """What one protocol's ``run`` found.

    Attributes:
        accuracy: ``{k: top-k}`` on the validation split, for each ``k`` of ``EvalRun.ks``.
        num_train: training samples the probe was fitted on.
        settings: its hyper-parameters as used (the report's ``settings``).
        grid: grid protocols: one report row per head (:func:`jepa.eval.grid.grid_rows`).
    """

    accuracy: dict[int, float]
    num_train: int
    settings: dict[str, Any]
    grid: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Protocol(ABC):
    """One evaluation protocol (see the module docstring for what each field means).

    Attributes:
        name: the ``--protocol`` name.
        seed_salt: fixed constant seeding the protocol's random draws.
        features: what it reads from the encoder.
        default_epochs: epochs without ``--epochs`` (None: it trains no epochs).
        help: its paragraph of ``jepa eval --help``.
    """

    name: str
    seed_salt: int
    features: FeatureSpec
    default_epochs: int | None = None
    help: str = ""

    grid_flag: ClassVar[str] = ""
    """Prefix of the flags that set the grid (``--linear`` for ``--linear-lrs``), for messages."""

    def seed(self, settings: EvalSettings) -> int:
        return derive_seed(settings.seed, self.seed_salt)

    def grid(self, settings: EvalSettings) -> Grid | None:
        """The heads chosen on the held-out split; None: nothing is chosen (no held-out split needed)."""
        return None

    def stores_pooled(self, settings: EvalSettings) -> bool:
        """Whether it trains on pooled features stored once (``features``' layers)."""
        return False

    def stores_tokens(self, plan: PlanInput) -> bool:
        """Whether it trains on last-layer tokens encoded once and kept in host memory."""
        return False

    def needs(self, plan: PlanInput) -> list[Need]:
        """Its peak memory, per place (the stored features are planned by the evaluator)."""
        return []

    @abstractmethod
    def run(self, run: EvalRun) -> Outcome:
        """Fit on ``run.splits`` of the training split, score on the whole validation split."""


PROTOCOLS: dict[str, Protocol] = {}
"""Every registered protocol by name, in registration order (``jepa eval --help`` lists them so)."""


def register(protocol: Protocol) -> Protocol:
    """Add ``protocol`` to :data:`PROTOCOLS`.

    Raises:
        ValueError: its name or its seed salt is already registered.
    """
    if protocol.name in PROTOCOLS:
        raise PluginError(f"protocol {protocol.name!r} is registered twice")
    taken = {p.seed_salt: p.name for p in PROTOCOLS.values()}
    if protocol.seed_salt in taken:
        raise PluginError(f"protocol {protocol.name!r}: seed salt {protocol.seed_salt} is taken by "
                         f"{taken[protocol.seed_salt]!r}; give every protocol its own constant")
    PROTOCOLS[protocol.name] = protocol
    return protocol


# --------------------------------------------------------------------------- grids chosen on the held-out split


@dataclass(frozen=True)
class GridProbe(Protocol):
    """A grid of heads trained together by minibatch AdamW, the best chosen on the held-out split.

    Training reads stored tokens (when stored), stored pooled features (``stores_pooled``) or the
    encoder every epoch (with ``--augment``); held-out and validation scoring read a store when there is one.
    """

    @abstractmethod
    def heads(self, run: EvalRun, generator: torch.Generator) -> tuple[nn.Module, dict[str, Any]]:
        """The untrained grid and the settings it reports."""

    def run(self, run: EvalRun) -> Outcome:
        s = run.settings
        grid = self.grid(s)
        assert grid is not None
        epochs = s.epochs_for(self.name)
        seed = self.seed(s)
        heads, info = self.heads(run, torch.Generator().manual_seed(seed))
        heads.to(run.device)
        pooled = self.features.kind == "pooled"
        from_store = pooled and self.stores_pooled(s)
        tokens_stored = not pooled and run.tokens_train is not None
        cols = run.pooled_columns(self.features) if pooled and run.store_train is not None else slice(None)
        if tokens_stored:
            info["stored_tokens"] = True

        def train_feed(epoch: int):
            if tokens_stored:
                return run.stored_tokens("train", run.splits.fit,
                                         torch.Generator().manual_seed(derive_seed(seed, epoch)))
            if from_store:
                assert run.store_train is not None
                return run.stored(run.store_train, run.train_labels, run.splits.fit, cols,
                                  torch.Generator().manual_seed(derive_seed(seed, epoch)))
            return run.encoded(run.train, run.splits.fit, self.features, "", epoch=epoch, shuffle_seed=seed,
                               augment=s.augment)

        train_grid(heads, grid, train_feed, epochs=epochs, steps_per_epoch=run.steps_per_epoch(),
                   warmup_epochs=s.warmup_epochs, device=run.device, precision=run.precision, progress=run.progress,
                   description=f"{self.name} ({len(grid)} heads)")
        if tokens_stored:
            held, val = run.stored_tokens("train", run.splits.held), run.stored_tokens("val", None)
        elif pooled and run.store_train is not None:
            assert run.store_val is not None
            held = run.stored(run.store_train, run.train_labels, run.splits.held, cols)
            val = run.stored(run.store_val, run.val_labels, torch.ones_like(run.store_val.filled_N), cols)
        else:
            held = run.encoded(run.train, run.splits.held, self.features, f"{self.name}: held-out",
                               total=int(run.splits.held.sum()))
            val = run.encoded(run.val, None, self.features, f"{self.name}: val", total=run.val_labels.numel())
        holdout = score_grid(heads, held, run.ks, run.device, run.precision) if run.splits.held.any() else None
        scores = score_grid(heads, val, run.ks, run.device, run.precision)
        best = choose(holdout)
        lr, wd = grid.pairs()[best]
        info.update({"lr": lr, "wd": wd, "epochs": epochs, "batch": s.batch_size, "augment": s.augment,
                     "heads": len(grid), "holdout": s.holdout})
        return Outcome({k: scores[f"top{k}"][best] for k in run.ks}, run.decoded("train", run.splits.fit), info,
                       grid_rows(grid, holdout, scores))


@dataclass(frozen=True)
class LinearProbe(GridProbe):
    """Normalised pooled features, a grid of linear heads (``--linear-lrs`` x ``--linear-wds``)."""

    grid_flag: ClassVar[str] = "--linear"

    def grid(self, settings: EvalSettings) -> Grid:
        return settings.linear_grid

    def stores_pooled(self, settings: EvalSettings) -> bool:
        return settings.augment == "none"

    def needs(self, plan: PlanInput) -> list[Need]:
        G = len(plan.settings.linear_grid)
        state, acts = linear_step_bytes(G, plan.settings.batch_size, plan.shapes.width(self.features), plan.num_classes)
        return [Need(self.name, plan.device_place, [(f"{G} heads with AdamW state", state), ("one step", acts)],
                     "lower --batch-size or the grid (--linear-lrs, --linear-wds)")]

    def heads(self, run: EvalRun, generator: torch.Generator) -> tuple[nn.Module, dict[str, Any]]:
        layers, width = run.shapes.layers(self.features), run.shapes.width(self.features)
        return LinearGrid(len(run.settings.linear_grid), width, run.num_classes), {"layers": layers, "features": width}


@dataclass(frozen=True)
class AttentiveProbe(GridProbe):
    """A grid of attentive probes on the last layer's tokens (``--attentive-lrs`` x ``--attentive-wds``)."""

    grid_flag: ClassVar[str] = "--attentive"

    def grid(self, settings: EvalSettings) -> Grid:
        return settings.attentive_grid

    def stores_tokens(self, plan: PlanInput) -> bool:
        """Only without augmentation (the view is the same every epoch), with ``--feature-cache auto``
        or ``memory``, and (for ``auto``) when the tokens of both splits take at most
        :data:`~jepa.eval.memory.POOLED_IN_MEMORY_FRACTION` of the free host memory."""
        s = plan.settings
        if s.augment != "none":
            return False
        if s.feature_cache == "memory":
            return True
        n, T, D = plan.num_train + plan.num_val, plan.shapes.tokens, plan.shapes.dim
        return s.feature_cache == "auto" and n * T * D * F32 <= POOLED_IN_MEMORY_FRACTION * plan.host_bytes

    @staticmethod
    def attn_heads(settings: EvalSettings, dim: int) -> int:
        if settings.attentive_heads is not None:
            if dim % settings.attentive_heads:
                raise ConfigError(f"--attentive-heads {settings.attentive_heads} does not divide the token width "
                                 f"{dim}; pick a divisor")
            return settings.attentive_heads
        heads = max(1, dim // 64)
        while dim % heads:
            heads -= 1
        return heads

    def needs(self, plan: PlanInput) -> list[Need]:
        s, n, T, D = plan.settings, plan.num_train + plan.num_val, plan.shapes.tokens, plan.shapes.dim
        needs = []
        if self.stores_tokens(plan):
            needs.append(Need(f"stored tokens ({self.name})", "host memory", [(f"{n} x {T} x {D}", n * T * D * F32)],
                              "--feature-cache DIR streams the encoder every epoch instead"))
        G = len(s.attentive_grid)
        state, acts = attentive_step_bytes(G, s.batch_size, T, D, plan.num_classes, s.attentive_depth,
                                           self.attn_heads(s, D), plan.cuda)
        needs.append(Need(self.name, plan.device_place, [(f"{G} heads with AdamW state", state), ("one step", acts)],
                          "lower --batch-size, --attentive-depth or the grid (--attentive-lrs, --attentive-wds)"))
        return needs

    def heads(self, run: EvalRun, generator: torch.Generator) -> tuple[nn.Module, dict[str, Any]]:
        s, D = run.settings, run.shapes.dim
        heads = AttentiveGrid(len(s.attentive_grid), D, run.num_classes, attn_heads=self.attn_heads(s, D),
                              depth=s.attentive_depth, generator=generator)
        return heads, {"depth": s.attentive_depth, "attn_heads": heads.attn_heads}


# --------------------------------------------------------------------------- on stored pooled features


@dataclass(frozen=True)
class KNNProbe(Protocol):
    """Weighted k-NN (``--k``, ``--temperature``): validation features on the device, training features streamed."""

    def stores_pooled(self, settings: EvalSettings) -> bool:
        return True

    def needs(self, plan: PlanInput) -> list[Need]:
        s, n_val = plan.settings, plan.num_val
        return [Need(self.name, plan.device_place,
                     [("queries, top-k and similarity blocks",
                       knn_bytes(n_val, plan.shapes.width(self.features), s.k, max(s.batch_size, 8192))),
                      (f"votes, {n_val} x {plan.num_classes} classes", n_val * plan.num_classes * F32)],
                     "lower --k; or --device cpu")]

    def run(self, run: EvalRun) -> Outcome:
        assert run.store_train is not None and run.store_val is not None
        val_idx = run.store_val.filled_N.nonzero().flatten()
        cols = run.pooled_columns(self.features)
        knn = StreamingKNN(run.store_val.rows(val_idx, cols).to(run.device), run.settings.k, run.settings.temperature)
        for feats, y in run.stored(run.store_train, run.train_labels, run.splits.eligible, cols):
            knn.add(feats, y)
        scores = knn.scores(run.num_classes)
        accuracy = topk_accuracy(scores.cpu(), run.val_labels[val_idx], run.ks)
        return Outcome(accuracy, run.decoded("train", run.splits.eligible),
                       {"k": min(run.settings.k, knn.seen), "T": run.settings.temperature})


@dataclass(frozen=True)
class LogregProbe(Protocol):
    """Full-batch L-BFGS logistic regression on standardised stored features (small sets).

    Its L2 strength's hold-out is drawn from the run's seed itself, as before the salts existed.
    """

    streaming_alternative: str = ""
    """The streamed protocol on the same features, named when the plan does not fit."""

    def stores_pooled(self, settings: EvalSettings) -> bool:
        return True

    def needs(self, plan: PlanInput) -> list[Need]:
        w = plan.shapes.width(self.features)
        return [Need(self.name, "host memory", [("full-batch features, copies and gradients",
                                                 4 * plan.num_train * w * F32 + plan.num_val * w * F32)],
                     f"use the streaming protocol {self.streaming_alternative} instead")]

    def run(self, run: EvalRun) -> Outcome:
        assert run.store_train is not None and run.store_val is not None
        cols = run.pooled_columns(self.features)
        train_idx = (run.splits.eligible & run.store_train.filled_N).nonzero().flatten()
        val_idx = run.store_val.filled_N.nonzero().flatten()
        scores, wd = linear_probe_scores(run.store_train.rows(train_idx, cols), run.train_labels[train_idx],
                                         run.store_val.rows(val_idx, cols), run.num_classes,
                                         max_iter=run.settings.lbfgs_iters, seed=run.settings.seed)
        info = {"features": run.shapes.width(self.features), "lbfgs_iters": run.settings.lbfgs_iters, "wd": wd}
        accuracy = topk_accuracy(scores, run.val_labels[val_idx], run.ks)
        return Outcome(accuracy, run.decoded("train", run.splits.eligible), info)


# --------------------------------------------------------------------------- the built-ins

LAST_LAYER, LAST_4_LAYERS, TOKENS = FeatureSpec("pooled", 1), FeatureSpec("pooled", 4), FeatureSpec("tokens")

register(LinearProbe(
    "linear", seed_salt=0, features=LAST_LAYER, default_epochs=100,
    help="average over tokens of the last layer, normalised (batch statistics, no affine), a grid of linear heads "
         "(--linear-lrs x --linear-wds, one head per pair, trained together on the same batches) by minibatch AdamW, "
         "cosine schedule, --epochs (default 100). With --augment none the pooled features are stored once and "
         "epochs read them back; otherwise the encoder runs every epoch. The head with the best top-1 on a held-out "
         "part of the training split (--holdout, class-stratified) is reported; the report lists every head. Same "
         "layers and pooling as the I-JEPA paper's linear probe; its training recipe is not released, so the "
         "numbers are not comparable with the paper's."))
register(LinearProbe(
    "linear4", seed_salt=1, features=LAST_4_LAYERS, default_epochs=100,
    help="the same on the average-pooled last 4 layers, concatenated."))
register(AttentiveProbe(
    "attentive", seed_salt=2, features=TOKENS, default_epochs=20,
    help="a grid of attentive probes on the last layer's tokens: --attentive-depth blocks (depth-1 self-attention "
         "blocks, then a cross-attention block with one learnable query, residual and MLP), a linear classifier on "
         "the query; AdamW, cosine schedule, --epochs (default 20); with --augment none the tokens are encoded once "
         "and kept in host memory when they fit (--feature-cache auto or memory), else the encoder runs inside the "
         "training loop every epoch. Chosen on the held-out split like linear. The probe architecture of V-JEPA 2's "
         "evaluation (which uses depth 4, 16 heads, heavier augmentation, and picks the best head on the validation "
         "set)."))
register(KNNProbe(
    "knn", seed_salt=3, features=LAST_LAYER,
    help="weighted k-nearest neighbours (cosine similarity, weights exp(sim / --temperature)) on the pooled last "
         "layer, streamed on the device in chunks."))
register(LogregProbe(
    "logreg", seed_salt=4, features=LAST_LAYER, streaming_alternative="linear",
    help="full-batch multinomial logistic regression by L-BFGS on standardised pooled features of the last layer, "
         "L2 strength chosen on a 20 % hold-out, refitted on all; holds every training feature in host memory: for "
         "small sets."))
register(LogregProbe(
    "logreg4", seed_salt=5, features=LAST_4_LAYERS, streaming_alternative="linear4",
    help="the same on the average-pooled last 4 layers, concatenated."))
