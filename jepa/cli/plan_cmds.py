"""``jepa plan``: per-rank GPU memory of a recipe by ZeRO stage, and the micro batch that fits."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from jepa.cli.errors import cli_errors
from jepa.cli.options import SetOption
from jepa.plan import parse_bytes, plan_recipe
from jepa.recipe import load_recipe

console = Console()


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


def register(app: typer.Typer, bench: typer.Typer) -> None:
    @app.command("plan")
    def plan_cmd(recipe: Path = typer.Argument(..., help="Recipe YAML file"),
                 overrides: Optional[list[str]] = SetOption,
                 gpus: int = typer.Option(8, "--gpus", min=1, help="Number of GPUs (ranks)"),
                 gpu_memory: str = typer.Option("80GB", "--gpu-memory", help="Memory per GPU, e.g. 80GB, 40GB, 141GB")) -> None:
        """Per-rank memory (parameters, gradients, optimiser state by ZeRO stage, EMA target, activations)
        and the largest micro batch that fits; suggests stage, micro batch and accumulation (estimates: see jepa/plan.py)."""
        with cli_errors():
            r = load_recipe(recipe, overrides or [])
            p = plan_recipe(r, gpus, parse_bytes(gpu_memory))
        ck = "with" if p.checkpointing else "without"
        table = Table(title=f"{r.name} on {gpus} x {gpu_memory} ({r.engine.precision}, {ck} activation checkpointing; "
                      f"GiB per rank; usable {_gib(p.usable)})")
        for col in ("ZeRO", "params", "grads", "fp32 master", "Adam", "frozen (EMA)", "buffers", "static",
                    "act./sample at max", "max micro batch (<= global/GPUs)"):
            table.add_column(col, justify="right")
        for s in p.stages:
            table.add_row(str(s.stage), _gib(s.parameters), _gib(s.gradients), _gib(s.master), _gib(s.optimizer),
                          _gib(s.target), _gib(s.buffers), _gib(s.static), _gib(s.activations_per_sample),
                          str(s.max_micro_batch))
        console.print(table)
        console.print(f"trainable parameters {p.trainable:,} (frozen replicas such as the EMA target {p.encoder:,}); global batch "
                      f"{r.data.global_batch_size}", highlight=False)
        if p.suggestion:
            stage, mb, accum, ckpt = p.suggestion
            console.print(f"suggested: --set engine.zero_stage={stage} --set data.micro_batch_size={mb} "
                          f"--set engine.activation_checkpointing={str(ckpt).lower()} (micro batch {mb} per GPU, "
                          f"{accum} accumulation step(s) on {gpus} GPUs, derived from data.global_batch_size)",
                          highlight=False)
        else:
            console.print(f"no suggestion: {p.suggestion_note}", highlight=False)
