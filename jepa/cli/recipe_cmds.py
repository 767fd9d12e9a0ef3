"""``jepa modalities`` and ``jepa recipe check|show|schema``.

An installed plugin that cannot be used (see :mod:`jepa.registry`) is one ``warning:`` line on stderr
of ``jepa modalities`` and ``jepa recipe schema``, which go on with the others; a recipe naming it
is an error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from jepa import registry
from jepa.cli.errors import cli_errors, err_console
from jepa.cli.options import SetOption
from jepa.recipe import load_recipe, plugin_problems, recipe_json_schema
from jepa.text import printable

console = Console()


def _warn(line: str) -> None:
    err_console.print(f"[bold yellow]warning:[/] {escape(printable(line))}", markup=True, highlight=False, soft_wrap=True)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    recipe = typer.Typer(help="Validate, resolve and describe recipes.", no_args_is_help=True)
    app.add_typer(recipe, name="recipe")

    @app.command("modalities")
    def modalities() -> None:
        """List the registered modality plugins and the package providing each (a broken one: a warning line)."""
        broken = registry.MODALITIES.problems()
        table = Table(title="jepa.modalities")
        table.add_column("name")
        table.add_column("package")
        table.add_column("object")
        for info in registry.available():
            if info.name not in broken:
                table.add_row(*(escape(printable(text)) for text in (info.name, info.package, info.target)))
        console.print(table)
        for line in broken.values():
            _warn(line)

    @recipe.command("check")
    def check(files: list[Path] = typer.Argument(..., help="Recipe YAML files"),
              overrides: Optional[list[str]] = SetOption) -> None:
        """Validate recipes (types, unknown keys, semantic checks) without building anything."""
        for f in files:
            with cli_errors():
                r = load_recipe(f, overrides or [])
            what = printable(f"{f}: {registry.bind(r.modality).describe()}")
            console.print(f"[green]ok[/] {escape(what)}, {r.total_steps} steps "
                          f"({r.optim.epochs:g} epochs x {r.steps_per_epoch} steps of {r.data.global_batch_size})",
                          highlight=False)

    @recipe.command("show")
    def show(file: Path, overrides: Optional[list[str]] = SetOption) -> None:
        """Print the fully resolved recipe (defaults included) as YAML."""
        with cli_errors():
            text = load_recipe(file, overrides or []).to_yaml()
        print(text, end="")

    @recipe.command("schema")
    def schema() -> None:
        """Print the recipe JSON Schema (types, defaults and descriptions) of the plugins that load."""
        print(json.dumps(recipe_json_schema(), indent=2))
        for line in plugin_problems():
            _warn(f"{line} (left out of the schema)")
