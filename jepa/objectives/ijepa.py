"""I-JEPA / V-JEPA: a context encoder and a predictor regress the tokens of an EMA target encoder
(docs/method/ijepa.md, "Overview"; docs/method/vjepa.md, "Overview").

Per micro batch: the target encoder encodes the whole input once (without gradients, layer-normed
tokens), the context encoder + predictor run once per (context, target) mask pair of the
modality's sampler (V-JEPA: one pair per mask generator), and the loss is the latent regression
averaged over the pairs (:mod:`jepa.loss`). After each optimiser step the target encoder moves
towards the context encoder (EMA, momentum linear over the run: :mod:`jepa.target`).

Checkpoint parts: ``encoder`` and ``predictor`` (trained), ``target_encoder`` (the EMA copy,
what evaluation and export read). Recipe section::

    objective: {name: ijepa, ema: {momentum: 0.996, final_momentum: 1.0}, loss: {kind: l2}}
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from jepa.config import ObjectiveConfig, StrictModel
from jepa.data.loader import Batch, sample_masks
from jepa.interfaces import MaskSampler, Modality
from jepa.loss import latent_loss, mean_over_pairs
from jepa.mfu import flops_per_sample
from jepa.model import JEPA, cut_targets, target_representations
from jepa.objective import BatchMaker, LossOutput, Objective
from jepa.target import EMATargetUpdater


class EMAConfig(StrictModel):
    """Target-encoder momentum, linear from ``momentum`` to ``final_momentum`` over the run (equal
    values keep it constant, bitwise: V-JEPA 2's 0.99925, docs/method/vjepa.md, "V-JEPA 2 schedules")."""

    momentum: float = Field(0.996, ge=0, le=1)
    final_momentum: float = Field(1.0, ge=0, le=1)


class LossConfig(StrictModel):
    kind: Literal["l2", "smooth_l1", "l1"] = Field(
        "l2", description="'l2' (I-JEPA paper), 'smooth_l1' with beta 1 (I-JEPA authors' code) or 'l1' (V-JEPA)")
    normalize_targets: bool = Field(True, description="Layer-norm target features (no affine) before the loss")


class IJEPAConfig(ObjectiveConfig):
    """I-JEPA / V-JEPA latent prediction against an EMA target encoder."""

    name: Literal["ijepa"] = "ijepa"
    ema: EMAConfig = EMAConfig()
    loss: LossConfig = LossConfig()


class MaskBatches(BatchMaker):
    """One augmented view per item (``modality.train_batch``) and the sampler's mask pairs."""

    def __init__(self, modality: Modality, mask_sampler: MaskSampler):
        self.modality, self.mask_sampler = modality, mask_sampler

    def from_items(self, items: list[Any], generator: torch.Generator, step_generator: torch.Generator) -> Any:
        inputs = self.modality.train_batch(items, generator)
        return Batch(inputs, sample_masks(self.mask_sampler, len(items), generator, step_generator))

    def from_inputs(self, inputs: Tensor, generator: torch.Generator, step_generator: torch.Generator) -> Any:
        return Batch(inputs, sample_masks(self.mask_sampler, inputs.shape[0], generator, step_generator))


class IJEPAObjective(Objective):
    name = "ijepa"
    config_model = IJEPAConfig
    eval_part = "target_encoder"
    cfg: IJEPAConfig

    def __init__(self, cfg: IJEPAConfig, modality: Modality, *, total_steps: int = 1, seed: int = 0):
        super().__init__(cfg, modality, total_steps=total_steps, seed=seed)
        self.updater = EMATargetUpdater(cfg.ema.momentum, cfg.ema.final_momentum, total_steps)

    def check(self) -> list[tuple[str, str]]:
        ema = self.cfg.ema
        if ema.final_momentum < ema.momentum:
            return [("ema.final_momentum", f"must be >= ema.momentum={ema.momentum} (got {ema.final_momentum})")]
        return []

    def describe(self) -> str:
        return f"ijepa (EMA {self.cfg.ema.momentum} -> {self.cfg.ema.final_momentum}, {self.cfg.loss.kind} loss)"

    def batch_maker(self) -> MaskBatches:
        return MaskBatches(self.modality, self.modality.build_mask_sampler())

    def build_model(self) -> JEPA:
        return JEPA(self.modality.build_encoder(), self.modality.build_predictor())

    def build_frozen(self, model: nn.Module) -> dict[str, nn.Module]:
        # copied before DeepSpeed moves or partitions the online weights, and before activation
        # checkpointing (only modules that get gradients need it)
        return {"target_encoder": copy.deepcopy(model.encoder).requires_grad_(False).eval()}

    def loss(self, engine: Any, batch: Any, step: int) -> LossOutput:
        inputs = self.modality.finish_batch(batch.inputs)  # e.g. uint8 pixels normalised on the device
        with engine.autocast():  # target encoder once; context encoder + predictor once per mask pair
            h_BND = target_representations(engine.frozen["target_encoder"], inputs,
                                           normalize=self.cfg.loss.normalize_targets)
            pairs = [(engine.forward(inputs, masks, mask_index=i), cut_targets(h_BND, masks))
                     for i, masks in enumerate(batch.masks)]
        loss = mean_over_pairs([latent_loss(pred, tgt, self.cfg.loss.kind) for pred, tgt in pairs])
        return LossOutput(loss=loss, representations=pairs[0][1])

    def after_step(self, engine: Any, step: int) -> dict[str, float]:
        momentum = self.updater.momentum(step)
        if momentum < 1.0:
            online = list(engine.module.encoder.parameters())
            with engine.gathered(online):
                self.updater.update(list(engine.frozen["target_encoder"].parameters()), online, step)
        return {"ema_momentum": momentum}

    def train_flops_per_sample(self, micro_batch_size: int | None = None, batch: Any = None) -> float | None:
        return flops_per_sample(self.modality, micro_batch_size)
