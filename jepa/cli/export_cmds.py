"""``jepa export``: a frozen encoder as TorchScript or a ``torch.export`` program, or in a format its modality adds
(image: timm, Hugging Face, the authors' layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from jepa.cli.errors import cli_errors
from jepa.export import EXPORT_TOLERANCE, check_out_path, export
from jepa.sources import load_source

console = Console()


def register(app: typer.Typer, bench: typer.Typer) -> None:
    @app.command("export")
    def export_cmd(
        source: str = typer.Argument(..., help="Run dir, checkpoint (dir or models.pt), released .pth.tar, or random:RECIPE"),
        out: Path = typer.Option(..., "--out", "-o", help="File to write (nothing is written if verification fails)"),
        encoder: str = typer.Option("target", "--encoder", help="'target' (EMA; what the paper evaluates) or 'context'"),
        pooled: bool = typer.Option(False, "--pooled", help="Output the mean over tokens (B, D) instead of tokens (B, N, D)"),
        fmt: str = typer.Option("torchscript", "--format", help="Any modality: 'torchscript' (deprecated by PyTorch) or "
                                  "'torch-export' (.pt2 torch.export program: dynamic batch, and the sizes the modality "
                                  "declares: image height and width, video frames, height and width); or a format of the "
                                  "modality (image: 'timm' (folder for timm.create_model('local-dir:PATH', pretrained=True)), "
                                  "'hf' (transformers IJepaModel folder), 'official' (authors' .pth.tar; needs a run or "
                                  "checkpoint), 'safetensors-timm')"),
        crop_size: Optional[int] = typer.Option(None, "--crop-size", help="Released checkpoints: training resolution "
                                                "to record (default: inferred from pos_embed)"),
        arch: Optional[str] = typer.Option(None, "--arch", help="Released checkpoints: expected arch (e.g. vit_huge); "
                                           "a mismatch is an error"),
    ) -> None:
        """Export the target (or context) encoder, verified against eager PyTorch before writing.

        TorchScript files load with plain `torch.jit.load`, torch-export programs with `torch.export.load(path).module()`
        (no jepa needed); the file's metadata says how to feed them (images: (B, 3, H, W), any H, W divisible by the
        patch, normalised with the stored mean/std).
        """
        with cli_errors():
            check_out_path(out)  # before reading the source: nothing is loaded for an output that cannot be written
            src = load_source(source, which=encoder, crop_size=crop_size, arch=arch)  # type: ignore[arg-type]
            console.print(f"exporting the {src.which} encoder of {src.description} ({src.kind}"
                          + ("" if src.step is None else f", step {src.step}") + f") as {fmt}", highlight=False)
            result = export(src, out, fmt=fmt, pooled=pooled, tolerance=EXPORT_TOLERANCE,
                            log=lambda line: console.print(line, highlight=False))
        files = [p for p in result.path.rglob("*") if p.is_file()] if result.path.is_dir() else [result.path]
        size = sum(p.stat().st_size for p in files)
        console.print(f"[green]wrote[/] {result.path} ({size / 2**20:.1f} MiB)", highlight=False)
