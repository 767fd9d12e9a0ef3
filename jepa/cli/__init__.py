"""The ``jepa`` command line. Each command group lives in its own module with a ``register(app, bench)``."""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console

from jepa.recipe import RecipeError

app = typer.Typer(
    name="jepa", help="Train Joint-Embedding Predictive Architectures (I-JEPA and more).",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
bench = typer.Typer(help="Benchmarks that print numbers (data pipeline, training step).", no_args_is_help=True)
app.add_typer(bench, name="bench")

err_console = Console(stderr=True)

_COMMAND_MODULES = ("recipe_cmds", "train_cmds", "data_cmds", "export_cmds", "eval_cmds")
for _name in _COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"jepa.cli.{_name}")
    except ModuleNotFoundError as _exc:  # a command module not written yet in this checkout
        if _exc.name != f"jepa.cli.{_name}":
            raise
        continue
    _module.register(app, bench)


def main() -> None:
    """Console-script entry point: user errors print one clear message and exit 2."""
    try:
        app()
    except RecipeError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        sys.exit(2)
