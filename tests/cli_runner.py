"""Run the ``jepa`` command in-process from a test, and read its one error line."""

from __future__ import annotations

import sys

from jepa.cli import main


def run_jepa(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """``jepa ARGS`` in-process: (exit status, stdout, stderr); an escaping exception fails the test."""
    monkeypatch.setattr(sys, "argv", ["jepa", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(err: str) -> str:
    """The only ``error:`` line of ``err`` (fails the test when there are several, or a traceback)."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]
