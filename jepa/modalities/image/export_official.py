"""The ``official`` export: a run or checkpoint written in the authors' released ``.pth.tar``
layout (context encoder, predictor, target encoder; see :mod:`jepa.modalities.image.released`),
so the authors' code (and ``jepa``'s released-checkpoint reader) can continue from it.

The file needs the predictor, so only sources that carry one qualify: a run directory, a
checkpoint directory or a ``models.pt``. ``epoch`` is the number of whole epochs done
(``step // steps_per_epoch`` of the recipe), ``lr`` the recipe's peak learning rate,
``batch_size`` the global batch (as if on one GPU, ``world_size`` 1); ``opt`` holds the
released four-group AdamW structure without moments (the authors' resume code finds the
groups it expects; the moments restart from zero).

Verification: the scratch file is read back with :func:`~jepa.modalities.image.released.load_released`
into fresh models; every tensor must equal the source and the reloaded encoder and predictor
must reproduce the eager ones on the modality's export inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from torch import nn

from jepa.checkpoint import load_model_weights
from jepa.errors import CheckpointError, ConfigError
from jepa.export import EXPORT_TOLERANCE, ExportResult
from jepa.export_released import PARTS, write_released
from jepa.modalities.image.released import load_released, save_released

if TYPE_CHECKING:
    from jepa.sources import EncoderSource


def export_official(
    source: EncoderSource, out: str | Path, *, pooled: bool = False, tolerance: float = EXPORT_TOLERANCE,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Write the source's three models in the released layout, verified by reading them back.

    Raises:
        ValueError: the source has no predictor (not a run or checkpoint of ``jepa train``), or
            ``pooled`` was asked for (the file holds whole models).
        ExportVerificationError: the file does not read back to the same models (nothing is written).
    """
    out = Path(out)
    if source.kind not in ("run", "checkpoint"):
        raise CheckpointError(f"{source.source}: --format official writes encoder, predictor and target encoder, so it "
                         f"needs a run directory or checkpoint of `jepa train` (this source is {source.kind!r})")
    if pooled:
        raise ConfigError("--pooled does not apply to --format official: the file holds whole models")
    weights = load_model_weights(source.source)
    recipe = weights.recipe
    if not (weights.predictor and weights.target_encoder):
        raise CheckpointError(f"{source.source}: --format official writes the I-JEPA authors' encoder, predictor and target "
                         f"encoder, and this run's objective ({recipe.objective.name}) trains no predictor or EMA target; "
                         "export its encoder with --format torchscript, torch-export, timm, safetensors-timm or hf")
    epoch = weights.step // recipe.steps_per_epoch

    def save(tmp: str, encoder: nn.Module, predictor: nn.Module, target_encoder: nn.Module) -> None:
        save_released(tmp, encoder, predictor, target_encoder, epoch=epoch, loss=0.0,
                      batch_size=recipe.data.global_batch_size, world_size=1, lr=recipe.optim.lr)

    states = {key: getattr(weights, key) for key in PARTS}
    meta, result = write_released(source, out, states, save, load_released, layout="released layout",
                                  what="the released-layout file", tolerance=tolerance, log=log)
    meta["released"] = {"epoch": epoch, "batch_size": recipe.data.global_batch_size, "lr": recipe.optim.lr}
    return ExportResult(out, "official", meta, result, tolerance)
