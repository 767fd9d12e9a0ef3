"""The core recipe sections: data, optim, engine, checkpoint, log, eval and init_from.

Each section is a strict model (:class:`jepa.config.StrictModel`) that a component receives on
its own (``build_loader(recipe.data)``, ``Engine(recipe.engine, ...)``). Counts that size memory,
processes or work per step have upper bounds far above any real use (``le=``, the reason in each
field's description): a typo such as ``prefetch_factor: 200000`` is refused by ``jepa recipe
check`` instead of filling the machine's memory before step 1.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from jepa.config import StrictModel
from jepa.schedules import LRSchedule
from jepa.errors import ConfigError

MAX_GLOBAL_BATCH = 2**20
"""Largest ``data.global_batch_size`` (published JEPA/SSL batches are at most 64 Ki)."""
MAX_MICRO_BATCH = 2**16
"""Largest batch of one forward pass (``data.micro_batch_size``, ``eval.batch_size``)."""


class DataConfig(StrictModel):
    """Where training samples come from and how they are batched."""

    source: Literal["shards", "synthetic"] = Field(
        "shards", description="'shards': WebDataset tar shards; 'synthetic': random inputs from the "
        "modality's example_input (throughput benchmarks, engine checks)")
    train_shards: str | None = Field(
        None, description="Shard list: brace pattern, local path, http(s):// URL or pipe: command; "
        "several patterns may be joined with '::'")
    samples_per_epoch: int = Field(1_281_167, gt=0, description="Samples that make one epoch (IN-1K: 1281167, IN-22K: ~14.2M)")
    global_batch_size: int = Field(
        2048, gt=0, le=MAX_GLOBAL_BATCH, description="Samples per optimiser step over all ranks (at most 2^20, 16x the "
        "largest published batches: without data.micro_batch_size one rank's micro batch is global / (world_size x "
        "accumulation), held in memory whole)")
    micro_batch_size: int | None = Field(
        None, gt=0, le=MAX_MICRO_BATCH, description="Samples per rank in one forward/backward: the batch the mask "
        "sampler collates (faithful image masks are cut to the shortest context of it, so it sets what the encoder sees). Set: "
        "engine.grad_accum_steps is derived as global_batch_size / (world_size x micro_batch_size), so the masks are the "
        "same on any number of GPUs. Unset: global_batch_size / (world_size x engine.grad_accum_steps). At most 65536: "
        "its inputs and activations are in memory at once")
    num_workers: int = Field(8, ge=0, le=256, description="Data-loader worker processes per rank (at most 256: each is "
                             "a process holding its own shuffle buffer and prefetched batches)")
    shuffle_buffer: int = Field(2000, ge=1, le=100_000, description="Raw samples in each worker's shuffle buffer (at most "
                                "100,000: every worker fills its buffer in memory before its first batch; 100,000 "
                                "ImageNet JPEGs are about 11 GB)")
    prefetch_factor: int = Field(2, ge=1, le=64, description="Batches prefetched per worker (at most 64: each prefetched "
                                 "batch is held in memory by every worker)")
    max_skip_rate: float = Field(0.01, ge=0.0, le=1.0, description="Stop when more than this share of samples is corrupt")
    min_samples_for_skip_check: int = Field(1000, ge=1, description="Samples seen before the skip rate is enforced")


class OptimConfig(StrictModel):
    """AdamW: learning rate linear warmup, then cosine / constant / linear (``lr_schedule``); cosine
    weight decay (constant when ``final_weight_decay == weight_decay``)."""

    epochs: float = Field(300, gt=0, description="Length of the run in epochs")
    warmup_epochs: float = Field(40, ge=0, description="Linear LR warmup from start_lr to lr")
    start_lr: float = Field(2e-4, ge=0)
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (after warmup)")
    final_lr: float = Field(1e-6, ge=0)
    lr_schedule: LRSchedule = Field(
        "cosine", description="The learning rate after warmup: 'cosine' lr -> final_lr at the end of the schedules "
        "(I-JEPA, V-JEPA); 'constant' stays at lr, final_lr unused (V-JEPA 2 pretraining); 'linear' lr -> final_lr "
        "(V-JEPA 2 cooldown, with warmup_epochs: 0)")
    weight_decay: float = Field(0.04, ge=0, description="Weight decay at step 0 (cosine to final_weight_decay; equal "
                                "values keep it constant, as in V-JEPA 2)")
    final_weight_decay: float = Field(0.4, ge=0)
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas, each in [0, 1)")
    eps: float = Field(1e-8, gt=0)
    grad_clip: float | None = Field(None, gt=0, description="Clip the global gradient norm (None: no clipping)")

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ConfigError(f"each beta must be in [0, 1), got {betas}")
        return betas


class EngineConfig(StrictModel):
    """DeepSpeed settings."""

    zero_stage: Literal[0, 1, 2, 3] = 0
    precision: Literal["fp32", "bf16", "fp16"] = Field("bf16", description="bf16 autocast as in the paper; fp16 uses loss scaling")
    grad_accum_steps: int | None = Field(
        None, ge=1, description="Micro batches per optimiser step on each rank. Unset: derived from "
        "data.micro_batch_size (global_batch_size / (world_size x micro_batch_size)), or 1 when that is unset too")
    compile: bool = Field(False, description="torch.compile the context encoder and predictor")
    activation_checkpointing: bool = Field(False, description="Recompute transformer blocks in backward (ViT-H/g memory)")


HEALTH_METRICS: dict[str, Literal["max", "min"]] = {
    "loss": "min", "pred_loss": "min", "sigreg": "min", "target_spread": "max", "rankme": "max", "knn_top1": "max", "knn_top5": "max"}
"""Metrics a run can keep its best checkpoint by, and which direction is better."""


class KeepBestConfig(StrictModel):
    metric: str = Field(description=f"Metric of metrics.jsonl to rank checkpoints by: one of {', '.join(HEALTH_METRICS)}")
    mode: Literal["max", "min", "auto"] = Field("auto", description="Better is larger (max) or smaller (min); auto knows each metric")

    @field_validator("metric")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in HEALTH_METRICS:
            raise ConfigError(f"unknown metric {value!r}; choose one of {', '.join(HEALTH_METRICS)}")
        return value

    @property
    def better(self) -> Literal["max", "min"]:
        return HEALTH_METRICS[self.metric] if self.mode == "auto" else self.mode


class CheckpointConfig(StrictModel):
    every_steps: int = Field(1000, ge=1, description="Save a checkpoint every N optimiser steps (and at the end)")
    keep_last: int = Field(3, ge=1, description="Complete checkpoints kept on disk")
    keep_best: KeepBestConfig | None = Field(
        None, description="Also keep the checkpoint with the best value of a metric in RUN_DIR/best (see jepa.best_checkpoint)")


class LogConfig(StrictModel):
    every_steps: int = Field(10, ge=1, description="Log (and sync the loss to the host) every N steps")
    tensorboard: bool = Field(False, description="Also write TensorBoard events (needs the 'tensorboard' extra)")
    collapse_threshold: float | None = Field(
        None, gt=0, description="Stop when the spread of target representations across the batch falls below this")
    collapse_rankme: float | None = Field(
        None, gt=0, description="Stop when the RankMe (effective rank) of the target tokens falls below this")


class EvalConfig(StrictModel):
    """Online k-NN evaluation during pretraining (off unless ``every_steps`` is set)."""

    every_steps: int | None = Field(None, ge=1, description="Run the k-NN probe every N optimiser steps (and at the end)")
    train_shards: str | None = Field(None, description="Labelled shards for the k-NN bank (a small set: a few thousand samples)")
    val_shards: str | None = Field(None, description="Labelled shards classified by the k-NN probe")
    k: int = Field(20, ge=1, le=10_000, description="Neighbours per query (at most 10,000: every query keeps its k "
                   "nearest bank samples)")
    temperature: float = Field(0.07, gt=0, description="Softness of the neighbours' vote weights")
    batch_size: int = Field(64, ge=1, le=MAX_MICRO_BATCH, description="Samples per encoder forward (at most 65536: "
                            "the batch and its activations are in memory at once)")
    max_samples: int = Field(10_000, ge=1, le=2_000_000, description="At most this many samples are read from each "
                             "shard set (at most 2,000,000, above ImageNet-1K's 1.28 M: the features of every one are "
                             "kept in host memory and gathered to every rank)")


InitPart = Literal["encoder", "predictor", "target"]
"""A model :class:`InitFromConfig` can take: the context encoder, the predictor or the EMA target."""
ALL_INIT_PARTS: tuple[InitPart, ...] = ("encoder", "predictor", "target")


class InitFromConfig(StrictModel):
    """Where a new run takes its initial weights from."""

    path: str = Field(min_length=1, description="A released I-JEPA .pth.tar, a run directory (its newest complete "
                                                "checkpoint), a checkpoint directory or a models.pt of `jepa train`")
    parts: list[InitPart] = Field(list(ALL_INIT_PARTS), min_length=1,
                                  description="Which models to take: encoder (context), predictor, target (EMA)")
    optimizer: bool = Field(False, description="Also restore the optimiser moments (checkpoints of `jepa train` only)")

    @field_validator("parts")
    @classmethod
    def _unique(cls, parts: list[InitPart]) -> list[InitPart]:
        if len(set(parts)) != len(parts):
            raise ConfigError(f"parts {parts} names a part twice")
        return parts
