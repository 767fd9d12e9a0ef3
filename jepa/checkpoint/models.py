"""``models.pt``: the consolidated fp32 weights of a checkpoint, what export and evaluation read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from jepa.checkpoint.integrity import models_problems, verify_models
from jepa.checkpoint.layout import DIGESTS_FILE, FORMAT_VERSION, MODELS_FILE, checkpoint_dir, first_valid, resume_candidates
from jepa.errors import CheckpointError
from jepa.recipe import Recipe, parse_recipe
from jepa.weights import safe_load


def is_models_dict(obj: Any) -> bool:
    """Whether a loaded file has the top level of a ``models.pt`` of ``jepa train`` (whatever the file's name)."""
    return isinstance(obj, dict) and {"format_version", "recipe", "encoder"} <= set(obj)


def _checked(models: Any, path: Path) -> dict[str, Any]:
    if not isinstance(models, dict) or models.get("format_version") != FORMAT_VERSION:
        version = models.get("format_version") if isinstance(models, dict) else None
        raise CheckpointError(f"{path}: not a jepa models.pt of format_version {FORMAT_VERSION} (got {version!r}); "
                         "it was written by another tool or jepa version")
    return models


def read_models(path: Path) -> dict[str, Any]:
    return _checked(safe_load(path, "a jepa weights file (models.pt of `jepa train`)"), path)


@dataclass(frozen=True)
class LoadedWeights:
    """Full fp32 weights of a training checkpoint (``jepa export`` / ``jepa eval`` read these).

    Attributes:
        recipe: the validated recipe that trained them (its modality must be installed).
        step: optimiser steps done when they were saved.
        encoder, predictor, target_encoder: state dicts (CPU tensors, no ``module.`` prefixes); the
            predictor and target encoder are empty for objectives without them (LeJEPA).
        path: the ``models.pt`` file they came from.
        parts: every module state dict of the file by name (an objective's other parts, e.g. LeJEPA's ``projector``).
    """

    recipe: Recipe
    step: int
    encoder: dict[str, Tensor]
    predictor: dict[str, Tensor]
    target_encoder: dict[str, Tensor]
    path: Path
    parts: dict[str, dict[str, Tensor]] = field(default_factory=dict)

    @property
    def eval_encoder(self) -> dict[str, Tensor]:
        """The encoder evaluation and export read by default: the EMA target where the objective
        keeps one, else the trained encoder."""
        return self.target_encoder or self.encoder


def load_model_weights(path: str | Path) -> LoadedWeights:
    """Weights of a run directory (its newest complete checkpoint), a checkpoint directory or a ``models.pt``.

    Raises:
        ValueError: the path does not exist, holds no complete checkpoint, or is not a jepa weights file.
    """
    path = Path(path)
    if path.is_file():
        file = path
        if (path.parent / DIGESTS_FILE).is_file():  # a models.pt inside a checkpoint: verify it
            verify_models(path.parent)
    else:
        chosen = checkpoint_dir(path, "weights")
        if chosen == path:
            verify_models(chosen)
        else:
            chosen = first_valid(resume_candidates(path), models_problems, f"weights of {path}")
            assert chosen is not None  # _checkpoint_dir found a complete one
        file = chosen / MODELS_FILE
    return weights_from_models(read_models(file), file)


def weights_from_models(models: Any, file: Path) -> LoadedWeights:
    """The weights of a ``models.pt`` already read from ``file`` (e.g. one copied out of its run under
    another name, recognised by :func:`is_models_dict`); not verified against a checkpoint's digests.

    Raises:
        ValueError: not a jepa weights file of this format version, or its recipe does not validate.
    """
    models = _checked(models, file)
    recipe = parse_recipe(models["recipe"], source=f"{file} (recipe saved with the weights)")
    parts = {k: v for k, v in models.items() if isinstance(v, dict) and k not in ("recipe", "loader", "rng")}
    return LoadedWeights(recipe=recipe, step=int(models["step"]), encoder=models["encoder"],
                         predictor=models.get("predictor") or {}, target_encoder=models.get("target_encoder") or {},
                         path=file, parts=parts)
