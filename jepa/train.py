"""The training loop: one flat function, readable top to bottom.

Per optimiser step: schedules (pure functions of the step) -> for each micro batch: data,
forward (target tokens without gradients, then context encoder + predictor), latent loss,
backward, DeepSpeed step -> EMA of the target encoder -> log (every ``log.every_steps``) ->
checkpoint (every ``checkpoint.every_steps``, at the end, and when preempted).

The same code runs as one CPU process, under ``torchrun`` or the ``deepspeed`` launcher on many
GPUs and nodes; :class:`~jepa.engine.Engine` hides the difference.
"""

from __future__ import annotations

import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from jepa import checkpoint, registry
from jepa.data import build_train_loader
from jepa.engine import Engine
from jepa.loss import latent_loss
from jepa.model import target_tokens
from jepa.monitor import Monitor
from jepa.recipe import Recipe
from jepa.schedules import cosine, warmup_cosine
from jepa.target import EMATargetUpdater

RECIPE_FILE = "recipe.yaml"


@dataclass(frozen=True)
class RunResult:
    """How a call of :func:`train` ended.

    Attributes:
        run_dir: the run directory.
        step: optimiser steps done.
        stopped_by: ``"finished"`` (reached ``max_steps`` / the end of the schedules) or
            ``"preempted"`` (SIGTERM: a checkpoint was saved at the end of the step).
        last_record: the last ``metrics.jsonl`` record of this call (None if nothing was logged).
        checkpoint: the last checkpoint this call wrote (None if none).
    """

    run_dir: Path
    step: int
    stopped_by: Literal["finished", "preempted"]
    last_record: dict[str, Any] | None
    checkpoint: Path | None


class Preemption:
    """Turns SIGTERM into a request to checkpoint at the end of the current step and stop."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = threading.current_thread() is threading.main_thread()
        if self._installed:
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def close(self) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False


def _prepare_run_dir(run_dir: Path, recipe: Recipe, engine: Engine) -> None:
    """Rank 0 writes the resolved recipe; every rank checks it can see it (shared filesystem)."""
    if engine.dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RECIPE_FILE).write_text(recipe.to_yaml())
    engine.barrier()
    if not (run_dir / RECIPE_FILE).is_file():
        raise ValueError(f"rank {engine.dist.rank} cannot see {run_dir / RECIPE_FILE} written by rank 0: run_dir must be "
                         "on a filesystem shared by every node (checkpoints are written there by all ranks)")


def train(recipe: Recipe, resume: str = "auto", *, save_checkpoints: bool = True) -> RunResult:
    """Train ``recipe`` (or continue it) until ``max_steps`` or the end of its schedules.

    Args:
        recipe: a validated recipe.
        resume: ``"auto"`` continues from the newest complete checkpoint in the run directory
            (or starts fresh if there is none), ``"none"`` starts fresh (refused if the run
            directory holds checkpoints), a path names a checkpoint or run directory to continue.
        save_checkpoints: False for throughput benchmarks (nothing but metrics is written).

    Raises:
        ValueError: the checkpoint does not fit the recipe, the batch does not divide, ...
        jepa.monitor.NonFiniteLossError / RepresentationCollapseError: the run went bad.
    """
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    modality = registry.bind(recipe.modality)
    run_dir = recipe.resolved_run_dir
    total_steps, warmup_steps = recipe.total_steps, recipe.warmup_steps
    last_step = min(total_steps, recipe.max_steps or total_steps)
    o = recipe.optim

    torch.manual_seed(recipe.seed)  # identical initial weights on every rank
    encoder, predictor = modality.build_encoder(), modality.build_predictor()
    mask_sampler = modality.build_mask_sampler()
    engine = Engine(encoder, predictor, engine_cfg=recipe.engine, optim_cfg=o,
                    target_updater=EMATargetUpdater(recipe.ema.momentum, recipe.ema.final_momentum, total_steps),
                    global_batch_size=recipe.data.global_batch_size)
    preemption = Preemption()
    monitor = None
    try:
        start_step, loader_state = 0, None
        resume_from = checkpoint.resolve_resume(resume, run_dir) if save_checkpoints else None
        seen = engine.all_gather_object(str(resume_from))
        if len(set(seen)) > 1:
            raise ValueError(f"ranks disagree on the checkpoint to resume from ({seen}); run_dir must be on a "
                             "filesystem every node sees the same way")
        if resume_from is not None:
            point = checkpoint.load_checkpoint(engine, resume_from, recipe)
            start_step, loader_state = point.step, point.loader_state
        _prepare_run_dir(run_dir, recipe, engine)
        loader = build_train_loader(recipe.data, modality, mask_sampler, seed=recipe.seed, rank=engine.dist.rank,
                                    world_size=engine.dist.world_size, micro_batch_size=engine.micro_batch_size,
                                    state=loader_state)
        monitor = Monitor(recipe.log, run_dir, engine, start_step=start_step, last_step=last_step,
                          samples_per_step=recipe.data.global_batch_size,
                          flops_per_sample=modality.train_flops_per_sample())
        device, accum = engine.dist.device, engine.grad_accum_steps
        batches = iter(loader)
        record, saved, preempted, done = None, None, False, start_step

        for step in range(start_step, last_step):
            lr = warmup_cosine(step, warmup_steps=warmup_steps, total_steps=total_steps,
                               start=o.start_lr, peak=o.lr, final=o.final_lr)
            weight_decay = cosine(step, total_steps=total_steps, start=o.weight_decay, final=o.final_weight_decay)
            engine.set_optim_hparams(lr, weight_decay)

            for _ in range(accum):
                t0 = time.perf_counter()
                batch = next(batches).to(device, non_blocking=True)
                monitor.data_wait(time.perf_counter() - t0)
                with engine.autocast():
                    targets = target_tokens(engine.target_encoder, batch.inputs, batch.masks,
                                            normalize=recipe.loss.normalize_targets)
                    predictions = engine.model(batch.inputs, batch.masks)
                loss = latent_loss(predictions, targets, recipe.loss.kind)
                engine.backward(loss)
                engine.step()
                monitor.accumulate(loss, step + 1, weight=1.0 / accum)

            momentum = engine.update_target(step)
            monitor.end_step()
            done = step + 1

            # All ranks must stop at the same step; agreeing costs a host collective, so only on log steps.
            if done % recipe.log.every_steps == 0 or done == last_step:
                preempted = engine.any_rank(preemption.requested)
            if done % recipe.log.every_steps == 0 or done == last_step or preempted:
                record = monitor.log(done, lr=lr, weight_decay=weight_decay, momentum=momentum, targets=targets)
            if save_checkpoints and (done % recipe.checkpoint.every_steps == 0 or done == last_step or preempted):
                saved = checkpoint.save_checkpoint(engine, run_dir, done, recipe, loader.state_dict(),
                                                   recipe.checkpoint.keep_last)
            if preempted:
                break

        return RunResult(run_dir=run_dir, step=done, stopped_by="preempted" if preempted else "finished",
                         last_record=record, checkpoint=saved)
    finally:
        preemption.close()
        if monitor is not None:
            monitor.close()
        engine.close()
