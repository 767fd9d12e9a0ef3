"""``jepa train``, ``jepa info`` and ``jepa bench train``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
import typer
from rich.console import Console
from rich.table import Table

from jepa import objectives, registry
from jepa.cli.errors import cli_errors
from jepa.cli.options import ResumeOption, SetOption
from jepa.launch import detect
from jepa.outputs import check_output_file
from jepa.recipe import load_recipe

if TYPE_CHECKING:
    from jepa.bench import StepProfile, TrainBench

console = Console()



def _is_rank0() -> bool:
    """Rank 0 of any launcher (torchrun, mpirun, srun) or a plain process (:mod:`jepa.launch`)."""
    return detect().is_main


def _print_profile(profile: "StepProfile") -> None:
    """Print where the profiled steps' time went: categories, then the largest operators outside the matrix products."""
    clock = "CUDA kernel" if profile.device_kernels else "CPU"
    titles = (f"where a step's time goes ({clock} self time, {profile.steps} profiled steps; the profiler slows them)",
              "largest operators outside the matrix products")
    for title, first, rows in zip(titles, ("category", "operator"), (profile.categories, profile.top_ops)):
        table = Table(title=title)
        for column, justify in ((first, "left"), ("ms / step", "right"), ("share", "right")):
            table.add_column(column, justify=justify)
        for c in rows:
            table.add_row(c.name, f"{1e3 * c.seconds / profile.steps:.1f}", f"{100 * c.share:.1f} %")
        console.print(table)


def _print_bench(result: "TrainBench") -> None:
    """Print the table of ``jepa bench train``."""
    r, flops, peak = result.recipe, result.flops_per_sample, result.peak_flops_per_s
    table = Table(title=f"bench train: {r.name} ({len(result.step_times)} timed steps after {result.warmup} warm-up)",
                  show_header=False)
    table.add_row("median step time", f"{result.step_time * 1e3:.1f} ms")
    table.add_row("samples/s", f"{result.samples_per_s:.1f}")
    table.add_row("global batch", str(r.data.global_batch_size))
    table.add_row("data wait (share of the run)", f"{100 * result.data_wait:.1f} %")
    table.add_row("page faults per step (median)", f"{result.page_faults_per_step:.0f} (host memory, rank 0)")
    if flops:
        table.add_row("training FLOPs per sample", _fmt_count(flops) + "FLOP")
        table.add_row("achieved FLOP/s (all ranks)", _fmt_count(flops * result.samples_per_s) + "FLOP/s")
    table.add_row("peak FLOP/s per device", (_fmt_count(peak) + "FLOP/s" if peak else "unknown") + f" ({result.peak_source})")
    table.add_row("MFU", f"{100 * result.mfu:.1f} %" if result.mfu is not None else "unknown")
    if result.peak_memory_bytes is not None:
        table.add_row("peak memory (rank 0)", f"{result.peak_memory_bytes / 2**30:.2f} GiB")
    console.print(table)


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
        # deferred: DeepSpeed (jepa.train), only for `jepa train`; every command module loads at startup
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
        # deferred: DeepSpeed (jepa.bench -> jepa.train), only for `jepa bench train`
        from jepa.bench import bench_train as run_bench

        with cli_errors():
            if trace is not None and not profile:
                raise typer.BadParameter("--trace needs --profile")
            # before any work: the results would be lost at the end
            if json_out is not None:
                check_output_file(json_out, "--json", example="bench.json")
            if trace is not None:
                check_output_file(trace, "--trace", example="trace.json")
            result = run_bench(recipe, overrides or [], steps=steps, warmup=warmup, profile=profile, trace=trace)
        if result is None:  # not rank 0
            return
        _print_bench(result)
        if result.profile is not None:
            _print_profile(result.profile)
            if trace is not None:
                console.print(f"trace written to {trace}")
        if json_out is not None:
            with cli_errors():
                json_out.write_text(json.dumps(result.to_json(), indent=1) + "\n")
