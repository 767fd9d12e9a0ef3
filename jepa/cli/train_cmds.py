"""``jepa train``, ``jepa info`` and ``jepa bench train``."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Optional

import torch
import typer
from rich.console import Console
from rich.table import Table

from jepa import registry
from jepa.cli.errors import cli_errors
from jepa.cli.options import ResumeOption, SetOption
from jepa.recipe import RecipeError, load_recipe

console = Console()



def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


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
        Many nodes: torchrun with --nnodes/--rdzv-endpoint on each node, or
        `deepspeed --no_local_rank --hostfile HOSTS --module jepa.cli train R`. The run dir must be on a filesystem
        all nodes share. SIGTERM saves a checkpoint at the end of the current step and exits 0.
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
        r = load_recipe(recipe, overrides or [])
        modality = registry.bind(r.modality)
        with torch.device("meta"):
            encoder, predictor = modality.build_encoder(), modality.build_predictor()
        n_enc = sum(p.numel() for p in encoder.parameters())
        n_pred = sum(p.numel() for p in predictor.parameters())
        trainable = sum(p.numel() for m in (encoder, predictor) for p in m.parameters() if p.requires_grad)
        flops = modality.train_flops_per_sample()
        table = Table(title=f"{r.name}: {modality.describe()}", show_header=False)
        table.add_row("context encoder parameters", f"{n_enc:,}")
        table.add_row("target encoder parameters (EMA copy, not trained)", f"{n_enc:,}")
        table.add_row("predictor parameters", f"{n_pred:,}")
        table.add_row("total trainable parameters", f"{trainable:,}")
        table.add_row("training FLOPs per sample", _fmt_count(flops) + "FLOP" if flops else "unknown")
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
                    warmup: int = typer.Option(3, "--warmup", min=0, help="Untimed steps first (allocation, compilation)")) -> None:
        """Time training steps on the synthetic source: median step time, samples/s, achieved FLOP/s.

        Runs under torchrun too (same code as `jepa train`); writes only metrics, into RUN_DIR-bench.
        """
        from jepa.monitor import read_metrics
        from jepa.train import train

        base = load_recipe(recipe, overrides or [])
        bench_overrides = [*(overrides or []), "data.source=synthetic", f"max_steps={warmup + steps}",
                           "log.every_steps=1", f"run_dir={base.resolved_run_dir}-bench"]
        r = load_recipe(recipe, bench_overrides)
        if r.total_steps < warmup + steps:
            raise RecipeError(str(recipe), [("optim.epochs", f"the schedules span {r.total_steps} steps, fewer than the "
                                             f"{warmup + steps} to run; raise optim.epochs or lower --steps")])
        train(r, resume="none", save_checkpoints=False)
        if not _is_rank0():
            return
        records = read_metrics(r.resolved_run_dir)[warmup:]
        step_time = statistics.median(rec["step_time_s"] for rec in records)
        samples_per_s = r.data.global_batch_size / step_time
        flops = registry.bind(r.modality).train_flops_per_sample()
        table = Table(title=f"bench train: {r.name} ({len(records)} timed steps after {warmup} warm-up)", show_header=False)
        table.add_row("median step time", f"{step_time * 1e3:.1f} ms")
        table.add_row("samples/s", f"{samples_per_s:.1f}")
        table.add_row("global batch", str(r.data.global_batch_size))
        table.add_row("data wait (median share)", f"{100 * statistics.median(rec['data_wait_frac'] for rec in records):.1f} %")
        if flops:
            table.add_row("training FLOPs per sample", _fmt_count(flops) + "FLOP")
            table.add_row("achieved FLOP/s (all ranks)", _fmt_count(flops * samples_per_s) + "FLOP/s")
        console.print(table)
