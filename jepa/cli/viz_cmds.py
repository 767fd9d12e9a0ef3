"""``jepa viz``: pictures (PNG, and an HTML page with ``--html``) of masks and views, token features, nearest
neighbours, training curves and evaluation reports. The drawing lives in :mod:`jepa.viz`, imported inside
each command, so matplotlib is loaded only when a picture is drawn."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from jepa.cli.errors import cli_errors
from jepa.cli.options import SetOption
from jepa.recipe import load_recipe

console = Console()

HtmlOption = typer.Option(None, "--html", help="Also write an HTML page showing the picture(s) with captions")
EncoderOption = typer.Option(None, "--encoder", help="'target' (default) or 'context' encoder")
TrustOption = typer.Option(False, "--trust-torchscript", help="Allow a TorchScript SOURCE from `jepa export` (loading "
                           "it RUNS THE CODE stored in the file: only files you trust)")


def _png_size(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(24)
    width, height = struct.unpack(">II", head[16:24])
    return f"{width} x {height} px"


def _wrote(pictures: list[tuple[Path, str]], html: Optional[Path], title: str) -> None:
    for path, caption in pictures:
        console.print(f"[green]wrote[/] {path} ({_png_size(path)}): {caption}", highlight=False)
    if html is not None:
        from jepa.viz.gallery import write_gallery  # deferred: matplotlib, only for `jepa viz`

        console.print(f"[green]wrote[/] {write_gallery(html, title, pictures)}", highlight=False)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    viz = typer.Typer(help="Pictures (PNG) of masks and views, token features, neighbours, training curves and "
                           "evaluation reports.", no_args_is_help=True)
    app.add_typer(viz, name="viz")

    @viz.command("masks")
    def masks_cmd(
        recipe: Path = typer.Argument(..., help="Recipe YAML file (its data.train_shards are read)"),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG to write (default: masks.png, or views.png "
                                           "for views)"),
        num: int = typer.Option(6, "--num", help="Samples to draw"),
        views: bool = typer.Option(False, "--views", help="Draw the augmented views of each sample (objectives "
                                   "that sample views, e.g. LeJEPA; the default for them)"),
        generated: bool = typer.Option(False, "--generated", help="Draw the modality's generated demo samples "
                                       "(`jepa demo-data`) instead of the recipe's shards"),
        seed: int = typer.Option(0, "--seed", help="Seeds the augmentation and mask draws"),
        step: int = typer.Option(0, "--step", help="Optimiser step whose shared draws (block sizes) are used"),
        overrides: Optional[list[str]] = SetOption,
        html: Optional[Path] = HtmlOption,
    ) -> None:
        """Context and target blocks (or views) over real samples, as training makes them.

        The objective's batch maker and the modality's mask sampler make one batch of the samples exactly as in
        training (image: one column per sample; clips: one row per mask pair, a strip of frames); with --views,
        and for objectives without masks (LeJEPA), the views of each sample."""
        with cli_errors():
            from jepa.viz.masks import masks_picture  # deferred: matplotlib, only for `jepa viz`

            loaded = load_recipe(recipe, overrides or [])
            path = out or Path("views.png" if views else "masks.png")
            path = masks_picture(loaded, path, num=num, views=views, generated=generated, seed=seed, step=step,
                                 log=lambda line: console.print(line, highlight=False))
        _wrote([(path, f"masks or views of {num} samples, recipe {recipe}")], html, f"jepa viz masks {recipe}")

    @viz.command("features")
    def features_cmd(
        sources: list[str] = typer.Argument(..., help="Encoders, one column each: run dir, checkpoint, released "
                                            ".pth.tar, exported file, random:RECIPE"),
        data: str = typer.Option(..., "--data", help="Samples: shards (folder, pattern) or a folder of files"),
        compare: Optional[list[str]] = typer.Option(None, "--compare", help="More encoders to put beside (e.g. "
                                                    "random:RECIPE); repeatable"),
        num: int = typer.Option(6, "--num", help="Samples (rows)"),
        foreground: bool = typer.Option(False, "--foreground", help="Black out the background (the side of the "
                                        "first component holding most border tokens) and colour the rest"),
        out: Path = typer.Option(Path("features.png"), "--out", "-o", help="PNG to write"),
        encoder: Optional[str] = EncoderOption,
        trust_torchscript: bool = TrustOption,
        html: Optional[Path] = HtmlOption,
    ) -> None:
        """Token features as colours (first 3 principal components), one column per encoder.

        Fitted over the samples together, per encoder (clips: the middle frame's tokens), so a pretrained
        encoder and its random initialisation (--compare random:RECIPE) can be seen side by side."""
        with cli_errors():
            from jepa.viz.features import features_picture  # deferred: matplotlib, only for `jepa viz`

            path = features_picture([*sources, *(compare or [])], data, out, num=num, foreground=foreground,
                                    which=encoder, trust_torchscript=trust_torchscript)
        _wrote([(path, f"token features of {', '.join([*sources, *(compare or [])])}")], html, "jepa viz features")

    @viz.command("neighbours")
    def neighbours_cmd(
        source: str = typer.Argument(..., help="Encoder: run dir, checkpoint, released .pth.tar, exported file, "
                                     "random:RECIPE"),
        train_data: str = typer.Option(..., "--train-data", help="Labelled samples to search (shards or a folder "
                                       "of class sub-folders)"),
        val_data: str = typer.Option(..., "--val-data", help="Labelled samples to take the queries from"),
        queries: int = typer.Option(6, "--queries", help="Queries (rows), one class after another"),
        k: int = typer.Option(6, "--k", help="Neighbours per query"),
        max_train: int = typer.Option(1000, "--max-train", help="Training samples searched, spread over the split"),
        out: Path = typer.Option(Path("neighbours.png"), "--out", "-o", help="PNG to write"),
        encoder: Optional[str] = EncoderOption,
        trust_torchscript: bool = TrustOption,
        html: Optional[Path] = HtmlOption,
    ) -> None:
        """Queries and their k nearest training samples under the encoder (pooled, cosine).

        Class names shown; neighbours of the query's class framed green, others red."""
        with cli_errors():
            from jepa.viz.neighbours import neighbours_picture  # deferred: matplotlib, only for `jepa viz`

            path = neighbours_picture(source, train_data, val_data, out, queries=queries, k=k, max_train=max_train,
                                      which=encoder, trust_torchscript=trust_torchscript)
        _wrote([(path, f"nearest neighbours under {source}")], html, "jepa viz neighbours")

    @viz.command("run")
    def run_cmd(
        run_dirs: list[Path] = typer.Argument(..., help="Run directories (overlaid)"),
        out: Path = typer.Option(Path("curves.png"), "--out", "-o", help="PNG to write"),
        html: Optional[Path] = HtmlOption,
    ) -> None:
        """Training curves: every metric of metrics.jsonl, one panel each, runs overlaid.

        The checkpoints on disk are dotted lines, the kept best (checkpoint.keep_best) a star."""
        with cli_errors():
            from jepa.viz.curves import run_picture  # deferred: matplotlib, only for `jepa viz`

            path = run_picture(run_dirs, out)
        _wrote([(path, f"training curves of {', '.join(map(str, run_dirs))}")], html, "jepa viz run")

    @viz.command("eval")
    def eval_cmd(
        reports: list[Path] = typer.Argument(..., help="Reports of `jepa eval --json` (one row each)"),
        out: Path = typer.Option(Path("eval.png"), "--out", "-o", help="PNG to write"),
        html: Optional[Path] = HtmlOption,
    ) -> None:
        """Evaluation reports: top-1 per protocol, probe grids (lr x wd) as heat maps.

        Per-class accuracy too when the report has it; one row per report."""
        with cli_errors():
            from jepa.viz.eval_report import eval_picture  # deferred: matplotlib, only for `jepa viz`

            path = eval_picture(reports, out)
        _wrote([(path, f"evaluation reports {', '.join(map(str, reports))}")], html, "jepa viz eval")
