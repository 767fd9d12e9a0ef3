"""The ``jepa`` command line. Each command group lives in its own module with a ``register(app, bench)``."""

from __future__ import annotations

import typer

from jepa.cli.errors import exit_code_for, report_bug, user_error

app = typer.Typer(
    name="jepa", help="Train Joint-Embedding Predictive Architectures (I-JEPA and more).",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
bench = typer.Typer(help="Benchmarks that print numbers (data pipeline, training step).", no_args_is_help=True)
app.add_typer(bench, name="bench")


from jepa.cli import data_cmds, eval_cmds, export_cmds, new_cmds, plan_cmds, recipe_cmds, train_cmds, viz_cmds  # noqa: E402

for _module in (recipe_cmds, train_cmds, data_cmds, export_cmds, eval_cmds, plan_cmds, new_cmds, viz_cmds):
    _module.register(app, bench)


def main() -> None:
    """Console-script entry point: expected failures print one clear message, bugs their traceback and
    a line saying so (see :mod:`jepa.cli.errors`)."""
    try:
        app()
    except Exception as exc:  # noqa: BLE001 - every failure ends here, expected or a bug
        code = exit_code_for(exc)
        if code is None:
            raise SystemExit(report_bug(exc)) from None
        raise SystemExit(user_error(exc, code).exit_code) from None
