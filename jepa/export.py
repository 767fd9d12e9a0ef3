"""Export a frozen image encoder for use outside ``jepa``: TorchScript or timm-named safetensors.

Two formats, both carrying versioned JSON metadata (``EXPORT_FORMAT_VERSION``):

``torchscript``
    ``torch.jit.load(path)`` gives a module mapping normalised images (B, C, H, W), H and W
    any multiples of the patch size, to final-normed patch tokens (B, N, D), or with
    ``pooled`` to their mean (B, D). Exported (non-pooled) files also carry
    ``forward_layers(x, num_last) -> List[Tensor]`` for multi-layer probes. Loading needs
    only torch: ``jepa`` does not have to be importable. The metadata is the ``_extra_files``
    entry ``jepa_export.json``.

``safetensors-timm``
    A state dict in the naming of timm's ``VisionTransformer`` (no class token, average
    pooling, final norm on the tokens, ``pos_embed`` holding the fixed sin-cos table of the
    training grid, no head). The safetensors header holds ``timm_model``, ``timm_kwargs``
    (JSON) and ``jepa_export`` (the metadata), so
    ``timm.create_model(meta["timm_model"], pretrained=False, **kwargs)`` followed by
    ``load_state_dict`` rebuilds the encoder. timm resamples ``pos_embed`` for other
    resolutions (only with ``dynamic_img_size=True``), which is not the sin-cos table: only
    the training resolution reproduces our features exactly.

Nothing is written unless the exported model reproduces the eager encoder: for TorchScript at
the training resolution and a second, non-square multiple of the patch; for timm at the
training resolution. The largest absolute difference is reported and must stay below
``EXPORT_TOLERANCE`` (fp32).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Literal

import torch
from torch import Tensor, nn

import jepa
from jepa.eval.sources import EXPORT_METADATA_NAME, EncoderSource, quiet_jit_deprecation

EXPORT_FORMAT_VERSION = 1
EXPORT_TOLERANCE = 1e-4
"""Largest absolute difference (fp32) allowed between the exported and the eager encoder."""

ExportFormat = Literal["torchscript", "safetensors-timm"]
FORMATS: tuple[str, ...] = ("torchscript", "safetensors-timm")


class ExportVerificationError(ValueError):
    """The exported model does not reproduce the eager encoder; nothing was written."""


class EncoderExport(nn.Module):
    """What a TorchScript export contains: the encoder, optionally followed by mean pooling.

    Args:
        encoder: an image encoder with ``forward(x)`` -> (B, N, D) and ``forward_layers``.
        pooled: return the mean over tokens (B, D) instead of the tokens.
    """

    __constants__ = ["pooled"]

    def __init__(self, encoder: nn.Module, pooled: bool):
        super().__init__()
        self.encoder = encoder
        self.pooled = pooled

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) normalised images -> (B, N, D) tokens, or (B, D) when pooled."""
        tokens = self.encoder(x)
        if self.pooled:
            return tokens.mean(dim=1)
        return tokens

    @torch.jit.export
    def forward_layers(self, x: Tensor, num_last: int) -> List[Tensor]:
        """The last ``num_last`` layers' tokens (B, N, D), each normed with the final norm."""
        return self.encoder.forward_layers(x, num_last)


@dataclass
class ExportResult:
    """What was written and how closely it matches the eager encoder.

    Attributes:
        path: the file written.
        format: ``torchscript`` or ``safetensors-timm``.
        metadata: the JSON metadata stored in the file.
        max_abs_diff: ``{"HxW": max |exported - eager|}`` per checked resolution.
        tolerance: the bound the differences were checked against.
    """

    path: Path
    format: str
    metadata: dict[str, Any]
    max_abs_diff: dict[str, float]
    tolerance: float


def check_resolutions(img_size: int, patch_size: int) -> list[tuple[int, int]]:
    """The (H, W) sizes an export is verified at: the training size and a non-square other one."""
    other_w = img_size - patch_size if img_size - patch_size >= patch_size else img_size + 2 * patch_size
    return [(img_size, img_size), (img_size + patch_size, other_w)]


def _image_encoder(source: EncoderSource) -> nn.Module:
    if source.kind == "torchscript":
        raise ValueError(f"{source.source}: already an exported file; export from the run or checkpoint it came from")
    if source.modality_name != "image":
        raise ValueError(f"{source.source}: export supports the image modality only, got {source.modality_name!r}")
    encoder = source.encoder
    for attr in ("patch_size", "img_size", "embed_dim", "depth", "num_heads", "in_chans"):
        if not hasattr(encoder, attr):
            raise ValueError(f"{source.source}: the encoder {type(encoder).__name__} has no {attr!r}; "
                             "export supports ViT encoders built by the image modality")
    return encoder


def build_metadata(source: EncoderSource, fmt: str, pooled: bool) -> dict[str, Any]:
    """The versioned JSON metadata stored in every export (public API: keys only get added)."""
    encoder = _image_encoder(source)
    cfg = source.modality.cfg
    return {
        "format": fmt,
        "format_version": EXPORT_FORMAT_VERSION,
        "model": source.description,
        "modality_name": source.modality_name,
        "modality": cfg.model_dump(mode="json"),
        "arch": {"embed_dim": encoder.embed_dim, "depth": encoder.depth, "num_heads": encoder.num_heads,
                 "mlp_dim": encoder.blocks[0].mlp.fc1.out_features, "patch_size": encoder.patch_size,
                 "in_chans": encoder.in_chans, "class_token": False, "pos_embed": "sincos-2d"},
        "patch_size": encoder.patch_size,
        "train_resolution": encoder.img_size,
        "in_chans": encoder.in_chans,
        "mean": list(cfg.input.mean),  # type: ignore[attr-defined]
        "std": list(cfg.input.std),  # type: ignore[attr-defined]
        "input": "(B, C, H, W) float32 images scaled to [0, 1] then normalised with mean/std; "
                 "H and W multiples of patch_size",
        "output": "(B, D) mean of the final-normed patch tokens" if pooled
                  else "(B, N, D) final-normed patch tokens in raster order, N = (H / p) * (W / p)",
        "pooled": pooled,
        "encoder": source.which,
        "source": source.source,
        "source_kind": source.kind,
        "source_step": source.step,
        "recipe": None if source.recipe is None else source.recipe.model_dump(mode="json"),
        "jepa_version": jepa.__version__,
        "torch_version": torch.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _script(module: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script`` (its own function so tests can substitute a faulty exporter)."""
    with quiet_jit_deprecation():
        return torch.jit.script(module)


@torch.inference_mode()
def max_abs_differences(
    eager: Callable[[Tensor], Tensor], exported: Callable[[Tensor], Tensor], sizes: list[tuple[int, int]],
    in_chans: int, batch_size: int = 2, seed: int = 0,
) -> dict[str, float]:
    """Largest |exported(x) - eager(x)| on seeded random inputs of each (H, W) in ``sizes``.

    Raises:
        ExportVerificationError: the outputs differ in shape.
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for h, w in sizes:
        x = torch.randn(batch_size, in_chans, h, w, generator=gen)
        ref, got = eager(x), exported(x)
        if ref.shape != got.shape:
            raise ExportVerificationError(f"exported output {tuple(got.shape)} differs in shape from eager {tuple(ref.shape)} at {h}x{w}")
        out[f"{h}x{w}"] = (got.float() - ref.float()).abs().max().item()
    return out


def _check(diffs: dict[str, float], tolerance: float, what: str) -> None:
    failing = [v for v in diffs.values() if not v <= tolerance]  # NaN fails too
    if failing:
        worst = max(failing, key=lambda v: math.inf if math.isnan(v) else v)
        detail = ", ".join(f"{k}: {v:.3g}" for k, v in diffs.items())
        raise ExportVerificationError(
            f"{what} does not reproduce the eager encoder: max abs difference {worst:.3g} > tolerance "
            f"{tolerance:g} ({detail}); nothing was written. This is a bug in the exporter or the model, "
            "please report it with the model name and torch version")


def _atomic_write(out: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same folder, so ``out`` appears complete or not at all.

    The temporary file has ``out``'s name (TorchScript names its archive folder after it) inside
    a hidden scratch folder, and is created by ``write`` itself, so it gets the usual permissions.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = out.parent / f".{out.name}.{os.getpid()}.tmp"
    scratch.mkdir()
    try:
        tmp = scratch / out.name
        write(str(tmp))
        os.replace(tmp, out)
    finally:
        shutil.rmtree(scratch)


def export_torchscript(
    source: EncoderSource, out: str | Path, *, pooled: bool = False, tolerance: float = EXPORT_TOLERANCE,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Script the encoder, verify it against eager at two resolutions, then write it.

    Raises:
        ExportVerificationError: the scripted model differs by more than ``tolerance``
            (nothing is written).
        ValueError: the source cannot be exported (not an image ViT, already exported).
    """
    out = Path(out)
    encoder = _image_encoder(source)
    eager = EncoderExport(encoder, pooled).eval()
    scripted = _script(eager)
    sizes = check_resolutions(encoder.img_size, encoder.patch_size)
    diffs = max_abs_differences(eager, scripted, sizes, encoder.in_chans)
    if not pooled:  # the multi-layer entry point feeds linear4; check it at the training size
        depth = min(4, encoder.depth)
        layers = max_abs_differences(lambda x: torch.stack(eager.forward_layers(x, depth)),
                                     lambda x: torch.stack(scripted.forward_layers(x, depth)),
                                     sizes[:1], encoder.in_chans)
        diffs.update({f"{k} forward_layers({depth})": v for k, v in layers.items()})
    log("scripted vs eager max abs difference: " + ", ".join(f"{k}: {v:.2e}" for k, v in diffs.items())
        + f" (tolerance {tolerance:g})")
    _check(diffs, tolerance, "the TorchScript export")
    meta = build_metadata(source, "torchscript", pooled)
    meta["verification"] = {"tolerance": tolerance, "max_abs_diff": diffs}
    extra = {EXPORT_METADATA_NAME: json.dumps(meta, indent=1)}
    with quiet_jit_deprecation():
        _atomic_write(out, lambda tmp: torch.jit.save(scripted, tmp, _extra_files=extra))
    return ExportResult(out, "torchscript", meta, diffs, tolerance)


# --------------------------------------------------------------------------- timm naming


def timm_model_name(arch: str, patch_size: int, img_size: int) -> str:
    """A registered timm model name for the architecture (kwargs override its sizes anyway)."""
    import timm

    for name in (f"{arch}_patch{patch_size}_{img_size}", f"{arch}_patch{patch_size}_224", f"{arch}_patch16_224"):
        if timm.is_model(name):
            return name
    return "vit_base_patch16_224"


def timm_kwargs(encoder: nn.Module, mean: list[float], std: list[float]) -> dict[str, Any]:
    """``timm.create_model`` keyword arguments that rebuild ``encoder`` as a timm VisionTransformer.

    ``pretrained_cfg_overlay`` carries our evaluation view (normalisation, resolution, resize
    ratio 256/224, bilinear) so ``timm.data.resolve_data_config(model=model)`` reproduces it,
    and clears the base model's download location (these weights come from the file).

    Raises:
        ValueError: timm cannot express the MLP width (``int(D * mlp_ratio)`` would round it).
    """
    dim = encoder.embed_dim
    mlp_dim = encoder.blocks[0].mlp.fc1.out_features
    mlp_ratio = mlp_dim / dim
    if int(dim * mlp_ratio) != mlp_dim:
        raise ValueError(f"timm would build an MLP of width {int(dim * mlp_ratio)}, not {mlp_dim}, "
                         f"from mlp_ratio={mlp_ratio!r}; export with --format torchscript instead")
    return {
        "img_size": encoder.img_size, "patch_size": encoder.patch_size, "in_chans": encoder.in_chans,
        "embed_dim": dim, "depth": encoder.depth, "num_heads": encoder.num_heads, "mlp_ratio": mlp_ratio,
        "qkv_bias": True, "class_token": False, "global_pool": "avg", "fc_norm": False, "num_classes": 0,
        "pos_embed": "learn", "no_embed_class": False, "reg_tokens": 0,
        "pretrained_cfg_overlay": {
            "mean": list(mean), "std": list(std), "input_size": [encoder.in_chans, encoder.img_size, encoder.img_size],
            "crop_pct": 224 / 256, "crop_mode": "center", "interpolation": "bilinear", "num_classes": 0,
            "url": "", "hf_hub_id": "", "tag": "jepa", "license": "",
        },
    }


def to_timm_state_dict(encoder: nn.Module) -> dict[str, Tensor]:
    """The encoder's weights under timm ``VisionTransformer`` names (contiguous fp32 copies).

    Our layout already uses timm's block naming; without a class token the stored sin-cos
    ``pos_embed`` (1, N, D) takes the place of timm's learned table.
    """
    return {k: v.detach().float().contiguous().clone() for k, v in encoder.state_dict().items()}


def build_timm_model(timm_model: str, kwargs: dict[str, Any], state: dict[str, Tensor]) -> nn.Module:
    """``timm.create_model`` + strict ``load_state_dict``: what a user of the file does."""
    import timm

    model = timm.create_model(timm_model, pretrained=False, **kwargs)
    model.load_state_dict(state, strict=True)
    return model.eval()


def export_safetensors_timm(
    source: EncoderSource, out: str | Path, *, pooled: bool = False, tolerance: float = EXPORT_TOLERANCE,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Write the encoder as a timm-named safetensors file after checking timm reproduces it.

    ``pooled`` only records which output the user intends (``forward_features`` tokens or
    ``forward_head(..., pre_logits=True)``, the average); the weights are the same.

    Raises:
        ExportVerificationError: timm's features differ by more than ``tolerance``.
    """
    from safetensors.torch import save_file

    out = Path(out)
    encoder = _image_encoder(source)
    input_cfg = getattr(source.modality.cfg, "input")
    kwargs = timm_kwargs(encoder, list(input_cfg.mean), list(input_cfg.std))
    name = timm_model_name(getattr(source.modality.cfg, "encoder").arch, encoder.patch_size, encoder.img_size)
    state = to_timm_state_dict(encoder)
    model = build_timm_model(name, kwargs, state)
    size = [(encoder.img_size, encoder.img_size)]
    diffs = max_abs_differences(encoder, model.forward_features, size, encoder.in_chans)
    pooled_diffs = max_abs_differences(lambda x: encoder(x).mean(dim=1),
                                       lambda x: model.forward_head(model.forward_features(x), pre_logits=True),
                                       size, encoder.in_chans)
    diffs.update({f"{k} pooled": v for k, v in pooled_diffs.items()})
    log("timm vs eager max abs difference: " + ", ".join(f"{k}: {v:.2e}" for k, v in diffs.items())
        + f" (tolerance {tolerance:g})")
    _check(diffs, tolerance, f"timm {name}")
    meta = build_metadata(source, "safetensors-timm", pooled)
    meta["verification"] = {"tolerance": tolerance, "max_abs_diff": diffs}
    meta["timm_model"] = name
    meta["timm_kwargs"] = kwargs
    header = {"jepa_export": json.dumps(meta), "timm_model": name, "timm_kwargs": json.dumps(kwargs),
              "format_version": str(EXPORT_FORMAT_VERSION)}
    _atomic_write(out, lambda tmp: save_file(state, tmp, metadata=header))
    return ExportResult(out, "safetensors-timm", meta, diffs, tolerance)


def load_timm_export(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a ``safetensors-timm`` export as a timm model (eval mode) and return its metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    if "timm_model" not in header or "timm_kwargs" not in header:
        raise ValueError(f"{path}: not a `jepa export --format safetensors-timm` file (no timm_model/timm_kwargs metadata)")
    model = build_timm_model(header["timm_model"], json.loads(header["timm_kwargs"]), load_file(str(path)))
    return model, json.loads(header["jepa_export"])


def export(
    source: EncoderSource, out: str | Path, *, fmt: str = "torchscript", pooled: bool = False,
    tolerance: float = EXPORT_TOLERANCE, log: Callable[[str], None] = print,
) -> ExportResult:
    """Export ``source``'s encoder in format ``fmt`` (see module docstring)."""
    if fmt == "torchscript":
        return export_torchscript(source, out, pooled=pooled, tolerance=tolerance, log=log)
    if fmt == "safetensors-timm":
        return export_safetensors_timm(source, out, pooled=pooled, tolerance=tolerance, log=log)
    raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
