"""What the processes that wrote a checkpoint were: ``meta.json`` (world size, micro batch,
accumulation steps) and the per-rank state files (data position and RNG states)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jepa.checkpoint.json_file import read_json_object
from jepa.checkpoint.layout import META_FILE, MODELS_FILE
from jepa.checkpoint.models import read_models
from jepa.errors import CheckpointError
from jepa.recipe import split_global_batch
from jepa.weights import safe_load


def read_meta(path: Path) -> dict[str, Any]:
    """A checkpoint's ``meta.json``, with an int ``world_size`` >= 1 (and int batch split fields when present).

    Raises:
        ValueError: it is missing, unreadable or not a meta table of ``jepa train`` (the file named).
    """
    file = path / META_FILE
    try:
        meta = read_json_object(file, "the checkpoint's meta table")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: has {MODELS_FILE} but no {META_FILE}, so it holds weights only and cannot be resumed "
                         "from; resume from a checkpoint directory written by `jepa train`") from None
    except ValueError as exc:
        raise CheckpointError(f"{exc}; resume from another checkpoint (pass the run directory to take the newest valid one)"
                         ) from None
    fields = ["world_size", *(("micro_batch_size", "grad_accum_steps") if "micro_batch_size" in meta else ())]
    bad = [k for k in fields if type(meta.get(k)) is not int or meta[k] < 1]
    if bad:
        found = ", ".join(f"{k}: {meta.get(k)!r}" for k in bad)
        raise CheckpointError(f"{file}: not a meta table of `jepa train` ({found}, expected whole numbers >= 1); resume from "
                         "another checkpoint (pass the run directory to take the newest valid one)")
    return meta


def read_rank_state(path: Path, rank: int) -> dict[str, Any]:
    file = path / f"rank_{rank:05d}.pt"
    if not file.is_file():
        raise CheckpointError(f"{path}: {file.name} is missing (the checkpoint holds the state of every process that wrote "
                         "it); the checkpoint is incomplete: resume from another one")
    return safe_load(file, "a per-rank state file of `jepa train`", mmap=False)


def saved_split(meta: dict[str, Any], path: Path) -> tuple[int, int]:
    """(micro batch, accumulation steps) a checkpoint was written with (older metas: from the saved recipe)."""
    if "micro_batch_size" in meta:
        return int(meta["micro_batch_size"]), int(meta["grad_accum_steps"])
    saved = read_models(path / MODELS_FILE)["recipe"]
    return split_global_batch(saved["data"]["global_batch_size"], meta["world_size"],
                              saved["engine"].get("grad_accum_steps"), saved["data"].get("micro_batch_size"))
