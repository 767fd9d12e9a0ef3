"""``jepa new-modality``: write a new modality plugin package (see :mod:`jepa.scaffold`)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from jepa.cli.errors import cli_errors
from jepa.scaffold import template_values, write_plugin
from jepa.text import printable

console = Console()


def register(app: typer.Typer, bench: typer.Typer) -> None:
    @app.command("new-modality")
    def new_modality_cmd(
        name: str = typer.Argument(..., help="The modality's name (lower case, e.g. 'spectrogram'): the recipe's "
                                   "modality.name; the package is jepa_NAME"),
        out: Path = typer.Argument(..., help="Folder to write the plugin package into (new, or empty)"),
    ) -> None:
        """Write a complete modality plugin package: pyproject.toml with the entry point, config, modality class,
        encoder and predictor on jepa.nn, block masks, .npy decoding, demo data, a recipe, a README and the
        contract tests. It passes the contract suite as written; edit it for your data.
        """
        with cli_errors():
            files = write_plugin(name, out)
        for path in files:
            console.print(f"[green]wrote[/] {escape(printable(str(path)))}", highlight=False)
        dist = template_values(name)["dist"]
        console.print(
            f"\nnext:\n  pip install --no-deps --no-build-isolation -e {printable(str(out))}   # {dist}, into this "
            f"environment\n  cd {printable(str(out))} && python -m pytest   # jepa's contract suite on it\n"
            f"  jepa demo-data data/{name}_demo --modality {name} && jepa train recipes/{name}_demo.yaml",
            highlight=False, markup=False, soft_wrap=True)
