"""The video Hugging Face ``transformers`` export: a ``VJEPA2Model`` folder (``config.json`` +
``model.safetensors``) that ``transformers.VJEPA2Model.from_pretrained(PATH)`` loads with no other argument.

``VJEPA2Model`` is V-JEPA 2's RoPE ViT (tubelet embedding, pre-norm blocks whose attention rotates queries and
keys with the authors' layout, final ``layernorm``) plus its predictor, so only ``encoder.pos_embed: rope``
models export; a sin-cos model has no ``VJEPA2Model`` counterpart. The folder holds the source's encoder (the
target encoder unless ``--encoder context``) and its predictor: a run's or checkpoint's trained predictor, an
authors'-layout file's predictor, or for ``random:RECIPE`` the recipe's at random init. transformers takes
clips as ``pixel_values_videos`` (B, T, C, H, W), frames before channels, and computes the rotations of
every clip on the training grid's width (``crop_size / patch_size``), so it reproduces our features at the
training resolution (any frame count), which is where the export is verified.

The weights are renamed into the installed transformers' names (our fused ``qkv`` splits into ``query`` /
``key`` / ``value``; mask tokens (G, 1, P) become (G, 1, 1, P)), loaded strictly into a ``VJEPA2Model`` built
from the config, written with ``save_pretrained`` into a scratch folder, loaded back with ``from_pretrained``
and compared with the eager encoder and predictor before the folder is moved into place. Needs
``transformers`` (the ``hf`` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor, nn

from jepa.errors import CheckpointError, ConfigError
from jepa.export import (EXPORT_TOLERANCE, ExportResult, atomic_write, build_metadata, context_target_split,
                         max_abs_differences, report_differences)
from jepa.export_hf import hf_model_with, import_transformers, write_hf_metadata
from jepa.modalities.video.export_official import source_states
from jepa.modalities.video.vit import VideoRoPEEncoder
from jepa.nn.blocks import LAYER_NORM_EPS

if TYPE_CHECKING:
    from jepa.sources import EncoderSource

def _mlp_ratio(dim: int, mlp_dim: int) -> float:
    """A ratio transformers turns back into exactly ``mlp_dim`` (it computes ``int(dim * ratio)``)."""
    ratio = mlp_dim / dim
    if int(dim * ratio) != mlp_dim:
        ratio = (mlp_dim + 0.5) / dim
    return ratio


def hf_config_kwargs(encoder: nn.Module, predictor: nn.Module) -> dict[str, Any]:
    """``VJEPA2Config`` arguments describing our RoPE ``encoder`` and ``predictor``."""
    pdim = predictor.predictor_dim
    return {"patch_size": encoder.patch_size, "crop_size": encoder.img_size, "frames_per_clip": encoder.num_frames,
            "tubelet_size": encoder.tubelet_size, "hidden_size": encoder.embed_dim, "in_chans": encoder.in_chans,
            "num_attention_heads": encoder.num_heads, "num_hidden_layers": encoder.depth,
            "mlp_ratio": _mlp_ratio(encoder.embed_dim, encoder.blocks[0].mlp.fc1.out_features),
            "layer_norm_eps": LAYER_NORM_EPS, "qkv_bias": True, "hidden_act": "gelu", "drop_path_rate": 0.0,
            "attention_probs_dropout_prob": 0.0, "pred_hidden_size": pdim,
            "pred_num_attention_heads": predictor.num_heads, "pred_num_hidden_layers": predictor.depth,
            "pred_num_mask_tokens": predictor.num_mask_tokens,
            "pred_mlp_ratio": _mlp_ratio(pdim, predictor.predictor_blocks[0].mlp.fc1.out_features)}


def _blocks(src: dict[str, Tensor], ours: str, theirs: str, depth: int) -> dict[str, Tensor]:
    out = {}
    for i in range(depth):
        b, h = f"{ours}.{i}.", f"{theirs}.{i}."
        for part in ("weight", "bias"):
            q, k, v = src[f"{b}attn.qkv.{part}"].chunk(3, dim=0)
            out.update({f"{h}attention.query.{part}": q, f"{h}attention.key.{part}": k,
                        f"{h}attention.value.{part}": v, f"{h}attention.proj.{part}": src[f"{b}attn.proj.{part}"],
                        f"{h}norm1.{part}": src[f"{b}norm1.{part}"], f"{h}norm2.{part}": src[f"{b}norm2.{part}"],
                        f"{h}mlp.fc1.{part}": src[f"{b}mlp.fc1.{part}"], f"{h}mlp.fc2.{part}": src[f"{b}mlp.fc2.{part}"]})
    return out


def to_hf_state_dict(encoder: nn.Module, predictor: nn.Module) -> dict[str, Tensor]:
    """Our encoder's and predictor's weights under ``VJEPA2Model`` names (transformers 5)."""
    enc = {k: v.detach().float() for k, v in encoder.state_dict().items()}
    pred = {k: v.detach().float() for k, v in predictor.state_dict().items()}
    out = {"encoder.embeddings.patch_embeddings.proj.weight": enc["patch_embed.proj.weight"],
           "encoder.embeddings.patch_embeddings.proj.bias": enc["patch_embed.proj.bias"],
           "encoder.layernorm.weight": enc["norm.weight"], "encoder.layernorm.bias": enc["norm.bias"],
           "predictor.embeddings.mask_tokens": pred["mask_tokens"].unsqueeze(1),
           "predictor.embeddings.predictor_embeddings.weight": pred["predictor_embed.weight"],
           "predictor.embeddings.predictor_embeddings.bias": pred["predictor_embed.bias"],
           "predictor.layernorm.weight": pred["predictor_norm.weight"],
           "predictor.layernorm.bias": pred["predictor_norm.bias"],
           "predictor.proj.weight": pred["predictor_proj.weight"], "predictor.proj.bias": pred["predictor_proj.bias"]}
    out.update(_blocks(enc, "blocks", "encoder.layer", encoder.depth))
    out.update(_blocks(pred, "predictor_blocks", "predictor.layer", predictor.depth))
    return {k: v.contiguous().clone() for k, v in out.items()}


def source_predictor(source: EncoderSource) -> nn.Module:
    """The predictor that goes with the source's encoder (see the module docstring)."""
    modality = source.modality
    if source.kind in ("run", "checkpoint", "foreign"):
        states, _ = source_states(source)
        predictor = modality.build_predictor()
        predictor.load_state_dict(states["predictor"], strict=True)
        return predictor.eval()
    if source.kind == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(source.recipe.seed if source.recipe is not None else 0)
            modality.build_encoder()  # the same draws as the random encoder before the predictor's
            return modality.build_predictor().eval()
    raise CheckpointError(f"{source.source}: --format hf writes a VJEPA2Model, encoder and predictor; pass a run, a "
                          f"checkpoint, a V-JEPA 2 checkpoint of the authors' code or random:RECIPE (this source is "
                          f"{source.kind!r})")


def export_hf(
    source: EncoderSource, out: str | Path, *, pooled: bool = False, tolerance: float = EXPORT_TOLERANCE,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Write a ``VJEPA2Model`` folder, verified by loading it back with ``from_pretrained``.

    Raises:
        ConfigError: transformers is missing, ``out`` exists, ``--pooled``, or the encoder is not a RoPE model.
        CheckpointError: the installed transformers names the weights differently (every difference named).
        ExportVerificationError: transformers' outputs differ by more than ``tolerance`` (nothing written).
    """
    transformers = import_transformers()
    out = Path(out)
    if out.exists():
        raise ConfigError(f"{out} exists; the hf export writes a new folder, choose another --out or remove it")
    if pooled:
        raise ConfigError("--pooled does not apply to --format hf: VJEPA2Model returns tokens")
    encoder = source.encoder
    if not isinstance(encoder, VideoRoPEEncoder):
        raise ConfigError(f"{source.source}: --format hf writes transformers' VJEPA2Model, a RoPE ViT; this encoder uses "
                          "sin-cos positions (encoder.pos_embed: sincos). Export it with --format torchscript, "
                          "torch-export or official")
    predictor = source_predictor(source)
    config = transformers.VJEPA2Config(**hf_config_kwargs(encoder, predictor))
    model = hf_model_with(transformers.VJEPA2Model, config, to_hf_state_dict(encoder, predictor), transformers)
    inputs = source.modality.export_inputs(encoder, torch.Generator().manual_seed(0))[:1]  # training size only
    ctx_idx, tgt_idx = context_target_split(encoder.num_patches, torch.Generator().manual_seed(1))
    mask_index = 1 % predictor.num_mask_tokens  # VJEPA2Model's predictor uses its default mask_index=1
    meta = build_metadata(source, "hf", pooled)
    result: dict[str, float] = {}

    def ours_predicted(x: Tensor) -> Tensor:
        b = x.shape[0]
        tokens = encoder(x)
        ctx = tokens[:, ctx_idx]
        return predictor(ctx, ctx_idx.expand(b, -1), tgt_idx.expand(b, -1), mask_index)

    def write(tmp: str) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        loaded = transformers.VJEPA2Model.from_pretrained(tmp).eval()

        def hf_tokens(x: Tensor) -> Tensor:
            return loaded(pixel_values_videos=x.transpose(1, 2), skip_predictor=True).last_hidden_state

        def hf_predicted(x: Tensor) -> Tensor:
            b = x.shape[0]
            outputs = loaded(pixel_values_videos=x.transpose(1, 2), context_mask=[ctx_idx.expand(b, -1)],
                             target_mask=[tgt_idx.expand(b, -1)])
            return outputs.predictor_output.last_hidden_state

        diffs = max_abs_differences(encoder, hf_tokens, inputs)
        diffs.update({f"predictor {k}": v for k, v in max_abs_differences(ours_predicted, hf_predicted, inputs).items()})
        report_differences(diffs, tolerance, "transformers VJEPA2Model", "the Hugging Face VJEPA2Model folder", log)
        meta["verification"] = {"tolerance": tolerance, "max_abs_diff": diffs}
        write_hf_metadata(tmp, meta, transformers, input_layout="pixel_values_videos (B, T, C, H, W): our clips "
                          "(B, C, T, H, W) with axes 1 and 2 swapped")
        result.update(diffs)

    atomic_write(out, write)
    return ExportResult(out, "hf", meta, result, tolerance)
