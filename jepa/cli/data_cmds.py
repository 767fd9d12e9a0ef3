"""``jepa shards``, ``jepa demo-data`` and ``jepa bench data``."""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from jepa import objectives, registry
from jepa.cli.errors import cli_errors, err_console, user_error
from jepa.cli.options import SetOption
from jepa.data import expand_shards, read_shard, shard_folder
from jepa.data.build import build_train_loader
from jepa.data.manifest import MANIFEST_NAME
from jepa.data.reading import SHARD_ERRORS
from jepa.errors import ConfigError, DataError
from jepa.interfaces import DemoDataSpec, as_mask_pairs
from jepa.recipe import load_recipe
from jepa.text import printable

if TYPE_CHECKING:
    from jepa.interfaces import Modality

console = Console()
_SPEC = DemoDataSpec()  # the defaults of `jepa demo-data`
ModalityOption = typer.Option(None, "--modality", help="Modality plugin (`jepa modalities` lists them); default: "
                              "the --recipe's, else image")


def _bind_modality(name: str | None, recipe_file: Path | None) -> "Modality":
    """The modality ``name`` with its default config, or the ``--recipe``'s modality section.

    Raises:
        ValueError: unknown modality, bad recipe, or ``name`` contradicts the recipe.
    """
    if recipe_file is None:
        return registry.get(name or "image")()
    cfg = load_recipe(recipe_file).modality
    if name is not None and name != cfg.name:
        raise ConfigError(f"--modality {name} contradicts modality.name={cfg.name} of {recipe_file}; pass one of them")
    return registry.bind(cfg)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    @app.command("shards")
    def shards_cmd(
        src: Path = typer.Argument(..., help="Folder of sample files: class sub-folders (labelled) or the files "
                                   "directly (unlabelled)"),
        out: Path = typer.Argument(..., help="Output folder for the shards and manifest.json"),
        modality: Optional[str] = ModalityOption,
        recipe: Optional[Path] = typer.Option(None, "--recipe", help="Take the modality section from this recipe "
                                              "(its settings decide how samples are checked)"),
        max_count: int = typer.Option(1000, "--max-count", help="Most samples per shard"),
        max_size: float = typer.Option(1024, "--max-size", help="Most megabytes per shard"),
        workers: int = typer.Option(os.cpu_count() or 1, "--workers", help="Parallel writer processes"),
        prefix: str = typer.Option("shard", "--prefix", help="Shard file name prefix: PREFIX-000000.tar, ..."),
    ) -> None:
        """Write a folder of a modality's sample files as WebDataset shards plus manifest.json.

        The modality names its files (by suffix). Original bytes are stored (never re-encoded), with 'cls' labels
        from the sorted class folder names. Every file is decoded once as a check; unreadable files are reported
        and skipped.
        """
        out_existed = out.exists()
        with cli_errors():
            plugin = _bind_modality(modality, recipe)
            manifest = shard_folder(src, out, plugin, prefix=prefix, max_count=max_count,
                                    max_bytes=int(max_size * 2**20), workers=workers)
        for skipped in manifest.skipped[:20]:
            err_console.print(f"[yellow]skipped[/] {_shown(skipped.path)}: {_shown(skipped.error)}", highlight=False,
                              soft_wrap=True)
        if len(manifest.skipped) > 20:
            where = "" if manifest.total == 0 else " (see manifest.json)"
            err_console.print(f"[yellow]... and {len(manifest.skipped) - 20} more skipped files{where}[/]")
        settings = ("" if recipe is not None else f"; they were checked with the default {plugin.name} settings: pass "
                    "--recipe RECIPE to check them with your recipe's modality section")
        if manifest.total == 0:
            # an empty shard set is no result: leave nothing behind that would refuse the next attempt
            (out / MANIFEST_NAME).unlink(missing_ok=True)
            if not out_existed and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            raise user_error(DataError(f"none of the {plugin.name} files in {printable(str(src))} could be read "
                                        f"({len(manifest.skipped)} skipped){settings}; nothing was written"))
        labels = f", {len(manifest.classes)} classes" if manifest.classes else ", unlabelled"
        console.print(f"[green]wrote[/] {manifest.total} samples in {len(manifest.shards)} shards{labels}: "
                      f"{_shown(str(out / manifest.pattern))} ({len(manifest.skipped)} skipped, {manifest.ignored_files} "
                      "other files ignored)", highlight=False)

    @app.command("demo-data")
    def demo_data_cmd(
        out: Path = typer.Argument(..., help="Output folder (gets train/ and val/ shard sets)"),
        modality: str = typer.Option("image", "--modality", help="Modality plugin whose demo data to generate "
                                     "(`jepa modalities` lists them)"),
        num_train: Optional[int] = typer.Option(None, "--num-train", help="Training samples (default: the "
                                                "modality's, image 5000, video 2000)"),
        num_images: Optional[int] = typer.Option(None, "--num-images", hidden=True, help="Old name of --num-train"),
        num_val: Optional[int] = typer.Option(None, "--num-val", help="Held-out validation samples (default: the "
                                              "modality's, image 1000, video 500)"),
        size: Optional[int] = typer.Option(None, "--size", help="Sample size in the modality's terms (image side in "
                                           "pixels, ...); default: the modality's"),
        classes: Optional[int] = typer.Option(None, "--classes", help="Number of classes (default: the modality's, "
                                              "image 10, video 10)"),
        seed: int = typer.Option(_SPEC.seed, "--seed", help="Everything is a function of the seed"),
        max_count: Optional[int] = typer.Option(None, "--max-count", help="Samples per shard (default: the modality's)"),
        workers: int = typer.Option(os.cpu_count() or 1, "--workers", help="Parallel writer processes"),
    ) -> None:
        """Generate a labelled toy dataset (no download) for a demo, e.g. images of shapes made of parts."""
        given = {"num_train": num_train if num_images is None else num_images, "num_val": num_val,
                 "num_classes": classes, "size": size, "seed": seed, "max_count": max_count, "workers": workers}
        with cli_errors():
            cls = registry.get(modality)
            spec = dataclasses.replace(cls.demo_defaults, **{k: v for k, v in given.items() if v is not None})
            manifests = cls().write_demo_data(out, spec)
        for split, m in manifests.items():
            console.print(f"[green]{split}[/]: wrote {m.total} samples in {len(m.shards)} shards: "
                          f"{_shown(str(out / split / m.pattern))}", highlight=False)

    @bench.command("data")
    def bench_data(
        recipe_file: Path = typer.Argument(..., metavar="RECIPE", help="Recipe YAML"),
        overrides: Optional[list[str]] = SetOption,
        batches: int = typer.Option(20, "--batches", help="Batches timed per repeat"),
        repeats: int = typer.Option(3, "--repeats", help="Repeats (the median is reported)"),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per batch (default: the "
                                                 "recipe's data.micro_batch_size, else its global batch / "
                                                 "grad_accum_steps, at most 128)"),
        target: Optional[float] = typer.Option(None, "--target-images-per-s", min=0.0,
                                               help="Say how many loader workers this many images/s needs "
                                               "(e.g. the training step's images/s from `jepa bench train`)"),
    ) -> None:
        """Images/s of the recipe's data pipeline (read, shuffle, decode, crop, masks).

        Per loader worker (one process, one thread), split by stage, and in total with
        data.num_workers workers; with --target-images-per-s, the workers that rate needs.
        """
        with cli_errors():
            recipe = load_recipe(recipe_file, overrides or [])
            mb = batch_size or recipe.data.micro_batch_size or min(
                128, recipe.data.global_batch_size // (recipe.engine.grad_accum_steps or 1))
            rows = bench_data_pipeline(recipe, mb, batches, repeats)
        table = Table(title=f"data pipeline: {_shown(recipe.name)}, batch {mb}, median of {repeats}")
        for col in ("what", "images/s", "range"):
            table.add_column(col, justify="left" if col == "what" else "right")
        for what, values in rows:
            table.add_row(what, f"{statistics.median(values):,.0f}", f"{min(values):,.0f} .. {max(values):,.0f}")
        console.print(table)
        for line in worker_summary(rows, recipe.data.num_workers, target):
            console.print(line, highlight=False)


def _shown(text: str) -> str:
    """Untrusted text (file names, URLs, decoder messages) for a rich line: no terminal control
    characters (:func:`~jepa.text.printable`), no markup."""
    return escape(printable(text))


def _rates(fn: Callable[[], int], repeats: int) -> list[float]:
    """Images/s of ``repeats`` calls of ``fn`` (which returns the images it processed)."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        n = fn()
        out.append(n / (time.perf_counter() - start))
    return out


#: The row whose median is a loader worker's images/s (the whole pipeline in one process, one thread).
PER_WORKER_ROW = "whole pipeline, 1 worker"


def worker_summary(rows: list[tuple[str, list[float]]], num_workers: int, target: float | None) -> list[str]:
    """Lines stating the images/s of one loader worker and, for ``target`` images/s, the workers needed.

    One worker's rate is the median of :data:`PER_WORKER_ROW`; the estimate assumes a CPU core
    per worker and that workers scale linearly (the ``N workers`` row, when measured, shows how
    far they do on this machine).
    """
    by_name = {what: statistics.median(values) for what, values in rows}
    per_worker = by_name.get(PER_WORKER_ROW)
    if not per_worker:
        return []
    lines = [f"one loader worker: {per_worker:,.0f} images/s"]
    measured = [(what, rate) for what, rate in by_name.items() if what.endswith(" workers")]
    for what, rate in measured:
        n = int(what.split(", ")[1].split()[0])
        lines.append(f"{n} workers measured: {rate:,.0f} images/s = {rate / n:,.0f} per worker "
                     f"({rate / (n * per_worker):.0%} of linear scaling)")
    if target is not None:
        need = max(1, math.ceil(target / per_worker))
        lines.append(f"{target:,.0f} images/s needs {need} loader worker{'s' if need > 1 else ''} at "
                     f"{per_worker:,.0f} images/s each (a CPU core each, plus the training process's own); "
                     f"the recipe has data.num_workers={num_workers}")
    return lines


def _images(x: Any) -> int:
    """Rows of a batch, waiting for the GPU first when it was made there (so the time counts it)."""
    if isinstance(x, torch.Tensor) and x.is_cuda:
        torch.cuda.synchronize(x.device)
    return int(x.shape[0])


def _raw_samples(urls: list[str], count: int) -> list[dict[str, Any]]:
    """``count`` raw samples, reading the shards in order and round again as often as needed; a
    broken shard (truncated, not a tar) gives the samples before the break and is then left out,
    as the training loader does, with a note.

    Raises:
        ValueError: a whole round over the shards gives no sample (broken ones named).
    """
    out: list[dict[str, Any]] = []
    broken: dict[str, str] = {}
    while len(out) < count:
        before = len(out)
        for url in urls:
            if url in broken:
                continue
            try:
                for sample in read_shard(url, limit=count - len(out)):
                    out.append(sample)
            except SHARD_ERRORS as exc:
                broken[url] = printable(f"{type(exc).__name__}: {exc}")
                err_console.print(f"[yellow]note:[/] shard {_shown(url)} is broken ({escape(broken[url])}); it is "
                                  "left out, as the training loader skips it", highlight=False, soft_wrap=True)
            if len(out) >= count:
                break
        if len(out) == before:
            what = (f"{len(broken)} of the {len(urls)} shards are broken (e.g. {printable(next(iter(broken)))}: "
                    f"{next(iter(broken.values()))})" + (", the rest hold no samples" if len(broken) < len(urls) else "")
                    if broken
                    else f"the {len(urls)} shards hold no samples (e.g. {printable(urls[0])})")
            raise DataError(f"data.train_shards gives nothing to benchmark: {what}; check the pattern, or rebuild "
                             "the shards with `jepa shards`")
    return out


def bench_data_pipeline(recipe: Any, batch_size: int, num_batches: int, repeats: int) -> list[tuple[str, list[float]]]:
    """Measure the recipe's data pipeline; returns ``(stage, images/s per repeat)`` rows."""
    plugin = registry.bind(recipe.modality)
    maker = objectives.bind(recipe.objective, plugin).batch_maker()
    sampler = getattr(maker, "mask_sampler", None)  # objectives that train on masks (ijepa)
    spec = getattr(maker, "spec", None)  # objectives that train on several views (lejepa)
    d = recipe.data
    rows: list[tuple[str, list[float]]] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a loader worker
    try:
        gen = torch.Generator().manual_seed(0)
        if d.source == "shards":
            raw = _raw_samples(expand_shards(d.train_shards), batch_size * num_batches)
            items: list[Any] = []
            undecodable: list[str] = []

            def decode() -> int:  # undecodable samples are skipped, as the training loader skips them
                undecodable.clear()
                items[:] = []
                for s in raw:
                    try:
                        items.append(plugin.decode(s))
                    except ValueError as exc:
                        undecodable.append(printable(str(exc)))
                return len(raw)

            rows.append(("decode (1 worker)", _rates(decode, repeats)))
            if not items:
                raise DataError(f"none of the {len(raw)} samples read from {printable(d.train_shards)} decodes (first: "
                                 f"{undecodable[0]}); check data.train_shards, or rebuild the shards with `jepa shards`")
            if undecodable:
                err_console.print(f"[yellow]note:[/] {len(undecodable)} of {len(raw)} samples do not decode and were "
                                  f"skipped (first: {escape(undecodable[0])})", highlight=False, soft_wrap=True)
            chunks = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
            if spec is not None:
                rows.append((f"train views x{spec.num_views} (1 worker)", _rates(
                    lambda: sum(_images(plugin.train_views(c, gen, spec)[0]) for c in chunks), repeats)))
            else:
                rows.append(("train view (1 worker)", _rates(
                    lambda: sum(_images(plugin.train_batch(c, gen)) for c in chunks), repeats)))
        if sampler is not None:
            rows.append(("masks (1 worker)", _rates(
                lambda: sum(as_mask_pairs(sampler(batch_size, gen))[0].batch_size for _ in range(num_batches)), repeats)))
        one = d.model_copy(update={"num_workers": 0})
        loader = iter(build_train_loader(one, plugin, maker, seed=recipe.seed, rank=0, world_size=1,
                                         micro_batch_size=batch_size))
        next(loader)  # fills the shuffle buffer
        rows.append((PER_WORKER_ROW, _rates(
            lambda: sum(next(loader).inputs.shape[0] for _ in range(num_batches)), repeats)))
    finally:
        torch.set_num_threads(threads)
    if d.source == "shards" and d.num_workers > 0:
        loader = iter(build_train_loader(d, plugin, maker, seed=recipe.seed, rank=0, world_size=1,
                                         micro_batch_size=batch_size))
        for _ in range(2 * d.num_workers):  # every worker started and its buffer filled
            next(loader)
        rows.append((f"whole pipeline, {d.num_workers} workers", _rates(
            lambda: sum(next(loader).inputs.shape[0] for _ in range(num_batches * d.num_workers)), repeats)))
    return rows
