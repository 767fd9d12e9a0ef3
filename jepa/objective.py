"""The objective contract: how a model learns, as a plugin beside the modalities.

A modality says what the data is and builds the encoder (:mod:`jepa.interfaces`); an objective
says how the encoder learns from it: which modules are trained, what each batch must hold (mask
pairs or several augmented views), the loss with its terms and collapse signal, what happens
after each optimiser step (an EMA target, or nothing) and what is checkpointed beside the trained
modules. The training loop (:mod:`jepa.train`) calls these methods and knows nothing of EMA
teachers, predictors or regularisers; the engine (:mod:`jepa.engine`) wraps the one module
:meth:`Objective.build_model` returns.

Objectives are discovered from the ``jepa.objectives`` entry-point group
(:data:`jepa.objectives.OBJECTIVES`); the built-ins, ``ijepa`` (I-JEPA / V-JEPA latent prediction
against an EMA target, :mod:`jepa.objectives.ijepa`) and ``lejepa`` (LeJEPA with SIGReg,
:mod:`jepa.objectives.lejepa`), register the same way. A recipe selects one with
``objective: {name: ...}``; its section is validated by the objective's ``config_model``.

Checkpoint parts: every direct child module of :meth:`Objective.build_model` (e.g. ``encoder``,
``predictor``) and every module of :meth:`Objective.build_frozen` (e.g. ``target_encoder``) is
saved under its name in ``models.pt``; :attr:`Objective.eval_part` names the encoder that
evaluation and export read by default.

Shape vocabulary as in :mod:`jepa.interfaces`; V views per sample, K embedding width.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from jepa.config import ObjectiveConfig
from jepa.errors import PluginError
from jepa.interfaces import Modality

if TYPE_CHECKING:
    from jepa.data.loader import Batch
    from jepa.nn.memory import ActivationBytes
    from jepa.engine import Engine


@dataclass
class LossOutput:
    """What one micro batch's forward gives the loop.

    Attributes:
        loss: scalar to run backward on.
        terms: scalar parts of the loss (e.g. ``pred_loss``, ``sigreg``), averaged over the log
            window and logged beside ``loss``.
        representations: (..., D) features of this batch for the collapse signals (spread and
            RankMe of :mod:`jepa.health`): I-JEPA's target tokens, LeJEPA's encoder tokens.
    """

    loss: Tensor
    representations: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


class BatchMaker(ABC):
    """Turns decoded items into a training :class:`~jepa.data.loader.Batch`. Runs in data-loader
    workers, so it must pickle, be cheap and draw randomness only from the generators it is given."""

    @abstractmethod
    def from_items(self, items: list[Any], generator: torch.Generator, step_generator: torch.Generator) -> "Batch":
        """A batch of the decoded ``items``.

        Args:
            generator: this micro batch's own randomness (augmentation, masks).
            step_generator: randomness shared by every micro batch of the optimiser step, on every
                rank (:func:`jepa.data.loader.step_generator`).
        """

    @abstractmethod
    def from_inputs(self, inputs: Tensor, generator: torch.Generator, step_generator: torch.Generator) -> "Batch":
        """A batch of already-made inputs (the ``synthetic`` data source: ``modality.example_input``)."""


class Objective(ABC):
    """The plugin contract of a learning objective, bound to its recipe section and the modality.

    Args:
        cfg: the validated ``objective:`` section (an instance of ``config_model``).
        modality: the bound modality (builds the encoder and the data views).
        total_steps: optimiser steps the schedules span (e.g. the EMA momentum's).
        seed: the run seed (randomness shared by every rank, e.g. SIGReg's slices).
    """

    name: ClassVar[str]
    config_model: ClassVar[type[ObjectiveConfig]]
    #: The checkpoint part that evaluation, export and the online probe read by default.
    eval_part: ClassVar[str] = "encoder"
    #: Sections of a modality's recipe section this objective does not use (their semantic checks
    #: are skipped: e.g. LeJEPA builds no predictor and samples no masks).
    unused_modality_sections: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: ObjectiveConfig, modality: Modality, *, total_steps: int = 1, seed: int = 0):
        if not isinstance(cfg, self.config_model):
            raise TypeError(f"objective {self.name!r} is bound to a {self.config_model.__name__}, got {type(cfg).__name__}")
        self.cfg, self.modality, self.total_steps, self.seed = cfg, modality, total_steps, seed

    # ------------------------------------------------------------------ recipe

    def check(self) -> list[tuple[str, str]]:
        """Semantic checks beyond types: ``(field_path, problem_and_fix)`` pairs relative to the
        ``objective`` section (empty when usable). The modality is bound, so checks may use it."""
        return []

    def describe(self) -> str:
        """One line naming the objective and its main settings."""
        return self.name

    # ------------------------------------------------------------------ data

    @abstractmethod
    def batch_maker(self) -> BatchMaker:
        """What the loader workers call to turn decoded items into batches (must pickle)."""

    # ------------------------------------------------------------------ models

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The one module the optimiser trains (the engine wraps it in DeepSpeed). Its direct
        children are the checkpoint parts (e.g. ``encoder`` and ``predictor``); one of them is
        named ``encoder`` (built by ``modality.build_encoder()``)."""

    def build_frozen(self, model: nn.Module) -> dict[str, nn.Module]:
        """Modules updated outside the optimiser (an EMA target), copied from ``model`` before the
        engine moves or shards it; checkpointed under their names. Default: none."""
        return {}

    # ------------------------------------------------------------------ the step

    @abstractmethod
    def loss(self, engine: "Engine", batch: "Batch", step: int) -> LossOutput:
        """Forward one micro batch (already on the device) and return its loss.

        Call the trained module as ``engine.forward(...)`` (the :meth:`build_model` module as
        DeepSpeed runs it; its parameters are ``engine.module``'s), frozen modules as
        ``engine.frozen[name]``, and run computations outside the wrapped module under
        ``engine.autocast()``.
        """

    def after_step(self, engine: "Engine", step: int) -> dict[str, float]:
        """After optimiser step ``step`` (from 0): e.g. the EMA update. Returns metrics for the
        log (e.g. ``{"ema_momentum": m}``). Default: nothing."""
        return {}

    # ------------------------------------------------------------------ cost

    def train_flops_per_sample(self, micro_batch_size: int | None = None, batch: "Batch | None" = None) -> float | None:
        """Training FLOPs per sample (forward + backward) at this micro batch, or None when unknown.
        ``batch`` is a training batch when one is at hand (objectives whose cost depends on the
        views' shapes count on it)."""
        return None

    def activation_bytes_per_sample(self, micro_batch: int, *, act_bytes: int, checkpointing: bool) -> "ActivationBytes":
        """Saved activation bytes of one training sample at this micro batch (``jepa plan``).

        The default is the modality's model of I-JEPA's step (``Modality.activation_bytes_per_sample``:
        one masked context, the targets, the predictor); an objective whose step differs overrides it.

        Args:
            micro_batch: samples per micro batch (masks collated over it can change the per-sample cost).
            act_bytes: bytes of an activation in the compute dtype (4 fp32, 2 bf16/fp16).
            checkpointing: ``engine.activation_checkpointing``.

        Raises:
            PluginError: the modality has no activation model.
        """
        hook = getattr(self.modality, "activation_bytes_per_sample", None)
        if hook is None:
            raise PluginError(f"the {self.modality.name} modality has no activation model (activation_bytes_per_sample); "
                              "`jepa plan` cannot size its micro batch")
        return hook(micro_batch, act_bytes=act_bytes, checkpointing=checkpointing)
