"""Reading and writing the checkpoint layout of the authors' released I-JEPA weights
(docs/method/ijepa.md, "Released checkpoints").

A released file is a ``torch.save`` dict with the top-level keys :data:`RELEASED_KEYS`.
``encoder``, ``predictor`` and ``target_encoder`` are state dicts saved from
DistributedDataParallel wrappers, so every key starts with ``module.``; ``opt`` is an AdamW
state dict with four parameter groups (encoder decay, predictor decay, encoder no-decay,
predictor no-decay), ``scaler`` a GradScaler state (or None), and ``epoch``, ``loss``,
``batch_size``, ``world_size``, ``lr`` plain numbers.

Loading is strict: every key and every shape must match the model, otherwise one
``ValueError`` lists all problems. Nothing is ever partially loaded.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import torch
from pydantic import ValidationError
from torch import Tensor, nn

from jepa.errors import CheckpointError, ConfigError
from jepa.interfaces import ForeignEncoder, Modality
from jepa.modalities.image.config import VIT_ARCHS, EncoderConfig, ImageConfig, InputConfig
from jepa.modalities.image.pos_embed import sincos_2d
from jepa.modalities.image.vit import ViTEncoder, ViTPredictor
from jepa.param_groups import is_no_decay
from jepa.recipe.errors import problems_from
from jepa.weights import load_states, safe_load

RELEASED_KEYS = ("encoder", "predictor", "target_encoder", "opt", "scaler", "epoch", "loss", "batch_size",
                 "world_size", "lr")
METADATA_KEYS = ("epoch", "loss", "batch_size", "world_size", "lr")
DDP_PREFIX = "module."


def strip_ddp_prefix(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Remove leading ``module.`` prefixes (one per DistributedDataParallel wrapping)."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith(DDP_PREFIX):
            key = key[len(DDP_PREFIX):]
        out[key] = value
    return out


def _read(src: str | Path | Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """The checkpoint dict and a name for it in error messages."""
    if isinstance(src, Mapping):
        return src, "<checkpoint dict>"
    path = Path(src)
    ckpt = safe_load(path, "a released checkpoint (.pth.tar)", mmap=False)
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict")
    return ckpt, str(path)


def _section(ckpt: Mapping[str, Any], key: str, name: str) -> dict[str, Tensor]:
    if key not in ckpt:
        raise CheckpointError(f"{name} has no '{key}' entry (top-level keys: {sorted(ckpt)}); "
                         f"expected the released layout with keys {list(RELEASED_KEYS)}")
    section = ckpt[key]
    if not isinstance(section, Mapping):
        raise CheckpointError(f"{name}: '{key}' is a {type(section).__name__}, expected a state dict")
    return strip_ddp_prefix(section)


def _warn_if_not_sincos(table: Tensor, grid_size: int, what: str, name: str) -> None:
    """The any-resolution path recomputes the sin-cos table; a file with another table would disagree."""
    expected = sincos_2d(table.shape[-1], grid_size, grid_size)
    if not torch.allclose(table.reshape(expected.shape).float(), expected, atol=1e-4):
        warnings.warn(f"{name}: the stored {what} is not the 2-D sin-cos table; outputs at the training "
                      "resolution use the stored table, other resolutions use the computed one", stacklevel=3)


def load_released(src: str | Path | Mapping[str, Any], encoder: ViTEncoder, predictor: ViTPredictor | None = None,
                  which: Literal["target_encoder", "encoder"] = "target_encoder") -> dict[str, Any]:
    """Load released I-JEPA weights into ``encoder`` (and ``predictor``), all or nothing.

    Args:
        src: path of a released ``.pth.tar`` (read with ``weights_only=True``) or the loaded dict.
        encoder: receives the ``which`` state dict.
        predictor: receives the ``predictor`` state dict when given.
        which: ``"target_encoder"`` (the EMA weights, used for evaluation) or ``"encoder"``
            (the context encoder).

    Returns:
        The metadata present among ``epoch``, ``loss``, ``batch_size``, ``world_size``, ``lr``.

    Raises:
        ValueError: the file cannot be read safely, lacks a section, or any key or shape
            differs (one message naming every problem and the file).
    """
    if which not in ("target_encoder", "encoder"):
        raise ValueError(f"which={which!r}; expected 'target_encoder' or 'encoder'")
    ckpt, name = _read(src)
    targets: list[tuple[str, nn.Module]] = [(which, encoder)]
    if predictor is not None:
        targets.append(("predictor", predictor))
    states = {key: _section(ckpt, key, name) for key, _ in targets}
    load_states(targets, states, name, "build the model with the architecture of the file, see infer_released_arch")
    _warn_if_not_sincos(states[which]["pos_embed"], encoder.grid_size, f"{which}.pos_embed", name)
    if predictor is not None:
        _warn_if_not_sincos(states["predictor"]["predictor_pos_embed"], predictor.grid_size,
                            "predictor.predictor_pos_embed", name)
    return {k: ckpt[k] for k in METADATA_KEYS if k in ckpt}


def _released_param_names(encoder: ViTEncoder, predictor: ViTPredictor) -> tuple[list[tuple[str, Tensor]], ...]:
    """(name, tensor) lists in the authors' ``named_parameters`` order, fixed tables included.

    The authors register the sin-cos tables as frozen Parameters (a module's own parameters come
    before its children's), so they occupy slots in the optimiser's param groups.
    """
    enc = [("pos_embed", encoder.pos_embed)] + list(encoder.named_parameters())
    pred_own = [("mask_token", predictor.mask_token), ("predictor_pos_embed", predictor.predictor_pos_embed)]
    pred = pred_own + [(n, p) for n, p in predictor.named_parameters() if n != "mask_token"]
    return enc, pred


def released_optimizer_state(encoder: ViTEncoder, predictor: ViTPredictor, lr: float,
                             weight_decay: float = 0.04) -> dict[str, Any]:
    """An AdamW state dict with no moments, in the released four-group layout.

    Groups in order: encoder decay, predictor decay, encoder no-decay, predictor no-decay;
    no-decay means the name contains ``bias`` or the tensor is 1-D (so the position tables and
    the mask token are in the decay groups). No-decay groups carry ``WD_exclude: True`` and
    ``weight_decay: 0``. Parameter indices number the slots across groups in that order.
    """
    enc, pred = _released_param_names(encoder, predictor)
    # Placeholders stand for the parameters: only the group structure and indices are stored.
    groups = [
        {"params": [torch.empty(0) for n, t in enc if not is_no_decay(n, t)]},
        {"params": [torch.empty(0) for n, t in pred if not is_no_decay(n, t)]},
        {"params": [torch.empty(0) for n, t in enc if is_no_decay(n, t)], "WD_exclude": True, "weight_decay": 0.0},
        {"params": [torch.empty(0) for n, t in pred if is_no_decay(n, t)], "WD_exclude": True, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay).state_dict()


def _ddp_state(module: nn.Module) -> dict[str, Tensor]:
    """The module's state dict as a DistributedDataParallel wrapper would save it (CPU copies)."""
    return {DDP_PREFIX + k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def save_released(path: str | Path, encoder: ViTEncoder, predictor: ViTPredictor, target_encoder: ViTEncoder, *,
                  epoch: int = 0, loss: float = 0.0, batch_size: int = 128, world_size: int = 1, lr: float = 0.0,
                  opt: Mapping[str, Any] | None = None, scaler: Mapping[str, Any] | None = None) -> None:
    """Write a checkpoint in the released layout (``module.`` prefixes, every top-level key).

    Args:
        path: destination file (conventionally ``*.pth.tar``).
        encoder, predictor, target_encoder: the three models.
        epoch, loss, batch_size, world_size, lr: metadata stored as plain numbers
            (``batch_size`` per GPU, as in the release).
        opt: an optimiser state dict to store; default :func:`released_optimizer_state` (four
            groups, no moments) so the authors' resume code finds the structure it expects.
        scaler: a GradScaler state dict, or None.
    """
    ckpt = {
        "encoder": _ddp_state(encoder),
        "predictor": _ddp_state(predictor),
        "target_encoder": _ddp_state(target_encoder),
        "opt": dict(opt) if opt is not None else released_optimizer_state(encoder, predictor, lr),
        "scaler": dict(scaler) if scaler is not None else None,
        "epoch": int(epoch),
        "loss": float(loss),
        "batch_size": int(batch_size),
        "world_size": int(world_size),
        "lr": float(lr),
    }
    torch.save(ckpt, Path(path))


def infer_released_arch(state: Mapping[str, Any], num_heads: int | None = None) -> dict[str, Any]:
    """Constructor arguments for the models a released checkpoint was trained with.

    Args:
        state: a whole released checkpoint (uses ``target_encoder``, else ``encoder``, and
            ``predictor`` when present) or a bare encoder state dict; ``module.`` prefixes are fine.
        num_heads: attention heads; the weights do not determine them, so by default they come
            from the standard table (config ``VIT_ARCHS``) for the encoder width.

    Returns:
        ``{"arch": name or None, "encoder": ViTEncoder kwargs, "predictor": ViTPredictor kwargs
        or None}``; e.g. ``ViTEncoder(**arch["encoder"])`` builds the matching encoder.

    Raises:
        ValueError: a needed key is missing, the grid is not square, or the width is not in the
            standard table and ``num_heads`` is not given.
    """
    if "target_encoder" in state or "encoder" in state:
        enc = strip_ddp_prefix(state["target_encoder"] if "target_encoder" in state else state["encoder"])
        pred = strip_ddp_prefix(state["predictor"]) if isinstance(state.get("predictor"), Mapping) else None
    else:
        enc, pred = strip_ddp_prefix(state), None
    for key in ("pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight"):
        if key not in enc:
            raise CheckpointError(f"cannot infer the architecture: encoder key '{key}' is missing")
    embed_dim, in_chans, patch_size, _ = enc["patch_embed.proj.weight"].shape
    num_patches = enc["pos_embed"].shape[-2]
    grid_size = round(num_patches ** 0.5)
    if grid_size * grid_size != num_patches:
        raise CheckpointError(f"pos_embed has {num_patches} positions, not a square grid; only square training "
                         "grids are supported")
    depth = len({k.split(".")[1] for k in enc if k.startswith("blocks.")})
    arch = next((n for n, (w, d, _, _) in VIT_ARCHS.items() if w == embed_dim and d == depth), None)
    if num_heads is None:
        by_width = {w: h for w, _, h, _ in reversed(list(VIT_ARCHS.values()))}  # the first arch of a width wins
        if embed_dim not in by_width:
            raise CheckpointError(f"encoder width {embed_dim} is not in the standard ViT table "
                             f"({sorted(by_width)}); pass num_heads explicitly")
        num_heads = by_width[embed_dim]
    encoder_kwargs = dict(img_size=grid_size * patch_size, patch_size=patch_size, in_chans=in_chans,
                          embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                          mlp_dim=enc["blocks.0.mlp.fc1.weight"].shape[0])
    predictor_kwargs = None
    if pred is not None:
        for key in ("predictor_embed.weight", "predictor_blocks.0.mlp.fc1.weight"):
            if key not in pred:
                raise CheckpointError(f"cannot infer the predictor architecture: predictor key '{key}' is missing")
        predictor_dim = pred["predictor_embed.weight"].shape[0]
        predictor_kwargs = dict(
            grid_size=grid_size, embed_dim=embed_dim, predictor_dim=predictor_dim,
            depth=len({k.split(".")[1] for k in pred if k.startswith("predictor_blocks.")}),
            num_heads=num_heads, mlp_ratio=pred["predictor_blocks.0.mlp.fc1.weight"].shape[0] / predictor_dim,
        )
    return {"arch": arch, "encoder": encoder_kwargs, "predictor": predictor_kwargs}


def is_released_layout(obj: Any) -> bool:
    """A dict whose ``target_encoder`` carries DistributedDataParallel's ``module.`` prefixes and a 2-D
    patch embedding (a video checkpoint's is 3-D: the video modality reads those)."""
    state = obj.get("target_encoder") if isinstance(obj, Mapping) else None
    if not (isinstance(state, Mapping) and any(k.startswith(DDP_PREFIX) for k in state)):
        return False
    patch = next((v for k, v in state.items() if k.endswith("patch_embed.proj.weight")), None)
    return not (isinstance(patch, Tensor) and patch.dim() != 4)


def released_encoder(checkpoint: Mapping[str, Any], path: Path, which: str, options: Mapping[str, Any],
                     modality_type: Callable[[ImageConfig], Modality]) -> ForeignEncoder | None:
    """The image modality's ``load_foreign``: an encoder from the authors' released layout, with a
    modality of ``modality_type`` (the image modality's class, handed in: this module sits below it).

    Options: ``crop_size`` (evaluation resolution; default the one implied by the stored
    position table) and ``arch`` (expected architecture; a mismatch is an error).

    Returns:
        None when ``checkpoint`` is not in the released layout.
    """
    if not is_released_layout(checkpoint):
        return None
    unknown = set(options) - {"crop_size", "arch"}
    if unknown:
        raise ConfigError(f"{path}: released I-JEPA checkpoints take the options crop_size and arch, not {sorted(unknown)}")
    crop_size, arch = options.get("crop_size"), options.get("arch")
    inferred = infer_released_arch(checkpoint)
    kw = inferred["encoder"]
    if arch is not None and arch != inferred["arch"]:
        raise CheckpointError(f"{path}: the weights are a {inferred['arch'] or 'non-standard ViT'} (width {kw['embed_dim']}, "
                         f"depth {kw['depth']}), not the {arch} given with --arch; drop --arch or pass the matching one")
    encoder = ViTEncoder(**kw)
    meta = load_released(checkpoint, encoder, which="target_encoder" if which == "target" else "encoder")
    native = kw["img_size"]
    if crop_size is not None and crop_size != native:
        if crop_size % kw["patch_size"]:
            raise ConfigError(f"--crop-size {crop_size} is not a multiple of the patch size {kw['patch_size']}")
        # Same weights at another training grid: only the fixed sin-cos table changes.
        state = encoder.state_dict()
        grid = crop_size // kw["patch_size"]
        state["pos_embed"] = sincos_2d(kw["embed_dim"], grid, grid).unsqueeze(0)
        encoder = ViTEncoder(**{**kw, "img_size": crop_size})
        encoder.load_state_dict(state)
    try:
        cfg = ImageConfig(
            encoder=EncoderConfig(arch=inferred["arch"] or "vit_base", patch_size=kw["patch_size"],
                                  embed_dim=kw["embed_dim"], depth=kw["depth"], num_heads=kw["num_heads"],
                                  mlp_dim=kw["mlp_dim"]),
            input=InputConfig(crop_size=crop_size or native, in_chans=kw["in_chans"]),
        )
    except ValidationError as exc:
        problems = "; ".join(f"{where}: {msg}" for where, msg in problems_from(exc))
        raise CheckpointError(f"{path}: the image modality cannot describe these weights ({problems})") from None
    modality = modality_type(cfg)
    description = (modality.describe() if inferred["arch"]
                   else f"ViT(D={kw['embed_dim']}, depth={kw['depth']})/{kw['patch_size']} @{crop_size or native}")
    step = meta.get("epoch")
    return ForeignEncoder(modality, encoder, description, None if step is None else int(step))
