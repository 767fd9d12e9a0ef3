"""Image export formats for timm: a ``timm.create_model("local-dir:PATH")`` folder, the older
single-file timm-named safetensors, and the image entries of every export's metadata.

``timm`` is a folder holding ``config.json`` (timm's hub layout: ``architecture``,
``num_features``, ``pretrained_cfg`` with our evaluation view, ``model_args`` rebuilding the
encoder) and ``model.safetensors``, so ``timm.create_model("local-dir:PATH", pretrained=True)``
loads it with no other argument. It is verified by loading it exactly that way from the
scratch folder before the folder is moved into place.

``safetensors-timm`` is a state dict in the naming of timm's ``VisionTransformer`` (no class
token, average pooling, final norm on the tokens, ``pos_embed`` holding the fixed sin-cos table
of the training grid, no head). The safetensors header holds ``timm_model``, ``timm_kwargs``
(JSON) and ``jepa_export`` (the metadata), so ``timm.create_model(meta["timm_model"],
pretrained=False, **kwargs)`` followed by ``load_state_dict`` rebuilds the encoder. timm
resamples ``pos_embed`` for other resolutions (only with ``dynamic_img_size=True``), which is
not the sin-cos table: only the training resolution reproduces our features exactly, so that
is where the export is verified.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from jepa.checkpoint.json_file import parse_json_object
from jepa.errors import CheckpointError
from jepa.export import (EXPORT_FORMAT_VERSION, EXPORT_TOLERANCE, ExportResult, atomic_write, build_metadata,
                         max_abs_differences, report_differences)

if TYPE_CHECKING:
    from jepa.modalities.image.config import ImageConfig
    from jepa.sources import EncoderSource


def check_resolutions(img_size: int, patch_size: int) -> list[tuple[int, int]]:
    """The (H, W) sizes an export is verified at: the training size and a non-square other one."""
    other_w = img_size - patch_size if img_size - patch_size >= patch_size else img_size + 2 * patch_size
    return [(img_size, img_size), (img_size + patch_size, other_w)]


def image_export_metadata(encoder: nn.Module, cfg: "ImageConfig") -> dict[str, Any]:
    """How to feed an exported image encoder and what it is (the image modality's ``export_metadata``)."""
    for attr in ("patch_size", "img_size", "embed_dim", "depth", "num_heads", "in_chans"):
        if not hasattr(encoder, attr):
            raise CheckpointError(f"the encoder {type(encoder).__name__} has no {attr!r}; the image modality exports "
                             "ViT encoders built by itself")
    return {
        "arch": {"embed_dim": encoder.embed_dim, "depth": encoder.depth, "num_heads": encoder.num_heads,
                 "mlp_dim": encoder.blocks[0].mlp.fc1.out_features, "patch_size": encoder.patch_size,
                 "in_chans": encoder.in_chans, "class_token": False, "pos_embed": "sincos-2d"},
        "patch_size": encoder.patch_size,
        "train_resolution": encoder.img_size,
        "in_chans": encoder.in_chans,
        "mean": list(cfg.input.mean),
        "std": list(cfg.input.std),
        "input": "(B, C, H, W) float32 images scaled to [0, 1] then normalised with mean/std; "
                 "H and W multiples of patch_size",
        "token_layout": "patch tokens in raster order, N = (H / patch_size) * (W / patch_size)",
    }


# --------------------------------------------------------------------------- timm naming


def timm_model_name(arch: str, patch_size: int, img_size: int) -> str:
    """A registered timm model name for the architecture (kwargs override its sizes anyway)."""
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
        raise CheckpointError(f"timm would build an MLP of width {int(dim * mlp_ratio)}, not {mlp_dim}, "
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

    out = Path(out)
    encoder = source.encoder
    cfg = source.modality.cfg
    kwargs = timm_kwargs(encoder, list(cfg.input.mean), list(cfg.input.std))
    name = timm_model_name(cfg.encoder.arch, encoder.patch_size, encoder.img_size)
    state = to_timm_state_dict(encoder)
    model = build_timm_model(name, kwargs, state)
    inputs = source.modality.export_inputs(encoder, torch.Generator().manual_seed(0))[:1]  # timm: training size only
    diffs = max_abs_differences(encoder, model.forward_features, inputs)
    pooled_diffs = max_abs_differences(lambda x: encoder(x).mean(dim=1),
                                       lambda x: model.forward_head(model.forward_features(x), pre_logits=True), inputs)
    diffs.update({f"{k} pooled": v for k, v in pooled_diffs.items()})
    report_differences(diffs, tolerance, "timm", f"timm {name}", log)
    meta = build_metadata(source, "safetensors-timm", pooled)
    meta["verification"] = {"tolerance": tolerance, "max_abs_diff": diffs}
    meta["timm_model"] = name
    meta["timm_kwargs"] = kwargs
    header = {"jepa_export": json.dumps(meta), "timm_model": name, "timm_kwargs": json.dumps(kwargs),
              "format_version": str(EXPORT_FORMAT_VERSION)}
    atomic_write(out, lambda tmp: save_file(state, tmp, metadata=header))
    return ExportResult(out, "safetensors-timm", meta, diffs, tolerance)


TIMM_CONFIG_NAME = "config.json"
TIMM_WEIGHTS_NAME = "model.safetensors"


def timm_folder_config(name: str, kwargs: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """timm's ``config.json`` for ``local-dir:`` loading (``_parse_model_cfg`` layout) plus our metadata."""
    overlay = dict(kwargs["pretrained_cfg_overlay"])
    for key in ("url", "hf_hub_id"):
        overlay.pop(key, None)
    pretrained_cfg = {**overlay, "fixed_input_size": False, "first_conv": "patch_embed.proj", "classifier": "head",
                      "custom_load": False}
    model_args = {k: v for k, v in kwargs.items() if k != "pretrained_cfg_overlay"}
    return {"architecture": name, "num_features": kwargs["embed_dim"], "num_classes": 0,
            "pretrained_cfg": pretrained_cfg, "model_args": model_args, "jepa_export": meta}


def load_timm_folder(path: str | Path) -> nn.Module:
    """``timm.create_model("local-dir:PATH", pretrained=True)`` in eval mode: what a user of the folder does."""

    return timm.create_model(f"local-dir:{Path(path)}", pretrained=True).eval()


def export_timm_folder(
    source: EncoderSource, out: str | Path, *, pooled: bool = False, tolerance: float = EXPORT_TOLERANCE,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Write a timm ``local-dir`` folder, verified by loading it back through ``timm.create_model``.

    Raises:
        ExportVerificationError: timm's features differ by more than ``tolerance`` (nothing is written).
    """

    out = Path(out)
    if out.exists():
        raise CheckpointError(f"{out} exists; the timm export writes a new folder, choose another --out or remove it")
    encoder = source.encoder
    cfg = source.modality.cfg
    kwargs = timm_kwargs(encoder, list(cfg.input.mean), list(cfg.input.std))
    name = timm_model_name(cfg.encoder.arch, encoder.patch_size, encoder.img_size)
    state = to_timm_state_dict(encoder)
    inputs = source.modality.export_inputs(encoder, torch.Generator().manual_seed(0))[:1]  # timm: training size only
    meta = build_metadata(source, "timm", pooled)
    result: dict[str, float] = {}

    def write(tmp: str) -> None:
        folder = Path(tmp)
        folder.mkdir()
        save_file(state, str(folder / TIMM_WEIGHTS_NAME), metadata={"format": "pt"})
        config = timm_folder_config(name, kwargs, meta)
        (folder / TIMM_CONFIG_NAME).write_text(json.dumps(config, indent=1))
        model = load_timm_folder(folder)
        diffs = max_abs_differences(encoder, model.forward_features, inputs)
        pooled_diffs = max_abs_differences(lambda x: encoder(x).mean(dim=1), model, inputs)
        diffs.update({f"{k} pooled": v for k, v in pooled_diffs.items()})
        report_differences(diffs, tolerance, "timm local-dir", f"the timm folder ({name})", log)
        meta["verification"] = {"tolerance": tolerance, "max_abs_diff": diffs}
        (folder / TIMM_CONFIG_NAME).write_text(json.dumps(timm_folder_config(name, kwargs, meta), indent=1))
        result.update(diffs)

    atomic_write(out, write)
    return ExportResult(out, "timm", meta, result, tolerance)


def load_timm_export(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a ``safetensors-timm`` export as a timm model (eval mode) and return its metadata."""

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    if "timm_model" not in header or "timm_kwargs" not in header:
        raise CheckpointError(f"{path}: not a `jepa export --format safetensors-timm` file (no timm_model/timm_kwargs metadata)")
    kwargs, meta = _header_object(path, header, "timm_kwargs"), _header_object(path, header, "jepa_export")
    model = build_timm_model(header["timm_model"], kwargs, load_file(str(path)))
    return model, meta


def _header_object(path: str | Path, header: dict[str, str], key: str) -> dict[str, Any]:
    """The JSON object stored as ``key`` in a safetensors header (the file may be damaged or made by
    someone else: a ``ValueError`` naming the file and the key, never a traceback)."""
    value, problem = parse_json_object(header[key]) if key in header else (None, "missing")
    if problem is not None:
        raise CheckpointError(f"{path}: not a readable `jepa export --format safetensors-timm` file (metadata {key}: "
                         f"{problem}); export it again")
    return value
