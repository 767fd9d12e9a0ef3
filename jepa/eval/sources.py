"""Resolve what ``jepa eval`` / ``jepa export`` were pointed at into a frozen encoder.

A *source* is one of:

* a run directory, a checkpoint directory or a ``models.pt`` written by ``jepa train``
  (read by :func:`jepa.checkpoint.load_model_weights`, recipe included);
* a checkpoint in the authors' released layout (``.pth.tar``, keys prefixed ``module.``),
  whose architecture is inferred from its shapes;
* a TorchScript file written by ``jepa export`` (its metadata says how to feed it);
* ``random:RECIPE``: the recipe's architecture at random initialisation (the baseline).

Whatever the source, the result is an :class:`EncoderSource`: the encoder in eval mode plus
the modality section needed to build its evaluation view.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from jepa import registry
from jepa.interfaces import Modality
from jepa.recipe import Recipe

RANDOM_PREFIX = "random:"
EXPORT_METADATA_NAME = "jepa_export.json"
"""Name of the JSON metadata entry (``_extra_files``) inside TorchScript files from ``jepa export``."""

SourceKind = Literal["run", "checkpoint", "released", "torchscript", "random"]
WhichEncoder = Literal["target", "context"]


@dataclass
class EncoderSource:
    """A frozen encoder ready for feature extraction or export.

    Attributes:
        encoder: the eager :class:`~jepa.interfaces.Encoder` (or the loaded TorchScript module
            for ``kind == "torchscript"``), in eval mode, gradients off.
        modality: the bound modality whose ``eval_batch`` feeds the encoder.
        kind: what the source was (see module docstring).
        description: one line naming the model, e.g. ``ViT-H/14 @224``.
        which: ``target`` or ``context`` encoder.
        source: the string the user passed.
        step: optimiser step of the weights (released checkpoints: their epoch; exports: the
            step of what they were exported from; None for random init).
        recipe: the training recipe of run / checkpoint / random sources.
        metadata: the export metadata of TorchScript sources, else None.
    """

    encoder: nn.Module
    modality: Modality
    kind: SourceKind
    description: str
    which: WhichEncoder
    source: str
    step: int | None = None
    recipe: Recipe | None = None
    metadata: dict[str, Any] | None = None

    @property
    def depth(self) -> int:
        """Number of layers ``layers`` can return from."""
        if self.metadata is not None:
            return int(self.metadata["arch"]["depth"])
        return int(self.encoder.depth)

    @property
    def modality_name(self) -> str:
        return self.modality.name

    def layers(self, x: Tensor, num_last: int) -> list[Tensor]:
        """Outputs of the last ``num_last`` layers, each (B, N, D), the last being the final output."""
        return list(self.encoder.forward_layers(x, num_last))


@contextlib.contextmanager
def quiet_jit_deprecation():
    """Hide torch's FutureWarning that TorchScript is deprecated: exporting to it is deliberate."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit\.")
        yield


def _freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def check_state_dict(module: nn.Module, state: dict[str, Tensor], what: str, expected: str) -> None:
    """Raise a clear error when ``state`` does not fit ``module`` key for key and shape for shape.

    Args:
        module: the model built from the recipe / inferred architecture.
        state: the weights to load.
        what: names the weights in the message (e.g. the checkpoint path).
        expected: names the architecture the model was built as (e.g. ``ViT-S/16 @224``).

    Raises:
        ValueError: naming the differences and how to fix the mismatch.
    """
    from jepa.checkpoint import state_mismatches

    problems = state_mismatches({k: tuple(v.shape) for k, v in module.state_dict().items()}, state)
    if problems:
        raise ValueError(
            f"{what}: the weights are not those of a {expected}: {'; '.join(problems)}. The checkpoint holds "
            "another architecture than its recipe says; evaluate it with the recipe that trained it")


def _random_source(spec: str, which: WhichEncoder) -> EncoderSource:
    from jepa.recipe import load_recipe

    path = spec[len(RANDOM_PREFIX):]
    if not path:
        raise ValueError(f"{spec!r}: name a recipe after 'random:', e.g. random:recipes/image_demo.yaml")
    recipe = load_recipe(path)
    modality = registry.bind(recipe.modality)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        encoder = modality.build_encoder()
    return EncoderSource(_freeze(encoder), modality, "random", modality.describe(), which, spec, None, recipe)


def _trained_source(path: Path, which: WhichEncoder) -> EncoderSource:
    from jepa.checkpoint import load_model_weights

    weights = load_model_weights(path)
    recipe = weights.recipe
    modality = registry.bind(recipe.modality)
    encoder = modality.build_encoder()
    state = weights.target_encoder if which == "target" else weights.encoder
    describe = modality.describe()
    check_state_dict(encoder, state, f"{path} ({which} encoder)", f"{describe} (recipe {recipe.name!r})")
    encoder.load_state_dict(state)
    kind: SourceKind = "run" if path.is_dir() and not (path / "models.pt").exists() else "checkpoint"
    return EncoderSource(_freeze(encoder), modality, kind, describe, which, str(path), weights.step, recipe)


def _read_torch_file(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True`` (no code runs), errors turned into a clear message."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ValueError(f"{path}: cannot be read as a checkpoint ({exc}); pass a run dir, a checkpoint, "
                         "a released .pth.tar or a file from `jepa export`") from exc


def is_released_layout(obj: Any) -> bool:
    """A dict whose ``target_encoder`` carries DistributedDataParallel's ``module.`` prefixes."""
    state = obj.get("target_encoder") if isinstance(obj, dict) else None
    return isinstance(state, dict) and any(k.startswith("module.") for k in state)


def _released_source(path: Path, checkpoint: dict[str, Any], which: WhichEncoder, crop_size: int | None,
                     arch: str | None) -> EncoderSource:
    from jepa.modalities.image.config import EncoderConfig, ImageConfig, InputConfig
    from jepa.modalities.image.pos_embed import sincos_2d
    from jepa.modalities.image.released import infer_released_arch, load_released
    from jepa.modalities.image.vit import ViTEncoder

    key = "target_encoder" if which == "target" else "encoder"
    inferred = infer_released_arch(checkpoint)
    kw = inferred["encoder"]
    if arch is not None and arch != inferred["arch"]:
        raise ValueError(f"{path}: the weights are a {inferred['arch'] or 'non-standard ViT'} (width {kw['embed_dim']}, "
                         f"depth {kw['depth']}), not the {arch} given with --arch; drop --arch or pass the matching one")
    encoder = ViTEncoder(**kw)
    meta = load_released(checkpoint, encoder, which=key)
    native = kw["img_size"]
    if crop_size is not None and crop_size != native:
        if crop_size % kw["patch_size"]:
            raise ValueError(f"--crop-size {crop_size} is not a multiple of the patch size {kw['patch_size']}")
        # Same weights at another training grid: only the fixed sin-cos table changes.
        state = encoder.state_dict()
        grid = crop_size // kw["patch_size"]
        state["pos_embed"] = sincos_2d(kw["embed_dim"], grid, grid).unsqueeze(0)
        encoder = ViTEncoder(**{**kw, "img_size": crop_size})
        encoder.load_state_dict(state)
    cfg = ImageConfig(
        encoder=EncoderConfig(arch=inferred["arch"] or "vit_base", patch_size=kw["patch_size"], embed_dim=kw["embed_dim"],
                              depth=kw["depth"], num_heads=kw["num_heads"], mlp_dim=kw["mlp_dim"]),
        input=InputConfig(crop_size=crop_size or native, in_chans=kw["in_chans"]),
    )
    modality = registry.bind(cfg)
    description = (modality.describe() if inferred["arch"]
                   else f"ViT(D={kw['embed_dim']}, depth={kw['depth']})/{kw['patch_size']} @{crop_size or native}")
    step = meta.get("epoch")
    return EncoderSource(_freeze(encoder), modality, "released", description, which, str(path),
                         None if step is None else int(step))


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or n.endswith("/code/__torch__.py") or "/code/__torch__/" in n
                   for n in zf.namelist())


def read_export_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata stored in a TorchScript file by ``jepa export`` (no model is built).

    Raises:
        ValueError: the file has no ``jepa export`` metadata.
    """
    extra = {EXPORT_METADATA_NAME: ""}
    with quiet_jit_deprecation():
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    if not extra[EXPORT_METADATA_NAME]:
        raise ValueError(f"{path}: a TorchScript file without {EXPORT_METADATA_NAME} metadata; "
                         "only files written by `jepa export` can be evaluated")
    return json.loads(extra[EXPORT_METADATA_NAME])


def _torchscript_source(path: Path, which: WhichEncoder | None) -> EncoderSource:
    extra = {EXPORT_METADATA_NAME: ""}
    with quiet_jit_deprecation():
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    if not extra[EXPORT_METADATA_NAME]:
        raise ValueError(f"{path}: a TorchScript file without {EXPORT_METADATA_NAME} metadata; "
                         "only files written by `jepa export` can be evaluated")
    meta = json.loads(extra[EXPORT_METADATA_NAME])
    if meta.get("pooled"):
        raise ValueError(f"{path}: a pooled export (B, D) cannot feed the probes, which need tokens; "
                         "export again without --pooled")
    if which is not None and which != meta["encoder"]:
        raise ValueError(f"{path}: this export holds the {meta['encoder']} encoder, not the {which} one; "
                         f"drop --encoder or export the {which} encoder from the checkpoint")
    modality_cls = registry.get(meta["modality_name"])
    modality = modality_cls(modality_cls.config_model.model_validate(meta["modality"]))
    return EncoderSource(module.eval(), modality, "torchscript", meta["model"],
                         meta["encoder"], str(path), meta.get("source_step"), None, meta)


def load_source(
    source: str, *, which: WhichEncoder | None = None, crop_size: int | None = None, arch: str | None = None,
) -> EncoderSource:
    """Resolve ``source`` (see module docstring) into a frozen encoder.

    Args:
        source: run dir, checkpoint dir, models.pt, released .pth.tar, exported TorchScript
            file, or ``random:RECIPE``.
        which: ``target`` (what the paper evaluates; the default) or ``context`` encoder. An
            exported file holds one of them; asking it for the other is an error.
        crop_size: released checkpoints only: the evaluation resolution (default: the one
            implied by the stored positional table).
        arch: released checkpoints only: the expected architecture; a mismatch is an error.

    Raises:
        ValueError: the source does not exist, is of an unknown kind, or its weights do not
            match the architecture it claims.
    """
    if which not in (None, "target", "context"):
        raise ValueError(f"--encoder must be 'target' or 'context', got {which!r}")
    if source.startswith(RANDOM_PREFIX):
        return _random_source(source, which or "target")
    path = Path(source)
    if not path.exists():
        raise ValueError(f"{source}: no such run directory, checkpoint or file; pass a run dir, a checkpoint "
                         "(dir or models.pt), a released .pth.tar, a file from `jepa export`, or random:RECIPE")
    if path.is_file() and _is_torchscript(path):
        return _torchscript_source(path, which)
    if path.is_file() and path.name != "models.pt":
        checkpoint = _read_torch_file(path)
        if is_released_layout(checkpoint):
            return _released_source(path, checkpoint, which or "target", crop_size, arch)
    if crop_size is not None or arch is not None:
        raise ValueError("--crop-size and --arch apply to released .pth.tar checkpoints only; a run or checkpoint "
                         "of `jepa train` carries its recipe")
    return _trained_source(path, which or "target")
