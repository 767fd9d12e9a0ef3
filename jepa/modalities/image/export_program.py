"""The ``torch-export`` format: a ``torch.export`` program (``.pt2``) of the image encoder with a
dynamic batch and a dynamic resolution (any H, W that are multiples of the patch).

``torch.export.load(path).module()(x)`` maps (B, C, H, W) normalised images to final-normed
tokens (B, N, D), or with ``pooled`` to their mean (B, D). Loading needs only torch. The
program computes the sin-cos position table of the input's grid on the fly (at the training
resolution it equals the stored table, which the verification checks), so no branch depends
on the input size. Our metadata is the ``extra_files`` entry ``jepa_export.json``
(``torch.export.load(path, extra_files={"jepa_export.json": ""})`` fills it in).

Verified by loading the written program back from the scratch file and comparing it with the
eager encoder at the training size, a second non-square size, and a third batch size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor, nn

from jepa.export import (EXPORT_TOLERANCE, ExportResult, ExportVerificationError, atomic_write, build_metadata,
                         check_differences, max_abs_differences)
from jepa.modalities.image.pos_embed import sincos_2d

if TYPE_CHECKING:
    from jepa.sources import EncoderSource

PROGRAM_METADATA_NAME = "jepa_export.json"
MAX_GRID = 512
"""Largest patch grid side the program accepts (a ``torch.export`` bound; 512 patches = 8192 px at /16)."""


class AnyResolutionViT(nn.Module):
    """The encoder's forward with the sin-cos table always computed for the input's grid.

    Args:
        encoder: a :class:`~jepa.modalities.image.vit.ViTEncoder`.
        pooled: return the token mean (B, D) instead of the tokens (B, N, D).
    """

    def __init__(self, encoder: nn.Module, pooled: bool):
        super().__init__()
        self.encoder = encoder
        self.pooled = pooled

    def forward(self, x: Tensor) -> Tensor:
        enc = self.encoder
        p = enc.patch_size
        tokens = enc.patch_embed(x)
        pos = sincos_2d(enc.embed_dim, x.shape[-2] // p, x.shape[-1] // p, device=tokens.device)
        tokens = tokens + pos.to(tokens.dtype).unsqueeze(0)
        for blk in enc.blocks:
            tokens = blk(tokens)
        tokens = enc.norm(tokens)
        return tokens.mean(dim=1) if self.pooled else tokens


def export_torch_program(
    source: EncoderSource, out: str | Path, *, pooled: bool = False, tolerance: float = EXPORT_TOLERANCE,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """``torch.export`` the encoder with dynamic batch and resolution, verify the saved program, write it.

    Raises:
        ValueError: ``torch.export`` cannot capture the encoder.
        ExportVerificationError: the loaded program differs by more than ``tolerance`` (nothing is written).
    """
    from torch.export import Dim

    out = Path(out)
    encoder = source.encoder
    p = encoder.patch_size
    module = AnyResolutionViT(encoder, pooled).eval()
    inputs = source.modality.export_inputs(encoder, torch.Generator().manual_seed(0))
    inputs.append(torch.randn(3, *inputs[0].shape[1:], generator=torch.Generator().manual_seed(1)))
    dynamic = {"x": {0: Dim("batch", min=1, max=1 << 16),
                     2: p * Dim("grid_h", min=1, max=MAX_GRID), 3: p * Dim("grid_w", min=1, max=MAX_GRID)}}
    try:
        with torch.no_grad():
            program = torch.export.export(module, (inputs[0],), dynamic_shapes=dynamic, strict=False)
    except Exception as exc:  # noqa: BLE001 - any capture failure is reported as a user-facing error
        raise ValueError(f"{source.description}: torch.export cannot capture the encoder with a dynamic batch and "
                         f"resolution ({type(exc).__name__}: {str(exc).splitlines()[0]}); export with --format "
                         "torchscript or timm instead") from exc
    meta = build_metadata(source, "torch-export", pooled)
    meta["dynamic"] = {"batch": "any >= 1", "height": f"multiples of {p} up to {p * MAX_GRID}",
                       "width": f"multiples of {p} up to {p * MAX_GRID}"}
    eager = (lambda x: encoder(x).mean(dim=1)) if pooled else encoder
    result: dict[str, float] = {}

    def write(tmp: str) -> None:
        torch.export.save(program, tmp, extra_files={PROGRAM_METADATA_NAME: json.dumps(meta)})
        loaded = torch.export.load(tmp).module()
        diffs: dict[str, float] = {}
        for x in inputs:
            try:
                one = max_abs_differences(eager, loaded, [x])
            except RuntimeError as exc:
                raise ExportVerificationError(f"the torch.export program fails on an input the encoder accepts "
                                              f"({str(exc).splitlines()[0]}); nothing was written") from exc
            diffs.update({f"{k} batch {x.shape[0]}": v for k, v in one.items()})
        log("torch.export program vs eager max abs difference: "
            + ", ".join(f"{k}: {v:.2e}" for k, v in diffs.items()) + f" (tolerance {tolerance:g})")
        check_differences(diffs, tolerance, "the torch.export program")
        meta["verification"] = {"tolerance": tolerance, "max_abs_diff": diffs}
        torch.export.save(program, tmp, extra_files={PROGRAM_METADATA_NAME: json.dumps(meta)})
        result.update(diffs)

    atomic_write(out, write)
    return ExportResult(out, "torch-export", meta, result, tolerance)
