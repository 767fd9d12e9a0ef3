"""How the CLI shows a user mistake: one red line on stderr, exit status 2, no traceback."""

from __future__ import annotations

import typer
from rich.console import Console

err_console = Console(stderr=True)


def user_error(exc: Exception) -> typer.Exit:
    """Print ``exc`` as one clear message; raise the returned Exit to leave with status 2."""
    err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
    return typer.Exit(2)
