"""``jepa eval``: frozen-feature probes on labelled shards or a folder of class sub-folders."""

from __future__ import annotations

import json
import re
from typing import Optional

import typer
from rich.console import Console

from jepa.cli.errors import cli_errors
from jepa.errors import ConfigError
from jepa.eval.evaluate import EvalSettings, evaluate_shards, parse_protocols
from jepa.eval.grid import parse_floats
from jepa.eval.protocols import PROTOCOLS
from jepa.outputs import check_output_file
from jepa.recipe import DataConfig, EvalConfig
from jepa.sources import load_source

console = Console()

EVAL_HELP = """Evaluate frozen features: top-1 (top-5 with >= 10 classes) of each probe, as tables and JSON.

Every protocol reads the frozen encoder (target by default) on the modality's evaluation view \
(images: shorter side resized to crop*256/224, centre crop). Exact definitions, and which paper \
protocol each matches or not: docs/eval_protocols.md.

{protocols}

Before any heavy work the memory each protocol needs is added up per place (host memory, GPU, \
disk) and a plan that does not fit is refused with the numbers and the flags to change."""


def _eval_help() -> str:
    """:data:`EVAL_HELP` with one paragraph per registered protocol (its declared ``help``)."""
    return EVAL_HELP.format(protocols="\n\n".join(f"{p.name}: {p.help}" for p in PROTOCOLS.values()))


def _epochs_help() -> str:
    defaults = ", ".join(f"{p.name} {p.default_epochs}" for p in PROTOCOLS.values() if p.default_epochs is not None)
    return f"Epochs of the grid probes (default: {defaults})"


def _floats(text: str, flag: str) -> tuple[float, ...]:
    return parse_floats(text, flag)


def _recipe_bound(flag: str, value: int, section: str, field: str) -> None:
    """Refuse ``value`` of ``flag`` above the bound of the recipe field it corresponds to (``section.field``),
    read from the field itself so that both stay the same, with the field's reason."""
    info = {"data": DataConfig, "eval": EvalConfig}[section].model_fields[field]
    most = next(m.le for m in info.metadata if getattr(m, "le", None) is not None)
    if value > most:
        reason = re.search(r"\(at most [^:()]*: ([^()]*)\)", info.description or "")
        raise ConfigError(f"{flag} {value} is more than the {most:,} allowed (as for the recipe's {section}.{field})"
                         f"{f': {reason.group(1)}' if reason else ''}; lower {flag}")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    @app.command("eval", help=_eval_help())
    def eval_cmd(
        source: str = typer.Argument(..., help="Run dir, checkpoint (dir or models.pt), released .pth.tar, file from "
                                               "`jepa export` (with --trust-torchscript), random:RECIPE (random-init "
                                               "baseline) or pixels:RECIPE (probes on the raw evaluation view)"),
        train_data: str = typer.Option(..., "--train-data", "--train-shards",
                                       help="Training split: labelled shards (folder, brace pattern, URLs) or a folder "
                                            "of class sub-folders of images (read directly; files that do not decode "
                                            "are skipped and counted)"),
        val_data: str = typer.Option(..., "--val-data", "--val-shards", help="Validation split, as --train-data"),
        protocol: str = typer.Option("linear,knn", "--protocol",
                                     help=f"Comma-separated: {', '.join(PROTOCOLS)}"),
        device: Optional[str] = typer.Option(None, "--device", help="Where the encoder and probes run: cuda, cuda:1, "
                                             "cpu (default: cuda if available, else cpu)"),
        precision: str = typer.Option("auto", "--precision", help="bf16 autocast (CUDA only) or fp32; auto: bf16 on "
                                      "CUDA, fp32 on CPU"),
        batch_size: int = typer.Option(64, "--batch-size", help="Samples per encoder forward and per probe step; a larger batch runs the encoder more efficiently but gives fewer optimiser steps per epoch"),
        epochs: Optional[int] = typer.Option(None, "--epochs", help=_epochs_help()),
        linear_lrs: str = typer.Option("1e-3,3e-3,1e-2,3e-2,0.1,0.3,1", "--linear-lrs", help="Peak AdamW learning rates of the "
                                       "linear grid"),
        linear_wds: str = typer.Option("0,1e-4,1e-3", "--linear-wds", help="AdamW weight decays of the linear grid"),
        attentive_lrs: str = typer.Option("3e-4,1e-3,3e-3,1e-2", "--attentive-lrs", help="Peak AdamW learning rates "
                                          "of the attentive grid"),
        attentive_wds: str = typer.Option("1e-2,1e-1,0.4", "--attentive-wds", help="AdamW weight decays of the "
                                          "attentive grid"),
        attentive_depth: int = typer.Option(1, "--attentive-depth", help="Blocks of the attentive probe: depth-1 "
                                            "self-attention, then cross-attention (V-JEPA 2's configs use 4)"),
        attentive_heads: Optional[int] = typer.Option(None, "--attentive-heads", help="Attention heads of the "
                                                      "attentive probe (default: token width / 64)"),
        warmup_epochs: float = typer.Option(0.0, "--warmup-epochs", help="Linear lr warmup of the grid probes"),
        holdout: float = typer.Option(0.1, "--holdout", help="Class-stratified fraction of the training split held "
                                      "out to choose the best head of each grid"),
        augment: str = typer.Option("none", "--augment", help="Training view of the grid probes: none (evaluation "
                                    "view), crop (the modality's training crop), flip (the modality's evaluation "
                                    "augmentation: images and videos mirror the width of each sample with probability "
                                    "1/2), crop+flip"),
        feature_cache: str = typer.Option("auto", "--feature-cache", help="Where pooled features are stored: auto "
                                          "(host memory if under 25 % of free memory, else the temp folder), memory, "
                                          "or a folder"),
        k: int = typer.Option(20, "--k", help="Neighbours of the k-NN probe"),
        temperature: float = typer.Option(0.07, "--temperature", help="k-NN vote temperature"),
        lbfgs_iters: int = typer.Option(100, "--lbfgs-iters", help="L-BFGS iterations of logreg / logreg4"),
        low_shot: Optional[float] = typer.Option(None, "--low-shot", help="Fit on this fraction of each class's "
                                                 "training labels (seeded), e.g. 0.01"),
        seed: int = typer.Option(0, "--seed", help="Seeds subsets, splits, initialisation, shuffling, augmentation"),
        num_workers: int = typer.Option(0, "--num-workers", help="Data-loader processes"),
        shuffle_buffer: int = typer.Option(1000, "--shuffle-buffer", help="Raw samples per loader worker buffered "
                                           "to shuffle shards"),
        encoder: Optional[str] = typer.Option(None, "--encoder", help="'target' (default, as in the paper) or 'context'"),
        crop_size: Optional[int] = typer.Option(None, "--crop-size", help="Released checkpoints: evaluation resolution"),
        arch: Optional[str] = typer.Option(None, "--arch", help="Released checkpoints: expected arch; a mismatch is an error"),
        json_out: Optional[str] = typer.Option(None, "--json", help="Write the report as JSON to this file ('-': stdout)"),
        trust_torchscript: bool = typer.Option(False, "--trust-torchscript", help="Allow a TorchScript SOURCE (from "
                                               "`jepa export`). Loading TorchScript RUNS THE CODE stored in the file: "
                                               "use only files from a source you trust"),
    ) -> None:
        with cli_errors():
            if json_out and json_out != "-":  # before any work: the report would be lost at the end
                check_output_file(json_out, "--json", example="report.json")
            for flag, value, section, field in (("--batch-size", batch_size, "eval", "batch_size"),
                                                ("--k", k, "eval", "k"),
                                                ("--num-workers", num_workers, "data", "num_workers"),
                                                ("--shuffle-buffer", shuffle_buffer, "data", "shuffle_buffer")):
                _recipe_bound(flag, value, section, field)
            settings = EvalSettings(
                protocols=parse_protocols(protocol), k=k, temperature=temperature, low_shot=low_shot, epochs=epochs,
                lbfgs_iters=lbfgs_iters, batch_size=batch_size, linear_lrs=_floats(linear_lrs, "--linear-lrs"),
                linear_wds=_floats(linear_wds, "--linear-wds"), attentive_lrs=_floats(attentive_lrs, "--attentive-lrs"),
                attentive_wds=_floats(attentive_wds, "--attentive-wds"), attentive_depth=attentive_depth,
                attentive_heads=attentive_heads, warmup_epochs=warmup_epochs, holdout=holdout, augment=augment,
                feature_cache=feature_cache, shuffle_buffer=shuffle_buffer, seed=seed, num_workers=num_workers,
                device=device, precision=precision,
            )
            src = load_source(source, which=encoder, trust_torchscript=trust_torchscript,  # type: ignore[arg-type]
                              crop_size=crop_size, arch=arch)
            report = evaluate_shards(src, train_data, val_data, settings)
        if json_out == "-":
            print(json.dumps(report.to_dict(), indent=2))
            return
        console.print(report.table())
        for table in report.grid_tables():
            console.print(table)
        if json_out:
            with cli_errors():
                report.write_json(json_out)
            console.print(f"[green]wrote[/] {json_out}", highlight=False)
