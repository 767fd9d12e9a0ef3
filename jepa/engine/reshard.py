"""Resuming ZeRO state written by another number of ranks, through DeepSpeed's universal checkpoint.

Rank 0 converts the old ZeRO shards with ``deepspeed.checkpoint.ds_to_universal`` (per-parameter
fp32 weights and Adam moments) into a scratch folder on the shared filesystem, every rank loads its
new partition of them, and the scratch folder is removed; the checkpoint itself is only read. Every
file DeepSpeed reads on the way is unpickled weights-only
(:func:`jepa.engine.safe_load.weights_only_universal_checkpoint`). ZeRO-0 state is not sharded and
needs none of this.
"""

from __future__ import annotations

import argparse
import io
import logging
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import torch
from deepspeed.checkpoint import ds_to_universal

from jepa.engine.dist import Collectives
from jepa.engine.safe_load import weights_only_universal_checkpoint
from jepa.errors import CheckpointError
from jepa.outputs import remove_tree

log = logging.getLogger(__name__)


def remove_scratch(path: Path) -> None:
    """Remove the resharding scratch folder (a symbolic link there: the link only). A failure is a
    warning: what is left is removed by the next attempt, and an error being raised stays the one shown."""
    try:
        remove_tree(path)
    except OSError as exc:
        log.warning("could not remove the resharding scratch folder %s (%s); remove it by hand", path,
                    exc.strerror or exc)


def convert_to_universal(source: Path, target: Path, collectives: Collectives, is_main: bool) -> None:
    """Rank 0 runs ``ds_to_universal`` from ``source`` (ZeRO shards of another world size) into
    ``target`` (inside a fresh scratch folder, its parent); every rank raises the same error if it fails.

    Raises:
        ValueError: the scratch folder cannot be made, or DeepSpeed cannot convert the state
            (a file holding more than tensors and DeepSpeed's records included).
    """
    scratch = target.parent
    error = None
    if is_main:
        try:  # a folder left by an interrupted earlier attempt, or a link (dangling or not) in its place
            remove_tree(scratch)
            scratch.mkdir(parents=True)
        except OSError as exc:
            error = (f"{scratch}: cannot make the scratch folder for resharding ({exc.strerror or exc}); remove "
                     "what is there or make its folder writable")
        if error is None:
            try:
                args = argparse.Namespace(input_folder=str(source), output_folder=str(target),
                                          num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False,
                                          strict=True, inject_missing_state=True)
                with (weights_only_universal_checkpoint(), redirect_stdout(io.StringIO()),
                      redirect_stderr(io.StringIO())):
                    ds_to_universal.main(args)
            except Exception as exc:  # noqa: BLE001 - every rank re-raises it below, as a ValueError naming it
                error = (f"{source}: DeepSpeed could not convert this ZeRO state to another number of processes "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())[:500]}); resume with the number of "
                         "processes that wrote it (meta.json: world_size)")
                remove_scratch(scratch)
    error = collectives.all_gather_object(error)[0]
    if error:
        raise CheckpointError(error)


def load_resharded(ds_engine: Any, directory: Path, scratch: Path, tag: str, collectives: Collectives,
                   is_main: bool) -> str | None:
    """Load ``directory/tag`` (ZeRO 1-3 state of another world size) into ``ds_engine`` through a
    universal checkpoint in ``scratch`` (collective: every rank passes the same path on the shared
    filesystem); ``scratch`` is removed afterwards, whatever happened.

    Args:
        ds_engine: the ``deepspeed.DeepSpeedEngine`` to load into.

    Returns:
        DeepSpeed's load path, None when there was no state to load.
    """
    convert_to_universal(directory / tag, scratch / tag, collectives, is_main)
    optimizer = ds_engine.optimizer
    # DeepSpeed 0.19's universal load under ZeRO-3 gives every param group the hyperparameters of
    # the first (weight decay on the no-decay groups), and one shared Adam step tensor to all of
    # them (each group's step then advances it: wrong bias correction). Both are undone after it.
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    try:
        ds_engine._config.load_universal_checkpoint = True
        with weights_only_universal_checkpoint():
            load_path, _ = ds_engine.load_checkpoint(str(scratch), tag=tag, load_module_strict=True,
                                                     load_optimizer_states=True, load_lr_scheduler_states=False)
        for group, own in zip(optimizer.param_groups, groups):
            group.update(own)
        for state in getattr(optimizer, "optimizer", optimizer).state.values():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].clone()
        return load_path
    finally:
        ds_engine._config.load_universal_checkpoint = False
        collectives.all_gather_object(None)  # every rank has read the converted files
        if is_main:
            remove_scratch(scratch)
