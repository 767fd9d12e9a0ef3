"""The Hugging Face ``transformers`` export: an ``IJepaModel`` folder (``config.json`` +
``model.safetensors``) that ``transformers.IJepaModel.from_pretrained(PATH)`` loads.

Our ViT and ``IJepaModel`` compute the same function at the training resolution: patch
embedding, the stored sin-cos table as ``position_embeddings``, pre-norm blocks (exact GELU,
LayerNorm eps 1e-6), final ``layernorm``; no class token, no pooler. ``last_hidden_state``
equals our tokens (B, N, D); their mean is our pooled feature. At other resolutions
transformers interpolates the table bicubically (``interpolate_pos_encoding=True``), which is
not the sin-cos table of the new grid: only the training resolution reproduces our features,
so that is where the export is verified.

The weights are renamed into the installed transformers' names (our fused ``qkv`` splits into
``q_proj`` / ``k_proj`` / ``v_proj``), loaded strictly into an ``IJepaModel`` built from the
config, written with ``save_pretrained`` into a scratch folder, loaded back with
``from_pretrained`` and compared with the eager encoder before the folder is moved into place.
Needs ``transformers`` (the ``hf`` extra: ``pip install 'jepa-forge[hf]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor, nn

from jepa.nn.blocks import LAYER_NORM_EPS
from jepa.errors import CheckpointError
from jepa.export import (EXPORT_TOLERANCE, ExportResult, atomic_write, build_metadata, max_abs_differences,
                         report_differences)
from jepa.export_hf import hf_model_with, import_transformers, write_hf_metadata

if TYPE_CHECKING:
    from jepa.sources import EncoderSource

def hf_config_kwargs(encoder: nn.Module) -> dict[str, Any]:
    """``IJepaConfig`` arguments describing ``encoder``."""
    return {"hidden_size": encoder.embed_dim, "num_hidden_layers": encoder.depth,
            "num_attention_heads": encoder.num_heads, "intermediate_size": encoder.blocks[0].mlp.fc1.out_features,
            "hidden_act": "gelu", "layer_norm_eps": LAYER_NORM_EPS, "image_size": encoder.img_size,
            "patch_size": encoder.patch_size, "num_channels": encoder.in_chans, "qkv_bias": True,
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def to_hf_state_dict(encoder: nn.Module) -> dict[str, Tensor]:
    """Our encoder's weights under ``IJepaModel`` names (transformers 5)."""
    src = {k: v.detach().float() for k, v in encoder.state_dict().items()}
    out = {"embeddings.position_embeddings": src["pos_embed"],
           "embeddings.patch_embeddings.projection.weight": src["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": src["patch_embed.proj.bias"],
           "layernorm.weight": src["norm.weight"], "layernorm.bias": src["norm.bias"]}
    for i in range(encoder.depth):
        b, h = f"blocks.{i}.", f"layers.{i}."
        for part in ("weight", "bias"):
            q, k, v = src[f"{b}attn.qkv.{part}"].chunk(3, dim=0)
            out.update({f"{h}attention.q_proj.{part}": q, f"{h}attention.k_proj.{part}": k,
                        f"{h}attention.v_proj.{part}": v,
                        f"{h}attention.o_proj.{part}": src[f"{b}attn.proj.{part}"],
                        f"{h}layernorm_before.{part}": src[f"{b}norm1.{part}"],
                        f"{h}layernorm_after.{part}": src[f"{b}norm2.{part}"],
                        f"{h}mlp.fc1.{part}": src[f"{b}mlp.fc1.{part}"],
                        f"{h}mlp.fc2.{part}": src[f"{b}mlp.fc2.{part}"]})
    return {k: v.contiguous().clone() for k, v in out.items()}


def export_hf(
    source: EncoderSource, out: str | Path, *, pooled: bool = False, tolerance: float = EXPORT_TOLERANCE,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Write an ``IJepaModel`` folder, verified by loading it back with ``from_pretrained``.

    Raises:
        ValueError: transformers is missing, ``out`` exists, or the installed transformers names
            its weights differently (every difference named).
        ExportVerificationError: transformers' outputs differ by more than ``tolerance`` (nothing written).
    """
    transformers = import_transformers()
    out = Path(out)
    if out.exists():
        raise CheckpointError(f"{out} exists; the hf export writes a new folder, choose another --out or remove it")
    encoder = source.encoder
    model = hf_model_with(transformers.IJepaModel, transformers.IJepaConfig(**hf_config_kwargs(encoder)),
                          to_hf_state_dict(encoder), transformers)
    inputs = source.modality.export_inputs(encoder, torch.Generator().manual_seed(0))[:1]  # training size only
    meta = build_metadata(source, "hf", pooled)
    result: dict[str, float] = {}

    def write(tmp: str) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        loaded = transformers.IJepaModel.from_pretrained(tmp).eval()
        diffs = max_abs_differences(encoder, lambda x: loaded(pixel_values=x).last_hidden_state, inputs)
        report_differences(diffs, tolerance, "transformers IJepaModel", "the Hugging Face IJepaModel folder", log)
        meta["verification"] = {"tolerance": tolerance, "max_abs_diff": diffs}
        write_hf_metadata(tmp, meta, transformers)
        result.update(diffs)

    atomic_write(out, write)
    return ExportResult(out, "hf", meta, result, tolerance)
