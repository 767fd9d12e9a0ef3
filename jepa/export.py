"""Export a frozen encoder for use outside ``jepa``: TorchScript for every modality, plus the
formats a modality adds (:meth:`~jepa.interfaces.Modality.export_formats`; image:
``torch-export``, ``timm``, ``hf``, ``official``, ``safetensors-timm``).

Folder formats (``timm``, ``hf``) and files alike are written into a hidden scratch location
next to ``out``, loaded back from there the way a user would load them, compared with the eager
encoder, and only then moved into place (:func:`atomic_write`).

``torchscript``
    ``torch.jit.load(path)`` gives a module mapping the modality's normalised inputs (batch
    first; the metadata's ``input`` says which shapes) to final-normed tokens (B, N, D), or
    with ``pooled`` to their mean (B, D). Non-pooled exports of encoders that implement
    ``forward_layers`` also carry ``forward_layers(x, num_last) -> List[Tensor]`` for
    multi-layer probes. Loading needs only torch: ``jepa`` does not have to be importable. The
    metadata is the ``_extra_files`` entry ``jepa_export.json``: generic keys (format, model,
    modality, embedding width, number of layers, source, recipe, versions, verification) plus
    the modality's :meth:`~jepa.interfaces.Modality.export_metadata`.

Nothing is written unless the exported model reproduces the eager encoder on every input of
:meth:`~jepa.interfaces.Modality.export_inputs` (e.g. images at the training size and at a
second, non-square size). The largest absolute difference is reported and must stay below
``EXPORT_TOLERANCE`` (fp32). Export depends only downward, on :mod:`jepa.sources`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List

import torch
from torch import Tensor, nn

import jepa
from jepa.interfaces import Encoder
from jepa.outputs import check_output_file, remove_tree, write_errors
from jepa.sources import EXPORT_METADATA_NAME, EncoderSource, quiet_jit_deprecation

EXPORT_FORMAT_VERSION = 1
EXPORT_TOLERANCE = 1e-4
"""Largest absolute difference (fp32) allowed between the exported and the eager encoder."""

CORE_FORMATS: tuple[str, ...] = ("torchscript",)


class ExportVerificationError(ValueError):
    """The exported model does not reproduce the eager encoder; nothing was written."""


class EncoderExport(nn.Module):
    """What a TorchScript export contains: the encoder, optionally followed by mean pooling.

    Args:
        encoder: an encoder with ``forward(x)`` -> (B, N, D).
        pooled: return the mean over tokens (B, D) instead of the tokens.
    """

    __constants__ = ["pooled"]

    def __init__(self, encoder: nn.Module, pooled: bool):
        super().__init__()
        self.encoder = encoder
        self.pooled = pooled

    def forward(self, x: Tensor) -> Tensor:
        """(B, ...) normalised inputs -> (B, N, D) tokens, or (B, D) when pooled."""
        tokens = self.encoder(x)
        if self.pooled:
            return tokens.mean(dim=1)
        return tokens


class LayeredEncoderExport(EncoderExport):
    """:class:`EncoderExport` of an encoder with ``forward_layers`` (multi-layer probes)."""

    @torch.jit.export
    def forward_layers(self, x: Tensor, num_last: int) -> List[Tensor]:
        """The last ``num_last`` layers' tokens (B, N, D), each normed with the final norm."""
        return self.encoder.forward_layers(x, num_last)


def has_layers(encoder: nn.Module) -> bool:
    """Whether the encoder overrides :meth:`Encoder.forward_layers` (eager or exported)."""
    if isinstance(encoder, torch.jit.ScriptModule):
        return hasattr(encoder, "forward_layers")
    return type(encoder).forward_layers is not Encoder.forward_layers


@dataclass
class ExportResult:
    """What was written and how closely it matches the eager encoder.

    Attributes:
        path: the file or folder written.
        format: ``torchscript`` or a modality's format name.
        metadata: the JSON metadata stored with it.
        max_abs_diff: ``{"input shape": max |exported - eager|}`` per checked input.
        tolerance: the bound the differences were checked against.
    """

    path: Path
    format: str
    metadata: dict[str, Any]
    max_abs_diff: dict[str, float]
    tolerance: float


def _source_encoder(source: EncoderSource) -> nn.Module:
    if source.kind == "torchscript":
        raise ValueError(f"{source.source}: already an exported file; export from the run or checkpoint it came from")
    return source.encoder


def build_metadata(source: EncoderSource, fmt: str, pooled: bool) -> dict[str, Any]:
    """The versioned JSON metadata stored in every export (public API: keys only get added)."""
    encoder = _source_encoder(source)
    modality = source.modality
    return {
        "format": fmt,
        "format_version": EXPORT_FORMAT_VERSION,
        "model": source.description,
        "modality_name": modality.name,
        "modality": modality.cfg.model_dump(mode="json"),
        "embed_dim": int(encoder.embed_dim),
        "num_layers": int(getattr(encoder, "depth", 1)),
        "output": "(B, D) mean of the final-normed tokens" if pooled else "(B, N, D) final-normed tokens",
        "pooled": pooled,
        "encoder": source.which,
        "source": source.source,
        "source_kind": source.kind,
        "source_step": source.step,
        "recipe": None if source.recipe is None else source.recipe.model_dump(mode="json"),
        "jepa_version": jepa.__version__,
        "torch_version": torch.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **modality.export_metadata(encoder),
    }


def _script(module: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script`` (its own function so tests can substitute a faulty exporter)."""
    with quiet_jit_deprecation():
        return torch.jit.script(module)


def _shape_key(x: Tensor) -> str:
    """An input's shape without the batch, e.g. ``3x32x32``... reported as ``32x32`` for (B, C, H, W)."""
    return "x".join(str(d) for d in (x.shape[2:] if x.ndim >= 4 else x.shape[1:]))


@torch.inference_mode()
def max_abs_differences(eager: Callable[[Tensor], Tensor], exported: Callable[[Tensor], Tensor],
                        inputs: list[Tensor]) -> dict[str, float]:
    """Largest |exported(x) - eager(x)| for each input ``x`` (keyed by its shape without batch/channels).

    Raises:
        ExportVerificationError: the outputs differ in shape.
    """
    out = {}
    for x in inputs:
        ref, got = eager(x), exported(x)
        key = _shape_key(x)
        if ref.shape != got.shape:
            raise ExportVerificationError(f"exported output {tuple(got.shape)} differs in shape from eager "
                                          f"{tuple(ref.shape)} for input {key}")
        out[key] = (got.float() - ref.float()).abs().max().item()
    return out


def check_differences(diffs: dict[str, float], tolerance: float, what: str) -> None:
    """Raise :class:`ExportVerificationError` when any difference exceeds ``tolerance`` (NaN fails too)."""
    failing = [v for v in diffs.values() if not v <= tolerance]
    if failing:
        worst = max(failing, key=lambda v: math.inf if math.isnan(v) else v)
        detail = ", ".join(f"{k}: {v:.3g}" for k, v in diffs.items())
        raise ExportVerificationError(
            f"{what} does not reproduce the eager encoder: max abs difference {worst:.3g} > tolerance "
            f"{tolerance:g} ({detail}); nothing was written. This is a bug in the exporter or the model, "
            "please report it with the model name and torch version")


def atomic_write(out: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same folder, so ``out`` appears complete or not at all.

    The temporary file has ``out``'s name (TorchScript names its archive folder after it) inside
    a hidden scratch folder, and is created by ``write`` itself, so it gets the usual permissions.
    ``out`` is checked again (:func:`check_out_path`) right before it is replaced; a write torch
    reports as a ``RuntimeError`` (a full disk) becomes an ``OSError`` naming ``out``.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = out.parent / f".{out.name}.{os.getpid()}.tmp"
    scratch.mkdir()
    try:
        tmp = scratch / out.name
        with write_errors(out, "the export", "--out"):
            write(str(tmp))
        check_out_path(out)  # nothing but a regular file (or nothing) is ever replaced
        os.replace(tmp, out)
    finally:
        remove_tree(scratch)


def export_torchscript(
    source: EncoderSource, out: str | Path, *, pooled: bool = False, tolerance: float = EXPORT_TOLERANCE,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Script the encoder, verify it against eager on the modality's export inputs, then write it.

    Raises:
        ExportVerificationError: the scripted model differs by more than ``tolerance``
            (nothing is written).
        ValueError: the source cannot be exported (already exported, not scriptable).
    """
    out = Path(out)
    encoder = _source_encoder(source)
    layered = has_layers(encoder) and not pooled
    eager = (LayeredEncoderExport if layered else EncoderExport)(encoder, pooled).eval()
    try:
        scripted = _script(eager)
    except (RuntimeError, torch.jit.frontend.FrontendError) as exc:  # type: ignore[attr-defined]
        raise ValueError(f"{source.description}: the {source.modality.name} encoder cannot be compiled with "
                         f"torch.jit.script ({type(exc).__name__}: {str(exc).splitlines()[0]}); make its forward "
                         "TorchScript-compatible or export with a format of its modality") from exc
    inputs = source.modality.export_inputs(encoder, torch.Generator().manual_seed(0))
    diffs = max_abs_differences(eager, scripted, inputs)
    if layered:  # the multi-layer entry point feeds linear4; check it on the first input
        depth = min(4, int(getattr(encoder, "depth", 1)))
        layers = max_abs_differences(lambda x: torch.stack(eager.forward_layers(x, depth)),
                                     lambda x: torch.stack(scripted.forward_layers(x, depth)), inputs[:1])
        diffs.update({f"{k} forward_layers({depth})": v for k, v in layers.items()})
    log("scripted vs eager max abs difference: " + ", ".join(f"{k}: {v:.2e}" for k, v in diffs.items())
        + f" (tolerance {tolerance:g})")
    check_differences(diffs, tolerance, "the TorchScript export")
    log("note: TorchScript is deprecated in PyTorch (torch.jit.load warns when the file is loaded); "
        "--format torch-export writes its successor")
    meta = build_metadata(source, "torchscript", pooled)
    meta["verification"] = {"tolerance": tolerance, "max_abs_diff": diffs}
    extra = {EXPORT_METADATA_NAME: json.dumps(meta, indent=1)}
    with quiet_jit_deprecation():
        atomic_write(out, lambda tmp: torch.jit.save(scripted, tmp, _extra_files=extra))
    return ExportResult(out, "torchscript", meta, diffs, tolerance)


def export_formats(source: EncoderSource) -> dict[str, Callable[..., ExportResult]]:
    """Every format ``source`` can be exported in: the core's, then its modality's."""
    return {"torchscript": export_torchscript, **source.modality.export_formats()}


def check_out_path(out: Path) -> None:
    """Refuse an ``--out`` that cannot be written, before any export work.

    Raises:
        ValueError: ``out`` exists and is no regular file (a folder: every format writes a new file
            or folder; a named pipe, device or socket, which replacing would destroy), or something
            other than a folder stands where one of its parent folders should be
            (:func:`jepa.outputs.check_output_file`).
    """
    check_output_file(out, "--out", example="encoder.pt", folders=True)


def export(
    source: EncoderSource, out: str | Path, *, fmt: str = "torchscript", pooled: bool = False,
    tolerance: float = EXPORT_TOLERANCE, log: Callable[[str], None] = print,
) -> ExportResult:
    """Export ``source``'s encoder in format ``fmt`` (see module docstring).

    Raises:
        ValueError: ``fmt`` is not a format of the core or of the source's modality.
    """
    formats = export_formats(source)
    if fmt not in formats:
        raise ValueError(f"--format must be one of {', '.join(formats)} for the {source.modality.name} modality, "
                         f"got {fmt!r}")
    check_out_path(Path(out))
    return formats[fmt](source, out, pooled=pooled, tolerance=tolerance, log=log)
