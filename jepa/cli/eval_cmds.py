"""``jepa eval``: frozen-feature probes (linear, linear4, k-NN, attentive) on labelled shards."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console

from jepa.cli.errors import cli_errors

console = Console()


def register(app: typer.Typer, bench: typer.Typer) -> None:
    @app.command("eval")
    def eval_cmd(
        source: str = typer.Argument(..., help="Run dir, checkpoint (dir or models.pt), released .pth.tar, file from "
                                               "`jepa export` (with --trust-torchscript), or random:RECIPE (random-init "
                                               "baseline)"),
        train_shards: str = typer.Option(..., "--train-shards", help="Labelled shards the probes are fitted on"),
        val_shards: str = typer.Option(..., "--val-shards", help="Labelled shards the probes are scored on"),
        protocol: str = typer.Option("linear,knn", "--protocol", help="Comma-separated: linear, linear4, knn, attentive"),
        k: int = typer.Option(20, "--k", help="Neighbours of the k-NN probe"),
        temperature: float = typer.Option(0.07, "--temperature", help="k-NN vote temperature"),
        low_shot: Optional[float] = typer.Option(None, "--low-shot", help="Fit on this fraction of each class's "
                                                 "training labels (seeded), e.g. 0.01"),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="Full-batch L-BFGS iterations of the linear "
                                             "probes (default 100); AdamW epochs of the attentive probe (default 20)"),
        batch_size: int = typer.Option(64, "--batch-size", help="Images per encoder forward"),
        lr: float = typer.Option(1e-3, "--lr", help="Peak AdamW learning rate of the attentive probe"),
        seed: int = typer.Option(0, "--seed", help="Seeds the low-shot subset and the probes"),
        num_workers: int = typer.Option(0, "--num-workers", help="Data-loader processes"),
        device: str = typer.Option("cpu", "--device", help="Where the encoder runs: cpu, cuda, cuda:1 (probes run on the CPU)"),
        encoder: Optional[str] = typer.Option(None, "--encoder", help="'target' (default, as in the paper) or 'context'"),
        crop_size: Optional[int] = typer.Option(None, "--crop-size", help="Released checkpoints: evaluation resolution"),
        arch: Optional[str] = typer.Option(None, "--arch", help="Released checkpoints: expected arch; a mismatch is an error"),
        json_out: Optional[str] = typer.Option(None, "--json", help="Write the report as JSON to this file ('-': stdout)"),
        trust_torchscript: bool = typer.Option(False, "--trust-torchscript", help="Allow a TorchScript SOURCE (from "
                                               "`jepa export`). Loading TorchScript RUNS THE CODE stored in the file: "
                                               "use only files from a source you trust"),
    ) -> None:
        """Evaluate frozen features: top-1 (top-5 with >= 10 classes) of each probe, as a table and JSON."""
        from jepa.eval.evaluate import EvalSettings, evaluate_shards, parse_protocols
        from jepa.sources import load_source

        with cli_errors():
            settings = EvalSettings(
                protocols=parse_protocols(protocol), k=k, temperature=temperature, low_shot=low_shot, epochs=epochs,
                batch_size=batch_size, lr=lr, seed=seed, num_workers=num_workers, device=device,
            )
            src = load_source(source, which=encoder, trust_torchscript=trust_torchscript,  # type: ignore[arg-type]
                              crop_size=crop_size, arch=arch)
            report = evaluate_shards(src, train_shards, val_shards, settings)
        if json_out == "-":
            print(json.dumps(report.to_dict(), indent=2))
            return
        console.print(report.table())
        if json_out:
            report.write_json(json_out)
            console.print(f"[green]wrote[/] {json_out}", highlight=False)
