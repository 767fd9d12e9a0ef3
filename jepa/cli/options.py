"""Options shared by several commands (one definition each)."""

from __future__ import annotations

import typer

SetOption = typer.Option(None, "--set", help="Override a recipe field: dotted.key=value (YAML value); repeatable")
ResumeOption = typer.Option(
    "auto", "--resume", help="'auto': continue from the newest complete checkpoint of the run dir (or start fresh), so "
    "a restarted or requeued job (Slurm) goes on by itself; 'none': start fresh (refused if the run dir has "
    "checkpoints); PATH: a checkpoint or run dir to continue from. A checkpoint resumes on any number of processes")
