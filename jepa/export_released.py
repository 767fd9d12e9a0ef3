"""The round trip of the ``official`` exports: a modality writes its context encoder, predictor and target
encoder in the authors' checkpoint layout, and the file counts only if it reads back to the same models.

The modality supplies the layout's writer and reader; this module builds the models, writes through a
scratch file (:func:`~jepa.export.atomic_write`), reads the file back into fresh models and compares every
tensor (difference 0 expected) and the outputs of both encoders and of the predictor on the modality's first
export input, within the export tolerance.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor, nn

from jepa.export import (atomic_write, build_metadata, context_target_split, max_abs_differences,
                         report_differences)

if TYPE_CHECKING:
    from jepa.sources import EncoderSource

PARTS = ("encoder", "predictor", "target_encoder")
"""The models an authors'-layout file holds, under our names."""


def _predicting(encoder: nn.Module, predictor: nn.Module, ctx_idx: Tensor,
                tgt_idx: Tensor) -> Callable[[Tensor], Tensor]:
    """Inputs (B, ...) -> the predictor's (B, T, D) targets from the encoder's context at ``ctx_idx``."""
    def run(x: Tensor) -> Tensor:
        b = x.shape[0]
        ctx = encoder(x, ctx_idx.expand(b, -1))
        return predictor(ctx, ctx_idx.expand(b, -1), tgt_idx.expand(b, -1))
    return run


def _differences(models: dict[str, nn.Module], back: dict[str, nn.Module], inputs: list[Tensor],
                 ctx_idx: Tensor, tgt_idx: Tensor) -> dict[str, float]:
    """Largest differences between the written and the read-back models: weights, encoders, predictor."""
    diffs: dict[str, float] = {}
    for key in PARTS:
        ref, got = models[key].state_dict(), back[key].eval().state_dict()
        diffs[f"{key} weights"] = max((got[k].float() - v.float()).abs().max().item() for k, v in ref.items())
    for key in ("encoder", "target_encoder"):
        one = max_abs_differences(models[key], back[key], inputs)
        diffs.update({f"{key} {k}": v for k, v in one.items()})
    one = max_abs_differences(_predicting(models["encoder"], models["predictor"], ctx_idx, tgt_idx),
                              _predicting(models["encoder"], back["predictor"], ctx_idx, tgt_idx), inputs)
    diffs.update({f"predictor {k}": v for k, v in one.items()})
    return diffs


def write_released(
    source: EncoderSource, out: Path, states: dict[str, dict[str, Tensor]],
    save: Callable[[str, nn.Module, nn.Module, nn.Module], None], load: Callable[..., Any], *,
    layout: str, what: str, tolerance: float, log: Callable[[str], None],
) -> tuple[dict[str, Any], dict[str, float]]:
    """Write ``states`` (our naming, see :data:`PARTS`) to ``out`` with ``save``, verified by reading them back.

    Args:
        source: the export's source (its modality builds the models; metadata).
        out: the file to write.
        states: the three models' state dicts.
        save: ``save(path, encoder, predictor, target_encoder)`` writes the layout.
        load: ``load(path, encoder, predictor=None, which=...)`` reads it back (``which`` names the encoder).
        layout: the layout's name for the log (e.g. ``"released layout"``).
        what: the file, for the error (e.g. ``"the released-layout file"``).
        tolerance: the largest difference allowed.
        log: where the differences are reported.

    Returns:
        The export metadata (with ``verification``) and the differences.

    Raises:
        ExportVerificationError: the file does not read back to the same models (nothing is written).
    """
    modality = source.modality

    def build() -> dict[str, nn.Module]:
        return {"encoder": modality.build_encoder(), "predictor": modality.build_predictor(),
                "target_encoder": modality.build_encoder()}

    models = build()
    for key, module in models.items():
        module.load_state_dict(states[key], strict=True)
        module.eval()
    meta = build_metadata(source, "official", False)
    gen = torch.Generator().manual_seed(0)
    inputs = modality.export_inputs(models["target_encoder"], gen)[:1]
    ctx_idx, tgt_idx = context_target_split(models["encoder"].num_patches, gen)
    result: dict[str, float] = {}

    def write(tmp: str) -> None:
        save(tmp, models["encoder"], models["predictor"], models["target_encoder"])
        back = build()
        load(tmp, back["target_encoder"], back["predictor"], which="target_encoder")
        load(tmp, back["encoder"], which="encoder")
        diffs = _differences(models, back, inputs, ctx_idx, tgt_idx)
        report_differences(diffs, tolerance, f"{layout} read back", what, log)
        result.update(diffs)

    atomic_write(out, write)
    meta["verification"] = {"tolerance": tolerance, "max_abs_diff": result}
    return meta, result
