"""Reading and writing the checkpoint layout of the authors' V-JEPA 2 (and V-JEPA) code
(docs/method/vjepa.md, "V-JEPA 2").

The authors' training loop (``app/vjepa/train.py`` of facebookresearch/vjepa2) saves a ``torch.save``
dict with the top-level keys :data:`RELEASED_KEYS`: ``encoder``, ``predictor`` and ``target_encoder``
are state dicts of models wrapped twice, in ``MultiSeqWrapper`` / ``PredictorMultiSeqWrapper``
(``backbone.``) and in DistributedDataParallel (``module.``), so keys read
``module.backbone.blocks.0.attn.qkv.weight``; their hub loader strips both prefixes
(``src/hub/backbones.py``), and so does :func:`strip_prefixes`. ``opt`` is an AdamW state dict with
four groups (encoder decay, predictor decay, encoder no-decay, predictor no-decay), ``scaler`` a
GradScaler state or None, the rest plain numbers.

Names are ours except for the predictor's mask tokens: the authors keep a ``ParameterList``
(``mask_tokens.0``, ``mask_tokens.1``, ... each (1, 1, P)), we one (G, 1, P) parameter
``mask_tokens``. A RoPE model (``use_rope=True``) registers no position table; a file that
carries ``pos_embed`` / ``predictor_pos_embed`` anyway (the authors' hub loader says their release
does, and loads with ``strict=False``) has them dropped when read into a RoPE model.

What the weights do not say: the number of heads (by default from the width, V-JEPA 2's table: ViT-L
16, ViT-H 16, ViT-g 22 for a RoPE file; the standard table for a sin-cos file) and the clip geometry of a
RoPE model (default the authors' evaluation clip: 16 frames, frame step 4, 256 px). The position
scheme is read from the encoder: no ``pos_embed`` means RoPE; ``--arch vjepa2_vit_large`` (``_huge``,
``_giant``, the authors' hub names) says RoPE and the heads whatever the file stores.

Loading is strict: every key and shape must match, otherwise one error names every problem; nothing
is partially loaded. Files are read with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import torch
from torch import Tensor, nn

from jepa.errors import CheckpointError, ConfigError
from jepa.interfaces import ForeignEncoder, Modality
from jepa.modalities.video.config import VideoConfig
from jepa.nn.config import VIT_ARCHS
from jepa.param_groups import is_no_decay
from jepa.weights import load_states, safe_load

RELEASED_KEYS = ("encoder", "predictor", "opt", "scaler", "target_encoder", "epoch", "loss", "batch_size",
                 "world_size", "lr")
METADATA_KEYS = ("epoch", "loss", "batch_size", "world_size", "lr")
PREFIXES = ("module.", "backbone.")
"""Wrapper prefixes the authors' state dicts carry (DistributedDataParallel, MultiSeqWrapper)."""
SAVE_PREFIX = "module.backbone."
HUB_ARCHS = {"vjepa2_vit_large": "vit_large", "vjepa2_vit_huge": "vit_huge", "vjepa2_vit_giant": "vit_giant_xformers"}
"""The authors' hub names (``src/hub/backbones.py``) -> our arch; all RoPE."""
VJEPA2_HEADS = {1024: 16, 1280: 16, 1408: 22}
"""Encoder heads of V-JEPA 2's ViT-L, ViT-H and ViT-g (``vit_giant_xformers``) by width."""
VJEPA2_PREDICTOR_HEADS = 12
DEFAULT_CLIP = {"num_frames": 16, "frame_step": 4, "crop_size": 256}
"""The authors' evaluation clip (``configs/eval/vitl/*.yaml``: frames_per_clip 16, frame_step 4, resolution 256)."""
POS_TABLES = {"encoder": "pos_embed", "predictor": "predictor_pos_embed"}


def strip_prefixes(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Remove leading ``module.`` and ``backbone.`` prefixes, in any order and number."""
    out = {}
    for key, value in state.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        out[key] = value
    return out


def _encoder_state(ckpt: Mapping[str, Any]) -> dict[str, Tensor] | None:
    for key in ("target_encoder", "encoder"):
        if isinstance(ckpt.get(key), Mapping):
            return strip_prefixes(ckpt[key])
    return None


def is_video_layout(obj: Any) -> bool:
    """A dict whose ``target_encoder`` (or ``encoder``) has a 3-D tubelet embedding (a 5-D ``patch_embed.proj.weight``)."""
    state = _encoder_state(obj) if isinstance(obj, Mapping) else None
    patch = None if state is None else state.get("patch_embed.proj.weight")
    return isinstance(patch, Tensor) and patch.dim() == 5


def predictor_to_ours(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The authors' predictor names -> ours: ``mask_tokens.g`` (1, 1, P) stacked into ``mask_tokens`` (G, 1, P)."""
    out = {k: v for k, v in state.items() if not k.startswith("mask_tokens.")}
    tokens = {k: v for k, v in state.items() if k.startswith("mask_tokens.")}
    if tokens:
        indices = sorted(int(k.split(".")[1]) for k in tokens)
        if indices != list(range(len(indices))):
            raise CheckpointError(f"predictor mask tokens {sorted(tokens)} are not numbered 0..{len(indices) - 1}")
        out["mask_tokens"] = torch.cat([tokens[f"mask_tokens.{i}"].reshape(1, 1, -1) for i in indices])
    return out


def predictor_to_theirs(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our predictor names -> the authors': ``mask_tokens`` (G, 1, P) split into ``mask_tokens.g`` (1, 1, P), placed
    after ``predictor_embed`` as the authors' ``ParameterList`` (registered after it) is."""
    tokens = state.get("mask_tokens")
    split = {} if tokens is None else {f"mask_tokens.{g}": tokens[g:g + 1].clone() for g in range(tokens.shape[0])}
    rest = [(k, v) for k, v in state.items() if k != "mask_tokens"]
    cut = max((i + 1 for i, (k, _) in enumerate(rest) if k.startswith("predictor_embed.")), default=0)
    return dict(rest[:cut]) | split | dict(rest[cut:])


def read_checkpoint(src: str | Path | Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """The checkpoint dict (read with ``weights_only=True``) and a name for it in messages."""
    if isinstance(src, Mapping):
        return src, "<checkpoint dict>"
    ckpt = safe_load(Path(src), "a V-JEPA checkpoint of the authors' code", mmap=False)
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{src} holds a {type(ckpt).__name__}, not a checkpoint dict")
    return ckpt, str(src)


def infer_arch(ckpt: Mapping[str, Any], arch: str | None = None) -> dict[str, Any]:
    """The architecture of an authors'-layout checkpoint, from its shapes (and ``arch`` when given).

    Args:
        ckpt: the whole checkpoint, or a bare encoder state dict.
        arch: one of our arch names (checked against the shapes; gives the heads) or a hub name of
            :data:`HUB_ARCHS` (also says RoPE).

    Returns:
        ``{"arch", "pos_embed", "encoder": dict(embed_dim, depth, num_heads, mlp_dim, patch_size,
        tubelet_size, in_chans), "num_patches": int or None, "predictor": dict(embed_dim, depth,
        num_heads, mlp_ratio, num_mask_tokens) or None}``.

    Raises:
        CheckpointError: a needed key is missing, or ``arch`` names other shapes (the keys named).
        ConfigError: ``arch`` is not a known name.
    """
    enc = _encoder_state(ckpt) if ("encoder" in ckpt or "target_encoder" in ckpt) else strip_prefixes(ckpt)
    if enc is None:
        raise CheckpointError("no encoder or target_encoder state dict in the checkpoint")
    for key in ("patch_embed.proj.weight", "blocks.0.mlp.fc1.weight"):
        if key not in enc:
            raise CheckpointError(f"cannot infer the architecture: encoder key '{key}' is missing "
                                  f"(keys: {sorted(enc)[:8]} ...)")
    embed_dim, in_chans, tubelet_size, patch_size, _ = enc["patch_embed.proj.weight"].shape
    depth = len({k.split(".")[1] for k in enc if k.startswith("blocks.")})
    mlp_dim = enc["blocks.0.mlp.fc1.weight"].shape[0]
    rope = "pos_embed" not in enc or arch in HUB_ARCHS
    table_arch = HUB_ARCHS.get(arch, arch) if arch is not None else None
    if table_arch is not None:
        if table_arch not in VIT_ARCHS:
            raise ConfigError(f"--arch {arch}: not an architecture; use one of {', '.join(VIT_ARCHS)} or the authors' "
                              f"hub names {', '.join(HUB_ARCHS)}")
        w, d, h, m = VIT_ARCHS[table_arch]
        if (w, d, m) != (embed_dim, depth, mlp_dim):
            raise CheckpointError(
                f"--arch {arch} is width {w}, depth {d}, MLP {m}, but the weights are width {embed_dim} "
                f"(patch_embed.proj.weight {tuple(enc['patch_embed.proj.weight'].shape)}), depth {depth} (blocks.0 .. "
                f"blocks.{depth - 1}), MLP {mlp_dim} (blocks.0.mlp.fc1.weight); drop --arch or pass the matching one")
        num_heads = h
    else:
        heads = VJEPA2_HEADS if rope else {w: h for w, _, h, _ in reversed(list(VIT_ARCHS.values()))}
        if embed_dim not in heads:
            raise CheckpointError(f"encoder width {embed_dim} is not a standard ViT width ({sorted(heads)}), so the "
                                  "number of heads is unknown; pass --arch with a matching architecture")
        num_heads = heads[embed_dim]
        table_arch = next((n for n, (w, d, h, _) in VIT_ARCHS.items()
                           if (w, d, h) == (embed_dim, depth, num_heads)), None)
    pred = strip_prefixes(ckpt["predictor"]) if isinstance(ckpt.get("predictor"), Mapping) else None
    predictor = None
    if pred is not None and "predictor_embed.weight" in pred and "predictor_blocks.0.mlp.fc1.weight" in pred:
        p_dim = pred["predictor_embed.weight"].shape[0]
        p_heads = VJEPA2_PREDICTOR_HEADS if rope and p_dim % VJEPA2_PREDICTOR_HEADS == 0 else num_heads
        predictor = dict(embed_dim=p_dim, num_heads=p_heads,
                         depth=len({k.split(".")[1] for k in pred if k.startswith("predictor_blocks.")}),
                         mlp_ratio=pred["predictor_blocks.0.mlp.fc1.weight"].shape[0] / p_dim,
                         num_mask_tokens=len([k for k in pred if k.startswith("mask_tokens.")]) or None)
    return {"arch": table_arch, "pos_embed": "rope" if rope else "sincos",
            "encoder": dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_dim=mlp_dim,
                            patch_size=patch_size, tubelet_size=tubelet_size, in_chans=in_chans),
            "num_patches": None if rope else enc["pos_embed"].shape[-2], "predictor": predictor}


def states_for(ckpt: Mapping[str, Any], pos_embed: str, predictor_pos_embed: str | None = None
               ) -> dict[str, dict[str, Tensor]]:
    """The checkpoint's ``encoder`` / ``predictor`` / ``target_encoder`` in our naming, for models with ``pos_embed``
    (the predictor: ``predictor_pos_embed``, default the same); RoPE: stored position tables dropped."""
    out = {}
    for key in ("encoder", "predictor", "target_encoder"):
        if not isinstance(ckpt.get(key), Mapping):
            continue
        state = strip_prefixes(ckpt[key])
        if key == "predictor":
            state = predictor_to_ours(state)
        if (predictor_pos_embed or pos_embed if key == "predictor" else pos_embed) == "rope":
            state.pop(POS_TABLES["predictor" if key == "predictor" else "encoder"], None)
        out[key] = state
    return out


def load_checkpoint(src: str | Path | Mapping[str, Any], encoder: nn.Module, predictor: nn.Module | None = None,
                    which: Literal["target_encoder", "encoder"] = "target_encoder") -> dict[str, Any]:
    """Load an authors'-layout checkpoint into our ``encoder`` (and ``predictor``), all or nothing.

    Returns:
        The metadata present among ``epoch``, ``loss``, ``batch_size``, ``world_size``, ``lr``.

    Raises:
        CheckpointError: a section is missing, or any key or shape differs (every problem named).
    """
    if which not in ("target_encoder", "encoder"):
        raise ValueError(f"which={which!r}; expected 'target_encoder' or 'encoder'")
    ckpt, name = read_checkpoint(src)
    pos_embed = "sincos" if "pos_embed" in encoder.state_dict() else "rope"
    predictor_pos = None if predictor is None else (
        "sincos" if "predictor_pos_embed" in predictor.state_dict() else "rope")
    states = states_for(ckpt, pos_embed, predictor_pos)
    targets: list[tuple[str, nn.Module]] = [(which, encoder)] + ([("predictor", predictor)] if predictor is not None else [])
    missing = [key for key, _ in targets if key not in states]
    if missing:
        raise CheckpointError(f"{name} has no {', '.join(missing)} state dict (top level: {sorted(ckpt)}); expected "
                              f"the authors' layout with keys {list(RELEASED_KEYS)}")
    load_states(targets, states, name,
                "build it with the architecture of the file, see infer_arch, or pass the matching --arch")
    return {k: ckpt[k] for k in METADATA_KEYS if k in ckpt}


def _theirs(module: nn.Module, predictor: bool) -> dict[str, Tensor]:
    """The authors' state dict of ``module`` (prefixes added, CPU copies), tables first as their frozen Parameters."""
    state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    table = POS_TABLES["predictor" if predictor else "encoder"]
    ordered = ({table: state.pop(table)} if table in state else {}) | state
    if predictor:
        ordered = predictor_to_theirs(ordered)
    return {SAVE_PREFIX + k: v for k, v in ordered.items()}


def optimizer_state(encoder: nn.Module, predictor: nn.Module, lr: float, weight_decay: float = 0.04) -> dict[str, Any]:
    """An AdamW state dict without moments in the authors' four groups (``init_opt`` of ``app/vjepa/utils.py``):
    encoder decay, predictor decay, encoder no-decay, predictor no-decay; no-decay: biases and 1-D tensors."""
    enc, pred = _theirs(encoder, False), _theirs(predictor, True)
    groups = [{"params": [torch.empty(0) for n, t in part.items() if no_decay == is_no_decay(n, t)]}
              | ({"WD_exclude": True, "weight_decay": 0.0} if no_decay else {})
              for no_decay in (False, True) for part in (enc, pred)]
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay).state_dict()


def save_checkpoint(path: str | Path, encoder: nn.Module, predictor: nn.Module, target_encoder: nn.Module, *,
                    epoch: int = 0, loss: float = 0.0, batch_size: int = 1, world_size: int = 1,
                    lr: float = 0.0) -> None:
    """Write our three models in the authors' layout (``module.backbone.`` keys, every top-level key)."""
    torch.save({
        "encoder": _theirs(encoder, False), "predictor": _theirs(predictor, True),
        "opt": optimizer_state(encoder, predictor, lr), "scaler": None,
        "target_encoder": _theirs(target_encoder, False),
        "epoch": int(epoch), "loss": float(loss), "batch_size": int(batch_size), "world_size": int(world_size),
        "lr": float(lr),
    }, Path(path))


def released_encoder(checkpoint: Mapping[str, Any], path: Path, which: str, options: Mapping[str, Any],
                     modality_type: Callable[[VideoConfig], Modality]) -> ForeignEncoder | None:
    """The video modality's ``load_foreign``: an encoder from the authors' V-JEPA (2) layout, or None,
    with a modality of ``modality_type`` (the video modality's class, handed in: this module sits below it).

    Options: ``arch`` (see :func:`infer_arch`), ``crop_size``, ``num_frames`` and ``frame_step`` (the
    evaluation clip; a sin-cos model's table fixes frames x crop, so one of ``num_frames`` /
    ``crop_size`` follows from the other; default 16 frames).
    """
    if not is_video_layout(checkpoint):
        return None
    unknown = set(options) - {"crop_size", "arch", "num_frames", "frame_step"}
    if unknown:
        raise ConfigError(f"{path}: V-JEPA checkpoints take the options crop_size, arch, num_frames and frame_step, "
                          f"not {sorted(unknown)}")
    inferred = infer_arch(checkpoint, options.get("arch"))
    kw = inferred["encoder"]
    clip = {k: options.get(k) or DEFAULT_CLIP[k] for k in DEFAULT_CLIP}
    if inferred["pos_embed"] == "sincos":  # the stored table fixes the training grid
        side = kw["patch_size"]
        n, frames = inferred["num_patches"], clip["num_frames"]
        if options.get("crop_size") is None:
            per_frame = n // (frames // kw["tubelet_size"])
            grid = round(per_frame ** 0.5)
            if grid * grid * (frames // kw["tubelet_size"]) != n:
                raise CheckpointError(f"{path}: pos_embed has {n} positions, not {frames} frames of a square grid; pass "
                                      "--crop-size (the training resolution)")
            clip["crop_size"] = grid * side
    section: dict[str, Any] = {
        "encoder": {"arch": inferred["arch"] or "vit_large", "patch_size": kw["patch_size"],
                    "tubelet_size": kw["tubelet_size"], "embed_dim": kw["embed_dim"], "depth": kw["depth"],
                    "num_heads": kw["num_heads"], "mlp_dim": kw["mlp_dim"], "pos_embed": inferred["pos_embed"]},
        "input": {"num_frames": clip["num_frames"], "frame_step": clip["frame_step"], "crop_size": clip["crop_size"],
                  "in_chans": kw["in_chans"]},
    }
    if inferred["predictor"] is not None:  # the file's predictor, for `jepa export --format official / hf`
        section["predictor"] = dict(inferred["predictor"])
    cfg = VideoConfig.model_validate(section)
    modality = modality_type(cfg)
    encoder = modality.build_encoder()
    meta = load_checkpoint(checkpoint, encoder, which="target_encoder" if which == "target" else "encoder")
    description = (modality.describe() if inferred["arch"]
                   else f"video ViT(D={kw['embed_dim']}, depth={kw['depth']})/{kw['patch_size']} {inferred['pos_embed']}")
    step = meta.get("epoch")
    return ForeignEncoder(modality, encoder, description, None if step is None else int(step))
