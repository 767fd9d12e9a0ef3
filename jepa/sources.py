"""Resolve what ``jepa eval`` / ``jepa export`` were pointed at into a frozen encoder.

This is the reading side that both export and evaluation sit on. A *source* is one of:

* a run directory, a checkpoint directory or a ``models.pt`` written by ``jepa train``
  (read by :func:`jepa.checkpoint.load_model_weights`, recipe included);
* a checkpoint in another project's layout (e.g. the authors' released I-JEPA ``.pth.tar``):
  read with ``weights_only=True``, then offered to every registered modality's
  :meth:`~jepa.interfaces.Modality.load_foreign` until one recognises it;
* a TorchScript file written by ``jepa export`` (its metadata says how to feed it), only when
  the caller passes ``trust_torchscript=True`` (``jepa eval --trust-torchscript``): loading
  TorchScript runs the code stored in the file, so a crafted file can do anything the user can;
* ``random:RECIPE``: the recipe's architecture at random initialisation (the baseline);
* ``pixels:RECIPE``: no network, the modality's evaluation view itself as one token per sample
  (the raw-pixel reference row of a probe table: what a probe gets without any encoder).

Every other file is read with ``torch.load(weights_only=True)`` (:func:`jepa.weights.safe_load`),
which cannot run code.

Whatever the source, the result is an :class:`EncoderSource`: the encoder in eval mode plus
the bound modality whose evaluation view feeds it.
"""

from __future__ import annotations

import contextlib
import json
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import ValidationError
from torch import Tensor, nn

from jepa import registry
from jepa.checkpoint import LoadedWeights, load_model_weights
from jepa.checkpoint.models import is_models_dict, weights_from_models
from jepa.errors import CheckpointError, ConfigError
from jepa.interfaces import Modality
from jepa.recipe import Recipe, load_recipe
from jepa.recipe.errors import problems_from
from jepa.weights import check_state_dict, safe_load

RANDOM_PREFIX = "random:"
PIXELS_PREFIX = "pixels:"
EXPORT_METADATA_NAME = "jepa_export.json"
"""Name of the JSON metadata entry (``_extra_files``) inside TorchScript files from ``jepa export``."""

SourceKind = Literal["run", "checkpoint", "foreign", "torchscript", "random", "pixels"]
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
        step: optimiser step of the weights (foreign checkpoints: what they store, e.g. the
            epoch; exports: the step of what they were exported from; None for random init).
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
        """Number of layers ``layers`` can return from (1 when the encoder does not say)."""
        if self.metadata is not None:
            return int(self.metadata.get("num_layers", 1))
        return int(getattr(self.encoder, "depth", 1))

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


class PixelEncoder(nn.Module):
    """The identity "encoder" of ``pixels:RECIPE``: (B, *input) -> (B, 1, prod(input)), the flattened
    evaluation view (normalised as the encoders see it) as a single token, so that the linear, logistic
    and k-NN probes run on raw pixels."""

    depth = 1

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim

    def forward(self, x: Tensor, keep_idx_BK: Tensor | None = None) -> Tensor:
        if keep_idx_BK is not None:
            raise ValueError("the raw-pixel reference has no tokens to keep")
        return x.flatten(1).unsqueeze(1)

    def forward_layers(self, x: Tensor, num_last: int = 1) -> list[Tensor]:
        return [self.forward(x)] * num_last


def _recipe_after_prefix(spec: str, prefix: str):
    path = spec[len(prefix):]
    if not path:
        raise ConfigError(f"{spec!r}: name a recipe after {prefix!r}, e.g. {prefix}recipes/image_demo.yaml")
    recipe = load_recipe(path)
    return recipe, registry.bind(recipe.modality)


def _pixels_source(spec: str) -> EncoderSource:
    recipe, modality = _recipe_after_prefix(spec, PIXELS_PREFIX)
    embed_dim = modality.example_input(1, torch.Generator().manual_seed(0))[0].numel()
    return EncoderSource(_freeze(PixelEncoder(embed_dim)), modality, "pixels", f"raw pixels ({embed_dim} values)",
                         "target", spec, None, recipe)


def _random_source(spec: str, which: WhichEncoder) -> EncoderSource:
    recipe, modality = _recipe_after_prefix(spec, RANDOM_PREFIX)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        encoder = modality.build_encoder()
    return EncoderSource(_freeze(encoder), modality, "random", modality.describe(), which, spec, None, recipe)


def _trained_source(path: Path, which: WhichEncoder, weights: LoadedWeights | None = None) -> EncoderSource:
    """A run, a checkpoint or a ``models.pt`` of ``jepa train`` (``weights`` when already read)."""
    weights = weights if weights is not None else load_model_weights(path)
    recipe = weights.recipe
    modality = registry.bind(recipe.modality)
    encoder = modality.build_encoder()
    state = weights.eval_encoder if which == "target" else weights.encoder  # no EMA target (LeJEPA): the encoder
    describe = modality.describe()
    check_state_dict(encoder, state, f"{path} ({which} encoder) vs {describe} (recipe {recipe.name!r})",
                     "The checkpoint holds another architecture than its recipe says; evaluate it with the recipe "
                     "that trained it")
    encoder.load_state_dict(state)
    kind: SourceKind = "run" if path.is_dir() and not (path / "models.pt").exists() else "checkpoint"
    return EncoderSource(_freeze(encoder), modality, kind, describe, which, str(path), weights.step, recipe)


def _foreign_source(checkpoint: Any, path: Path, which: WhichEncoder, options: dict[str, Any]) -> EncoderSource:
    """A checkpoint (read from ``path``) in another project's layout: the first modality whose
    ``load_foreign`` knows it."""
    if isinstance(checkpoint, dict):
        for name in registry.MODALITIES.loadable():  # a broken plugin (a warning elsewhere) is not asked
            found = registry.get(name).load_foreign(checkpoint, path, which, options)
            if found is not None:
                return EncoderSource(_freeze(found.encoder), found.modality, "foreign", found.description, which,
                                     str(path), found.step)
    keys = sorted(checkpoint)[:10] if isinstance(checkpoint, dict) else type(checkpoint).__name__
    broken = sorted(registry.MODALITIES.problems())
    unasked = (f"; not asked: the broken modality plugin(s) {', '.join(broken)} (`jepa modalities` says why)"
               if broken else "")
    raise CheckpointError(f"{path}: no installed modality recognises this checkpoint (top level: {keys}){unasked}; pass "
                     "a run dir, a checkpoint of `jepa train`, the authors' released .pth.tar, or a file from "
                     "`jepa export`")


_EXPORT_METADATA_KEYS = {"model": str, "modality_name": str, "modality": dict, "encoder": str}
"""What :func:`_torchscript_source` reads from the metadata, and of which type."""


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or n.endswith("/code/__torch__.py") or "/code/__torch__/" in n
                   for n in zf.namelist())


def read_export_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata stored in a TorchScript file by ``jepa export``, read from the zip archive
    as data: no model is built and none of the file's code runs.

    Raises:
        ValueError: the file has no readable ``jepa export`` metadata.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in zf.namelist() if n.split("/", 1)[-1] == f"extra/{EXPORT_METADATA_NAME}"), None)
            if name is None or zf.getinfo(name).file_size > 1 << 20:
                raise CheckpointError("missing or oversized")
            meta = json.loads(zf.read(name))  # at most the size checked above: zipfile stops there
        if not isinstance(meta, dict):
            raise CheckpointError(f"a JSON {type(meta).__name__} where an object belongs")
        wrong = [key for key, kind in _EXPORT_METADATA_KEYS.items() if not isinstance(meta.get(key), kind)]
        if wrong:
            raise CheckpointError(f"no {', '.join(wrong)} of the right type")
    except RecursionError:
        problem = "JSON nested too deeply"
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        problem = str(exc)
    else:
        return meta
    raise CheckpointError(f"{path}: a TorchScript file without readable {EXPORT_METADATA_NAME} metadata ({problem}); "
                     "only files written by `jepa export` can be evaluated")


def _torchscript_source(path: Path, which: WhichEncoder | None) -> EncoderSource:
    meta = read_export_metadata(path)  # checked before any of the file's code runs
    if meta.get("pooled"):
        raise CheckpointError(f"{path}: a pooled export (B, D) cannot feed the probes, which need tokens; "
                         "export again without --pooled")
    if which is not None and which != meta["encoder"]:
        raise CheckpointError(f"{path}: this export holds the {meta['encoder']} encoder, not the {which} one; "
                         f"drop --encoder or export the {which} encoder from the checkpoint")
    modality_cls = registry.get(meta["modality_name"])
    try:
        modality = modality_cls(modality_cls.config_model.model_validate(meta["modality"]))
    except ValidationError as exc:
        problems = "; ".join(f"{where}: {msg}" for where, msg in problems_from(exc, ("modality",)))
        raise CheckpointError(f"{path}: its {EXPORT_METADATA_NAME} metadata holds no valid {meta['modality_name']} "
                              f"modality section ({problems}); export it again with `jepa export`") from None
    # torch's FutureWarning that TorchScript is deprecated stays visible: the user chose this format.
    module = torch.jit.load(str(path), map_location="cpu")  # runs the file's code: the caller trusts it
    return EncoderSource(module.eval(), modality, "torchscript", meta["model"],
                         meta["encoder"], str(path), meta.get("source_step"), None, meta)


def load_source(source: str, *, which: WhichEncoder | None = None, trust_torchscript: bool = False,
                **options: Any) -> EncoderSource:
    """Resolve ``source`` (see module docstring) into a frozen encoder.

    Args:
        source: run dir, checkpoint dir, models.pt, foreign checkpoint (e.g. a released
            .pth.tar), exported TorchScript file, ``random:RECIPE`` or ``pixels:RECIPE``.
        which: ``target`` (what the paper evaluates; the default) or ``context`` encoder. An
            exported file holds one of them; asking it for the other is an error.
        trust_torchscript: load a TorchScript file, which runs the code stored in it (only for
            files from a trusted source); otherwise such a file is refused before anything runs.
        options: for foreign checkpoints only, passed to the modality's ``load_foreign``
            (image: ``crop_size``, ``arch``); None values are dropped.

    Raises:
        ValueError: the source does not exist, is of an unknown kind, is TorchScript and not
            trusted, or its weights do not match the architecture it claims.
    """
    if which not in (None, "target", "context"):
        raise ConfigError(f"--encoder must be 'target' or 'context', got {which!r}")
    if source.startswith(RANDOM_PREFIX):
        return _random_source(source, which or "target")
    if source.startswith(PIXELS_PREFIX):
        return _pixels_source(source)
    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"{source}: no such run directory, checkpoint or file; pass a run dir, a checkpoint "
                         "(dir or models.pt), a released .pth.tar, a file from `jepa export`, or random:RECIPE")
    if path.is_file() and _is_torchscript(path):
        if not trust_torchscript:
            raise CheckpointError(f"{source}: a TorchScript file; loading it runs the code stored in it, so it is refused "
                             "unless you trust who made it: `jepa eval --trust-torchscript` evaluates it; `jepa export` "
                             "takes the checkpoint it was exported from instead")
        return _torchscript_source(path, which)
    options = {k: v for k, v in options.items() if v is not None}
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        raise CheckpointError(f"{source}: a YAML file (a recipe?), not weights; pass {RANDOM_PREFIX}{source} for the "
                         "recipe's model at random initialisation, or the run directory that recipe trained")
    weights = None
    if path.is_file() and path.name != "models.pt":
        checkpoint = safe_load(path, "a run dir, a checkpoint (dir or models.pt), a foreign checkpoint such as the "
                               "authors' released .pth.tar, or a file from `jepa export`")
        if not is_models_dict(checkpoint):
            return _foreign_source(checkpoint, path, which or "target", options)
        weights = weights_from_models(checkpoint, path)  # a models.pt copied out of its run under another name
    if options:
        raise ConfigError(f"{', '.join('--' + k.replace('_', '-') for k in options)}: these apply to foreign "
                         "checkpoints (e.g. released .pth.tar) only; a run or checkpoint of `jepa train` carries its recipe")
    return _trained_source(path, which or "target", weights)
