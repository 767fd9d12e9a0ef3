"""The training loop: one flat function, readable top to bottom.

Per optimiser step: schedules (pure functions of the step) -> for each micro batch: data, the
objective's forward and loss (:mod:`jepa.objective`; I-JEPA: target tokens without gradients, then
context encoder + predictor per mask pair; LeJEPA: every view through encoder and projector,
prediction + SIGReg), backward, DeepSpeed step -> the objective's post-step update (I-JEPA: EMA of
the target encoder) -> stop vote (SIGTERM, see :mod:`jepa.preemption`) -> online k-NN probe (every
``eval.every_steps``, :mod:`jepa.online_eval`) -> log (every ``log.every_steps`` and with each
probe; loss and its terms, spread, RankMe) -> checkpoint (every
``checkpoint.every_steps``, at the end, and when preempted; the best by ``checkpoint.keep_best``
kept in ``RUN_DIR/best``, :mod:`jepa.best_checkpoint`).

Before the loop, rank 0 locks the run directory (:mod:`jepa.run_lock`) for the whole run, and
every check that can refuse the run (checkpoint integrity and fit, recipe changes, the data
stream's position) runs before anything in the run directory is written.

The same code runs as one CPU process, under ``torchrun`` or the ``deepspeed`` launcher on many
GPUs and nodes; :class:`~jepa.engine.Engine` hides the difference.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Literal

import torch

from jepa import checkpoint, init_from, objectives, registry
from jepa.best_checkpoint import BestCheckpoint
from jepa.data.build import build_train_loader
from jepa.data.redeal import redeal
from jepa.engine import Engine
from jepa.errors import ConfigError, UserError
from jepa.host_memory import retain_freed_memory
from jepa.mfu import TrainingPeak
from jepa.monitor import Monitor
from jepa.online_eval import OnlineKNN
from jepa.preemption import PreemptedError, Preemption, StopVote
from jepa.recipe import Recipe, micro_batch_warning
from jepa.run_lock import RunLock
from jepa.schedules import cosine, learning_rate

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


def _lock_run_dir(run_dir: Path, engine: Engine) -> RunLock | None:
    """Rank 0 locks the run directory; every rank raises the same error when that is refused."""
    lock, refusal = None, None
    if engine.dist.is_main:
        try:
            lock = RunLock.acquire(run_dir)
        except ValueError as exc:
            refusal = str(exc)
    refusal = engine.all_gather_object(refusal)[0]
    if refusal is not None:
        raise UserError(refusal)
    return lock


def _prepare_run_dir(run_dir: Path, recipe: Recipe, engine: Engine) -> None:
    """Rank 0 writes the resolved recipe; every rank checks it can see it (shared filesystem)."""
    if engine.dist.is_main:
        (run_dir / RECIPE_FILE).write_text(recipe.to_yaml())
    engine.barrier()
    if not (run_dir / RECIPE_FILE).is_file():
        raise ConfigError(f"rank {engine.dist.rank} cannot see {run_dir / RECIPE_FILE} written by rank 0: run_dir must be "
                         "on a filesystem shared by every node (checkpoints are written there by all ranks)")


def train(recipe: Recipe, resume: str = "auto", *, save_checkpoints: bool = True,
          step_hook: Callable[[int], None] | None = None) -> RunResult:
    """Train ``recipe`` (or continue it) until ``max_steps`` or the end of its schedules.

    Args:
        recipe: a validated recipe.
        resume: ``"auto"`` continues from the newest valid checkpoint in the run directory
            (or starts fresh if there is none), ``"none"`` starts fresh (refused if the run
            directory holds checkpoints), a path names a checkpoint or run directory to continue.
        save_checkpoints: False for throughput benchmarks (nothing but metrics is written).
        step_hook: called with the number of steps done after each optimiser step and the
            objective's update (EMA), before logging (``jepa bench train`` times steps and advances its profiler there).

    Raises:
        ValueError: the run directory is in use, the checkpoint is invalid or does not fit the
            recipe, the batch does not divide, ...
        jepa.run_stopped.RunStoppedError: the run went bad (non-finite loss, collapse, ...).
        jepa.preemption.PreemptedError: SIGTERM while waiting for data, or a second SIGTERM.
    """
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    modality = registry.bind(recipe.modality)
    run_dir = recipe.resolved_run_dir
    total_steps, warmup_steps = recipe.total_steps, recipe.warmup_steps
    last_step = min(total_steps, recipe.max_steps or total_steps)
    o = recipe.optim
    objective = objectives.bind(recipe.objective, modality, total_steps=total_steps, seed=recipe.seed)

    torch.manual_seed(recipe.seed)  # identical initial weights on every rank
    model = objective.build_model()
    init_states, init_dir = init_from.read_init_states(recipe.init_from, modality) if recipe.init_from else ({}, None)
    if recipe.init_from:  # checked now, before anything runs; loaded only if the run does not resume
        init_from.check_init_states(recipe.init_from, init_states, model, modality.describe())
        init_from.load_into_modules(init_states, model)
    batch_maker = objective.batch_maker()
    # a checkpoint of another number of processes keeps its micro batch: the accumulation steps follow
    engine_cfg, requested_micro_batch = checkpoint.resume_batch_split(recipe, resume if save_checkpoints else "none")
    engine = Engine(model, frozen=objective.build_frozen(model), engine_cfg=engine_cfg, optim_cfg=o,
                    global_batch_size=recipe.data.global_batch_size, requested_micro_batch=requested_micro_batch)
    if engine.dist.device.type == "cpu":
        retain_freed_memory()  # no page faults on the same activations every step (jepa.host_memory)
    preemption = Preemption()
    stop_vote = StopVote(engine)
    monitor = lock = loader = batches = None
    created_run_dir = not run_dir.exists()
    started = False
    try:
        lock = _lock_run_dir(run_dir, engine)
        start_step, loader_state = 0, None
        verify = partial(checkpoint.verify_collectively, engine)
        resume_from = checkpoint.resolve_resume(resume, run_dir, verify) if save_checkpoints else None
        seen = engine.all_gather_object(str(resume_from))
        if len(set(seen)) > 1:
            raise ConfigError(f"ranks disagree on the checkpoint to resume from ({seen}); run_dir must be on a "
                             "filesystem every node sees the same way")
        if resume_from is not None:
            redeal_positions = partial(redeal, data_cfg=recipe.data, seed=recipe.seed, rank=engine.dist.rank,
                                       world_size=engine.dist.world_size, micro_batch_size=engine.micro_batch_per_rank)
            point = checkpoint.load_checkpoint(engine, resume_from, recipe, redeal_positions=redeal_positions)
            start_step, loader_state = point.step, point.loader_state
        elif recipe.init_from:
            init_from.load_into_engine(recipe.init_from, init_states, init_dir, engine, run_dir)
        loader = build_train_loader(recipe.data, modality, batch_maker, seed=recipe.seed, rank=engine.dist.rank,
                                    world_size=engine.dist.world_size, micro_batch_size=engine.micro_batch_per_rank,
                                    state=loader_state)
        online_knn = None
        if recipe.eval.every_steps:
            online_knn = OnlineKNN(recipe.eval, modality, engine)
            part = objective.eval_part  # the EMA target, or the online encoder of objectives without one
            eval_encoder = engine.frozen[part] if part in engine.frozen else getattr(engine.module, part)
        started = True  # every check passed: from here on the run writes into its directory
        if engine.dist.is_main and (note := micro_batch_warning(recipe, engine.dist.world_size, engine.micro_batch_per_rank)):
            warnings.warn(note, stacklevel=1)
        _prepare_run_dir(run_dir, recipe, engine)
        keep_best = (BestCheckpoint(recipe.checkpoint.keep_best, run_dir)
                     if recipe.checkpoint.keep_best and save_checkpoints and engine.dist.is_main else None)
        monitor = Monitor(recipe.log, run_dir, engine, start_step=start_step, last_step=last_step,
                          samples_per_step=recipe.data.global_batch_size,
                          flops_per_sample=objective.train_flops_per_sample(engine.micro_batch_per_rank),
                          peak=TrainingPeak(engine.dist.device, recipe.engine.precision))
        device, accum = engine.dist.device, engine.grad_accum_steps
        batches = iter(loader)
        record, saved, preempted, done = None, None, False, start_step
        count_flops = monitor.flops_per_sample is None  # objectives that count on the views' shapes: first batch

        for step in range(start_step, last_step):
            lr = learning_rate(step, o.lr_schedule, warmup_steps=warmup_steps, total_steps=total_steps,
                               start=o.start_lr, peak=o.lr, final=o.final_lr)
            weight_decay = cosine(step, total_steps=total_steps, start=o.weight_decay, final=o.final_weight_decay)
            engine.set_optim_hparams(lr, weight_decay)

            for _ in range(accum):
                t0 = time.perf_counter()
                # In-process loading (num_workers=0) is bounded work, not a wait: a SIGTERM then lets the step
                # finish and save. Only a wait on loader worker processes is cut short.
                with preemption.waiting_for_data() if recipe.data.num_workers > 0 else nullcontext():
                    batch = next(batches)
                batch = batch.to(device, non_blocking=True)
                monitor.data_wait(time.perf_counter() - t0)
                if count_flops:
                    monitor.flops_per_sample = objective.train_flops_per_sample(engine.micro_batch_per_rank, batch)
                    count_flops = False
                out = objective.loss(engine, batch, step)
                engine.backward(out.loss)
                engine.step()
                monitor.accumulate(out.loss, step + 1, weight=1.0 / accum, terms=out.terms)

            updated = objective.after_step(engine, step)
            monitor.end_step()
            done = step + 1
            if step_hook is not None:
                step_hook(done)

            # Every rank stops after the same step; the vote read here was started a step ago (no wait).
            preempted = stop_vote.after_step(preemption.requested)
            evaluated = None
            if online_knn and online_knn.due(done, last_step) and not preempted:  # SIGTERM: save first
                t0 = time.perf_counter()
                evaluated = online_knn(eval_encoder)
                evaluated["eval_time_s"] = time.perf_counter() - t0
                monitor.exclude_time(evaluated["eval_time_s"])
            if done % recipe.log.every_steps == 0 or done == last_step or preempted or evaluated:
                record = monitor.log(done, lr=lr, weight_decay=weight_decay, representations=out.representations,
                                     objective_metrics=updated, extra=evaluated)
                if keep_best:
                    keep_best.observe(record)
            if save_checkpoints and (done % recipe.checkpoint.every_steps == 0 or done == last_step or preempted):
                saved = checkpoint.save_checkpoint(engine, run_dir, done, recipe, loader.state_dict(),
                                                   recipe.checkpoint.keep_last)
                if keep_best:
                    keep_best.offer(saved, done)
            if preempted:
                break

        stop_vote.close()
        return RunResult(run_dir=run_dir, step=done, stopped_by="preempted" if preempted else "finished",
                         last_record=record, checkpoint=saved)
    except Exception as exc:
        if preemption.requested and not isinstance(exc, PreemptedError):  # e.g. a collective with a rank that stopped
            detail = (str(exc).splitlines() or [""])[0][:200]
            raise PreemptedError(f"stopped by SIGTERM before a checkpoint could be saved ({type(exc).__name__}: {detail}); "
                                 "the last complete checkpoint is intact (resume with --resume auto)") from exc
        raise
    finally:
        preemption.close()
        if loader is not None:  # workers ignore SIGTERM until closed, so a stalled one can be stopped
            loader.close()
        if hasattr(batches, "close"):  # a generator: ends the iteration and its workers now
            batches.close()
        if monitor is not None:
            monitor.close()
        engine.close()
        if lock is not None:
            lock.release()
            if created_run_dir and not started and run_dir.is_dir() and not any(run_dir.iterdir()):
                run_dir.rmdir()  # a refused run leaves no trace
