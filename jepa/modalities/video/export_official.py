"""The video ``official`` export: context encoder, predictor and target encoder written in the checkpoint layout
of the authors' V-JEPA 2 code (:mod:`jepa.modalities.video.released`), so their training and hub code can read
it (``module.backbone.`` keys, ``mask_tokens.g``; RoPE models without position tables).

Sources that carry all three models qualify: a run directory, a checkpoint or a ``models.pt`` of
``jepa train`` (``epoch`` = whole epochs done, ``lr`` the recipe's peak, ``batch_size`` the global batch,
``world_size`` 1), or a file already in the authors' layout (its metadata kept). ``opt`` holds the authors'
four AdamW groups without moments.

Verification: the scratch file is read back with :func:`~jepa.modalities.video.released.load_checkpoint` into
fresh models; every tensor must equal the source (difference 0) and the reloaded encoders and predictor must
reproduce the eager ones on the modality's export input.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from torch import Tensor

from jepa.checkpoint import load_model_weights
from jepa.errors import CheckpointError, ConfigError
from jepa.export import EXPORT_TOLERANCE, ExportResult
from jepa.export_released import PARTS, write_released
from jepa.modalities.video.released import (METADATA_KEYS, load_checkpoint, read_checkpoint, save_checkpoint,
                                            states_for)

if TYPE_CHECKING:
    from jepa.sources import EncoderSource


def source_states(source: EncoderSource) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any]]:
    """The three state dicts of a run, checkpoint or authors'-layout source (our naming) and the file metadata
    (``epoch``, ``loss``, ``batch_size``, ``world_size``, ``lr``).

    Raises:
        CheckpointError: the source has no predictor or no EMA target (or is of another kind).
    """
    if source.kind in ("run", "checkpoint"):
        weights = load_model_weights(source.source)
        recipe = weights.recipe
        if not (weights.predictor and weights.target_encoder):
            raise CheckpointError(f"{source.source}: this run's objective ({recipe.objective.name}) trains no predictor "
                                  "or EMA target, which the authors' layout holds; export its encoder with --format "
                                  "torchscript or torch-export")
        states = {"encoder": weights.encoder, "predictor": weights.predictor, "target_encoder": weights.target_encoder}
        meta = {"epoch": weights.step // recipe.steps_per_epoch, "loss": 0.0,
                "batch_size": recipe.data.global_batch_size, "world_size": 1, "lr": recipe.optim.lr}
        return states, meta
    if source.kind == "foreign":
        ckpt, _ = read_checkpoint(source.source)
        enc = source.encoder
        states = states_for(ckpt, "sincos" if "pos_embed" in enc.state_dict() else "rope")
        missing = [k for k in PARTS if k not in states]
        if missing:
            raise CheckpointError(f"{source.source} holds no {', '.join(missing)}; the authors' layout needs all of "
                                  f"{', '.join(PARTS)}")
        return states, {k: ckpt[k] for k in METADATA_KEYS if k in ckpt}
    raise CheckpointError(f"{source.source}: --format official writes encoder, predictor and target encoder, so it "
                          f"needs a run directory or checkpoint of `jepa train` or a V-JEPA checkpoint of the authors' "
                          f"code (this source is {source.kind!r})")


def export_official(
    source: EncoderSource, out: str | Path, *, pooled: bool = False, tolerance: float = EXPORT_TOLERANCE,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Write the source's three models in the authors' layout, verified by reading them back.

    Raises:
        ConfigError: ``pooled`` was asked for (the file holds whole models).
        CheckpointError: the source lacks a model (see :func:`source_states`).
        ExportVerificationError: the file does not read back to the same models (nothing is written).
    """
    out = Path(out)
    if pooled:
        raise ConfigError("--pooled does not apply to --format official: the file holds whole models")
    states, file_meta = source_states(source)
    meta, result = write_released(
        source, out, states, lambda tmp, *models: save_checkpoint(tmp, *models, **file_meta), load_checkpoint,
        layout="authors' layout", what="the authors'-layout file", tolerance=tolerance, log=log)
    meta["released"] = dict(file_meta)
    return ExportResult(out, "official", meta, result, tolerance)
