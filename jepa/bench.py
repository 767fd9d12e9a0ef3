"""Timing training steps (``jepa bench train``): median step time, samples/s, achieved FLOP/s and MFU.

:func:`bench_train` runs the recipe's own training loop (:func:`jepa.train.train`) on the
synthetic source, times each step from the end of the previous one (without the per-log metrics
training computes every ``log.every_steps``) and returns a :class:`TrainBench` that the CLI
prints; it writes only metrics, into ``RUN_DIR-bench``.

MFU is the achieved FLOP/s (FLOPs counted as in docs/flops.md, on the tokens the collated masks
actually run) over world size x the device peak: the GPU's dense peak from :mod:`jepa.mfu`'s
table, or on CPU a GEMM measured in this process between the timed steps (each step's ratio uses
the GEMMs beside it; MFU is the median of those ratios).
"""

from __future__ import annotations

import resource
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from jepa import mfu, objectives, registry
from jepa.launch import detect
from jepa.monitor import read_metrics
from jepa.profile import Category, breakdown
from jepa.recipe import Recipe, RecipeError, load_recipe, split_global_batch
from jepa.train import train


@dataclass(frozen=True)
class StepProfile:
    """Where the profiled steps' time went (:func:`jepa.profile.breakdown`), over ``steps`` steps."""

    categories: list[Category]
    top_ops: list[Category]
    steps: int
    device_kernels: bool
    """Self times are CUDA kernel times (else CPU times)."""

    def to_json(self) -> dict[str, dict[str, dict[str, float]]]:
        return {key: {c.name: {"ms_per_step": 1e3 * c.seconds / self.steps, "share": c.share} for c in rows}
                for key, rows in (("categories", self.categories), ("top_ops", self.top_ops))}


@dataclass(frozen=True)
class TrainBench:
    """What ``jepa bench train`` measured on rank 0 (times in seconds, FLOPs per sample and per second)."""

    recipe: Recipe
    """The recipe as run (synthetic source, bench run dir, max_steps = warmup + timed steps)."""
    warmup: int
    world_size: int
    micro_batch: int
    device: torch.device
    step_times: list[float]
    """Every timed step, from the end of the previous one."""
    data_wait: float
    """Share of the run spent waiting for data."""
    page_faults_per_step: float
    """Median minor page faults of rank 0 per step (host memory)."""
    gemm_flops_per_s: list[float]
    """CPU: the measured GEMMs' FLOP/s; GPU: empty."""
    flops_per_sample: float | None
    peak_flops_per_s: float | None
    peak_source: str
    mfu: float | None
    peak_memory_bytes: int | None
    """GPU memory allocated at most on rank 0; None on CPU."""
    profile: StepProfile | None

    @property
    def step_time(self) -> float:
        """Median of the timed steps."""
        return statistics.median(self.step_times)

    @property
    def samples_per_s(self) -> float:
        return self.recipe.data.global_batch_size / self.step_time

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` record."""
        r = self.recipe
        return {
            "recipe": r.name, "model": registry.bind(r.modality).describe(), "world_size": self.world_size,
            "global_batch": r.data.global_batch_size, "micro_batch": self.micro_batch, "precision": r.engine.precision,
            "zero_stage": r.engine.zero_stage, "compile": r.engine.compile,
            "activation_checkpointing": r.engine.activation_checkpointing, "device": str(self.device),
            "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "step_time_s": self.step_time, "step_times_s": self.step_times, "gemm_flops_per_s": self.gemm_flops_per_s,
            "page_faults_per_step": self.page_faults_per_step, "samples_per_s": self.samples_per_s,
            "flops_per_sample": self.flops_per_sample, "peak_flops_per_s": self.peak_flops_per_s,
            "peak_source": self.peak_source, "mfu": self.mfu, "peak_memory_bytes": self.peak_memory_bytes,
            "profile": self.profile.to_json() if self.profile is not None else None}


def _step_profiler(device: torch.device, warmup: int, steps: int) -> "torch.profiler.profile":
    """A torch.profiler that records exactly the ``steps`` timed steps after ``warmup`` untimed ones
    (advanced by ``step()`` after every optimiser step)."""
    kind = torch.profiler.ProfilerActivity
    activities = [kind.CPU] + ([kind.CUDA] if device.type == "cuda" else [])
    # the profiler's own warm-up step is the last untimed one; with none, recording starts at once
    plan = torch.profiler.schedule(skip_first=max(warmup - 1, 0), wait=0, warmup=min(warmup, 1), active=steps, repeat=1)
    return torch.profiler.profile(activities=activities, schedule=plan)


def bench_recipe(recipe: Path, overrides: list[str], steps: int, warmup: int) -> Recipe:
    """The recipe as the bench runs it: synthetic data, ``warmup + steps`` steps logged once, run dir
    ``RUN_DIR-bench``.

    Raises:
        RecipeError: the recipe is invalid, or its schedules span fewer steps than the bench runs.
    """
    base = load_recipe(recipe, overrides)
    bench_overrides = [*overrides, "data.source=synthetic", f"max_steps={warmup + steps}",
                       f"log.every_steps={warmup + steps}", f"run_dir={base.resolved_run_dir}-bench"]
    r = load_recipe(recipe, bench_overrides)
    if r.total_steps < warmup + steps:
        raise RecipeError(str(recipe), [("optim.epochs", f"the schedules span {r.total_steps} steps, fewer than "
                                         f"the {warmup + steps} to run; raise optim.epochs or lower --steps")])
    return r


def bench_train(recipe: Path, overrides: list[str], steps: int, warmup: int, profile: bool = False,
                trace: Path | None = None) -> TrainBench | None:
    """Time ``steps`` training steps after ``warmup`` untimed ones (the end of the last starts the clock).

    Args:
        recipe: the recipe file; ``overrides`` are its ``--set`` values.
        profile: record the timed steps with torch.profiler (which slows them) and break their time down.
        trace: with ``profile``: also write a Chrome trace here (rank 0).

    Returns:
        The measurements on rank 0; None on the other ranks (they train alongside and report nothing).
    """
    r = bench_recipe(recipe, overrides, steps, warmup)
    launch = detect()
    device = torch.device("cuda", launch.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    dtype = mfu.compute_dtype(r.engine.precision)
    # CPU peak: a GEMM between every two timed steps (outside their time), each step paired with the
    # GEMMs beside it, so a neighbour's load shifts both alike. Profiled runs time it before and after
    # instead (the profiler would record the GEMMs).
    interleave = device.type == "cpu" and not profile
    gemm = [mfu.measure_gemm(device, dtype)] if device.type == "cpu" and not interleave else []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    profiler = _step_profiler(device, warmup, steps) if profile else None
    starts, ends = [], []  # of every step, timed without the per-log metrics (RankMe, ...)
    faults: list[int] = []  # minor page faults of this process at the end of every step

    def step_ended(done: int) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        ends.append(time.perf_counter())
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
        if profiler is not None:
            profiler.step()
        if interleave and done >= warmup:
            gemm.append(mfu.measure_gemm(device, dtype, repeats=1))
        starts.append(time.perf_counter())

    with profiler if profiler is not None else nullcontext():
        train(r, resume="none", save_checkpoints=False, step_hook=step_ended)
    gemm += [mfu.measure_gemm(device, dtype)] if device.type == "cpu" and not interleave else []
    if not launch.is_main:
        return None

    world = launch.world_size
    step_times = [end - start for start, end in zip(starts[warmup - 1:], ends[warmup:])]
    step_time = statistics.median(step_times)
    record = read_metrics(r.resolved_run_dir)[-1]  # one record: the whole run
    samples_per_s = r.data.global_batch_size / step_time
    micro, _ = split_global_batch(r.data.global_batch_size, world, r.engine.grad_accum_steps, r.data.micro_batch_size)
    flops = (objectives.bind(r.objective, registry.bind(r.modality)).train_flops_per_sample(micro)
             or (record["flops_per_s"] / record["samples_per_s"] if record.get("flops_per_s") else None))
    if gemm:
        peak = statistics.median(flops_per_s for flops_per_s, _ in gemm)
        where = "between the timed steps" if interleave else "before and after the steps"
        peak_source = f"measured: cpu {r.engine.precision} GEMM {max(n for _, n in gemm)}^3 {where}, this run"
    else:
        table = mfu.TrainingPeak(device, r.engine.precision)  # a GPU: the table's peak
        peak, peak_source = table.flops_per_s, table.source
    utilisation = mfu.mfu(flops * samples_per_s, peak, world) if flops else None
    if interleave and flops:  # the median of per-step ratios, each step over the mean of its two GEMMs
        utilisation = statistics.median(
            mfu.mfu(flops * r.data.global_batch_size / t, (g0 + g1) / 2, world)
            for t, (g0, _), (g1, _) in zip(step_times, gemm, gemm[1:]))
    step_profile = None
    if profiler is not None:
        cats, ops = breakdown(profiler.key_averages(), device=device.type == "cuda", wall_seconds=sum(step_times))
        step_profile = StepProfile(categories=cats, top_ops=ops, steps=len(step_times), device_kernels=device.type == "cuda")
        if trace is not None:
            profiler.export_chrome_trace(str(trace))
    return TrainBench(
        recipe=r, warmup=warmup, world_size=world, micro_batch=micro, device=device, step_times=step_times,
        data_wait=record["data_wait_frac"],
        page_faults_per_step=statistics.median(b - a for a, b in zip(faults[warmup - 1:], faults[warmup:])),
        gemm_flops_per_s=[g for g, _ in gemm], flops_per_sample=flops, peak_flops_per_s=peak, peak_source=peak_source,
        mfu=utilisation, peak_memory_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        profile=step_profile)
