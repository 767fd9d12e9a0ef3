"""``jepa train``, ``jepa info`` and ``jepa bench train``."""

from __future__ import annotations

import resource
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch
import typer
from rich.console import Console
from rich.table import Table

from jepa import objectives, registry
from jepa.cli.errors import cli_errors
from jepa.cli.options import ResumeOption, SetOption
from jepa.recipe import RecipeError, load_recipe, split_global_batch

console = Console()



def _is_rank0() -> bool:
    """Rank 0 of any launcher (torchrun, mpirun, srun) or a plain process (:mod:`jepa.launch`)."""
    from jepa.launch import detect

    return detect().is_main


def _step_profiler(device: torch.device, warmup: int, steps: int) -> "torch.profiler.profile":
    """A torch.profiler that records exactly the ``steps`` timed steps after ``warmup`` untimed ones
    (advanced by ``step()`` after every optimiser step)."""
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    # the profiler's own warm-up step is the last untimed one; with none, recording starts at once
    plan = schedule(skip_first=max(warmup - 1, 0), wait=0, warmup=min(warmup, 1), active=steps, repeat=1)
    return profile(activities=activities, schedule=plan)


def _print_profile(profiler: "torch.profiler.profile", step_times: list[float], device: torch.device) -> dict:
    """Print the :func:`jepa.profile.breakdown` of a finished profile; returns it as a dict."""
    from jepa.profile import breakdown

    steps = len(step_times)
    cats, ops = breakdown(profiler.key_averages(), device=device.type == "cuda", wall_seconds=sum(step_times))
    clock = "CUDA kernel" if device.type == "cuda" else "CPU"
    titles = (f"where a step's time goes ({clock} self time, {steps} profiled steps; the profiler slows them)",
              "largest operators outside the matrix products")
    for title, first, rows in zip(titles, ("category", "operator"), (cats, ops)):
        table = Table(title=title)
        for column, justify in ((first, "left"), ("ms / step", "right"), ("share", "right")):
            table.add_column(column, justify=justify)
        for c in rows:
            table.add_row(c.name, f"{1e3 * c.seconds / steps:.1f}", f"{100 * c.share:.1f} %")
        console.print(table)
    return {key: {c.name: {"ms_per_step": 1e3 * c.seconds / steps, "share": c.share} for c in rows}
            for key, rows in (("categories", cats), ("top_ops", ops))}


def _fmt_count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f}"


def register(app: typer.Typer, bench: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(recipe: Path = typer.Argument(..., help="Recipe YAML file"),
                  overrides: Optional[list[str]] = SetOption, resume: str = ResumeOption) -> None:
        """Train (or continue) a recipe: one CPU process, or many GPUs and nodes under a launcher.

        One process: `jepa train R`. One node: `torchrun --nproc_per_node=8 -m jepa.cli train R`.
        Many nodes: torchrun with --nnodes/--rdzv-endpoint on each node,
        `deepspeed --no_local_rank --hostfile HOSTS --module jepa.cli train R`, or Slurm:
        `srun python -m jepa.cli train R` with one task per GPU (ranks and rendezvous from SLURM_*; see
        examples/slurm/train.sbatch). The run dir must be on a filesystem all nodes share; one run at a time may
        use it (a lock). A checkpoint resumes on any number of processes (the micro batch is kept, the
        accumulation steps follow). SIGTERM saves a checkpoint at the end of the current step (several processes:
        of the next one, which all agree on) and exits 0; SIGTERM while waiting for data, or a second SIGTERM,
        exits 143 at once, leaving the last complete checkpoint.
        """
        from jepa.train import train

        with cli_errors():
            result = train(load_recipe(recipe, overrides or []), resume=resume)
        if _is_rank0():
            how = "preempted (SIGTERM): checkpoint saved" if result.stopped_by == "preempted" else "finished"
            console.print(f"{how} at step {result.step}; run dir {result.run_dir}"
                          + (f", checkpoint {result.checkpoint}" if result.checkpoint else ""), highlight=False)

    @app.command("info")
    def info(recipe: Path = typer.Argument(..., help="Recipe YAML file"), overrides: Optional[list[str]] = SetOption) -> None:
        """Parameter counts and training FLOPs of a recipe's model (built on the meta device: instant, no memory)."""
        with cli_errors():
            r = load_recipe(recipe, overrides or [])
            modality = registry.bind(r.modality)
            objective = objectives.bind(r.objective, modality, total_steps=r.total_steps, seed=r.seed)
            with torch.device("meta"):
                model = objective.build_model()
                frozen = objective.build_frozen(model)
        flops = objective.train_flops_per_sample()
        table = Table(title=f"{r.name}: {modality.describe()}, {objective.describe()}", show_header=False)
        for name, part in model.named_children():
            table.add_row(f"{name} parameters", f"{sum(p.numel() for p in part.parameters()):,}")
        for name, part in frozen.items():
            table.add_row(f"{name} parameters (EMA copy, not trained)", f"{sum(p.numel() for p in part.parameters()):,}")
        table.add_row("total trainable parameters", f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}")
        table.add_row("training FLOPs per sample (expectation, docs/flops.md)",
                      _fmt_count(flops) + "FLOP" if flops else "unknown (counted on the first batch in training)")
        if flops:
            table.add_row(f"training FLOPs per step (batch {r.data.global_batch_size})",
                          _fmt_count(flops * r.data.global_batch_size) + "FLOP")
            table.add_row(f"training FLOPs for the run ({r.total_steps} steps)",
                          f"{flops * r.data.global_batch_size * r.total_steps:.3g} FLOP")
        console.print(table)

    @bench.command("train")
    def bench_train(recipe: Path = typer.Argument(..., help="Recipe YAML file"),
                    overrides: Optional[list[str]] = SetOption,
                    steps: int = typer.Option(20, "--steps", min=1, help="Training steps to time"),
                    warmup: int = typer.Option(3, "--warmup", min=1, help="Untimed steps first (allocation, compilation); the "
                                              "end of the last one starts the clock"),
                    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON here"),
                    profile: bool = typer.Option(False, "--profile", help="Profile the timed steps with torch.profiler "
                                                 "and print where the time goes (matmul / attention / the rest); "
                                                 "the profiler slows the steps, so time without it"),
                    trace: Optional[Path] = typer.Option(None, "--trace", help="With --profile: also write a Chrome "
                                                         "trace (chrome://tracing, Perfetto) here")) -> None:
        """Time training steps on the synthetic source: median step time, samples/s, achieved FLOP/s and MFU.

        MFU is the achieved FLOP/s (FLOPs counted as in docs/flops.md, on the tokens the collated masks
        actually run) over world size x the device peak: the GPU's dense peak from jepa.mfu's table, or
        on CPU a GEMM measured in this process between the timed steps (each step's ratio uses the GEMMs
        beside it; MFU is the median of those ratios). The bench times each step from the end of the
        previous one, without the per-log metrics training computes every log.every_steps.
        Runs under torchrun too (same code as `jepa train`); writes only metrics, into RUN_DIR-bench.
        """
        import json

        from jepa import mfu
        from jepa.monitor import read_metrics
        from jepa.outputs import check_output_file
        from jepa.train import train

        with cli_errors():
            if trace is not None and not profile:
                raise typer.BadParameter("--trace needs --profile")
            # before any work: the results would be lost at the end
            if json_out is not None:
                check_output_file(json_out, "--json", example="bench.json")
            if trace is not None:
                check_output_file(trace, "--trace", example="trace.json")
            base = load_recipe(recipe, overrides or [])
            bench_overrides = [*(overrides or []), "data.source=synthetic", f"max_steps={warmup + steps}",
                               f"log.every_steps={warmup + steps}", f"run_dir={base.resolved_run_dir}-bench"]
            r = load_recipe(recipe, bench_overrides)
            if r.total_steps < warmup + steps:
                raise RecipeError(str(recipe), [("optim.epochs", f"the schedules span {r.total_steps} steps, fewer than "
                                                 f"the {warmup + steps} to run; raise optim.epochs or lower --steps")])
            from jepa.launch import detect

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
        if not _is_rank0():
            return
        world = launch.world_size
        step_times = [end - start for start, end in zip(starts[warmup - 1:], ends[warmup:])]
        step_time = statistics.median(step_times)
        data_wait = read_metrics(r.resolved_run_dir)[-1]["data_wait_frac"]  # one record: the whole run
        samples_per_s = r.data.global_batch_size / step_time
        micro, _ = split_global_batch(r.data.global_batch_size, world, r.engine.grad_accum_steps, r.data.micro_batch_size)
        record = read_metrics(r.resolved_run_dir)[-1]
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
        peak_mem = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        table = Table(title=f"bench train: {r.name} ({len(step_times)} timed steps after {warmup} warm-up)", show_header=False)
        table.add_row("median step time", f"{step_time * 1e3:.1f} ms")
        table.add_row("samples/s", f"{samples_per_s:.1f}")
        table.add_row("global batch", str(r.data.global_batch_size))
        table.add_row("data wait (share of the run)", f"{100 * data_wait:.1f} %")
        step_faults = statistics.median(b - a for a, b in zip(faults[warmup - 1:], faults[warmup:]))
        table.add_row("page faults per step (median)", f"{step_faults:.0f} (host memory, rank 0)")
        if flops:
            table.add_row("training FLOPs per sample", _fmt_count(flops) + "FLOP")
            table.add_row("achieved FLOP/s (all ranks)", _fmt_count(flops * samples_per_s) + "FLOP/s")
        table.add_row("peak FLOP/s per device", (_fmt_count(peak) + "FLOP/s" if peak else "unknown") + f" ({peak_source})")
        table.add_row("MFU", f"{100 * utilisation:.1f} %" if utilisation is not None else "unknown")
        if peak_mem is not None:
            table.add_row("peak memory (rank 0)", f"{peak_mem / 2**30:.2f} GiB")
        console.print(table)
        breakdown = None
        if profiler is not None:
            breakdown = _print_profile(profiler, step_times, device)
            if trace is not None:
                with cli_errors():
                    profiler.export_chrome_trace(str(trace))
                console.print(f"trace written to {trace}")
        if json_out is not None:
            with cli_errors():
                json_out.write_text(json.dumps({
                    "recipe": r.name, "model": registry.bind(r.modality).describe(), "world_size": world,
                    "global_batch": r.data.global_batch_size, "micro_batch": micro, "precision": r.engine.precision,
                    "zero_stage": r.engine.zero_stage, "compile": r.engine.compile,
                    "activation_checkpointing": r.engine.activation_checkpointing, "device": str(device),
                    "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "step_time_s": step_time, "step_times_s": step_times, "gemm_flops_per_s": [g for g, _ in gemm],
                    "page_faults_per_step": step_faults, "samples_per_s": samples_per_s, "flops_per_sample": flops,
                    "peak_flops_per_s": peak, "peak_source": peak_source, "mfu": utilisation,
                    "peak_memory_bytes": peak_mem, "profile": breakdown}, indent=1) + "\n")
