"""``init_from:``: start pretraining from other weights (a released ``.pth.tar``, a run directory,
a checkpoint) instead of random initialisation.

A new run only: a run that resumes continues its own checkpoint and ignores ``init_from``.
The recipe section is written into the run's ``recipe.yaml`` like every other field, so the
run records where it started. Weights are checked strictly against the recipe's model (every
missing, unexpected and mis-shaped key named, :mod:`jepa.weights`) before anything is loaded.

What happens to each part:

* ``encoder`` (context encoder) and ``predictor``: loaded into the freshly built modules before
  the engine wraps them (so every ZeRO stage sees them).
* ``target``: loaded into the engine's target encoder; when not chosen the target starts as a
  copy of the context encoder, as in a fresh run.
* ``optimizer: true``: the optimiser moments of a ``jepa train`` checkpoint, restored through
  the engine (same parameter groups; ``parts`` must then be all three, since the engine restores
  the modules with them). ZeRO state of another number of processes goes through DeepSpeed's
  universal checkpoint in a scratch folder of the new run (:mod:`jepa.engine.reshard`). Released
  files carry optimiser state in the authors' layout, which is not restored.

Fixed tables (buffers: the sin-cos positions) are computed from the recipe, not trained: when they
are all that differs (another frame count or crop, e.g. V-JEPA 2's 64-frame cooldown from a 16-frame
run, docs/method/vjepa.md, "V-JEPA 2 schedules"), the new model keeps its own.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import torch
from torch import Tensor, nn

from jepa.checkpoint import RESHARD_SUFFIX, load_model_weights
from jepa.checkpoint.layout import META_FILE
from jepa.checkpoint.meta import read_meta
from jepa.checkpoint.models import is_models_dict, weights_from_models
from jepa.errors import CheckpointError
from jepa.interfaces import Modality
from jepa.recipe.sections import ALL_INIT_PARTS as ALL_PARTS
from jepa.recipe.sections import InitFromConfig
from jepa.weights import safe_load, state_problems

__all__ = ["InitFromConfig", "read_init_states", "check_init_states", "load_into_modules", "load_into_engine"]

_SECTION = {"encoder": "encoder", "predictor": "predictor", "target": "target_encoder"}
RESHARD_DIR = f"init_from{RESHARD_SUFFIX}"
"""Scratch folder in the new run's directory for optimiser state of another number of processes (removed after)."""


def _own_tables(module: nn.Module, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``module``'s fixed tables (buffers) that ``state`` holds in another shape, by key: the recipe's grid."""
    return {k: b for k, b in module.named_buffers() if k in state and tuple(state[k].shape) != tuple(b.shape)}


def _load_keeping_tables(module: nn.Module, state: Mapping[str, Tensor]) -> None:
    module.load_state_dict({**state, **_own_tables(module, state)}, strict=True)


def _is_jepa_weights(path: Path) -> bool:
    return path.is_dir() or path.name == "models.pt"


def read_init_states(cfg: InitFromConfig, modality: Modality) -> tuple[dict[str, dict[str, Tensor]], Path | None]:
    """The chosen parts' state dicts (keys ``encoder``, ``predictor``, ``target``) and, for
    ``jepa train`` checkpoints, the checkpoint directory they came from. Files in another
    project's layout are read by the recipe's modality (``Modality.foreign_state_dicts``).

    Raises:
        ValueError: the path is missing or not a known layout, a part is absent, or
            ``optimizer`` is asked of a file that cannot provide it.
    """
    path = Path(cfg.path)
    if not path.exists():
        raise CheckpointError(f"init_from.path: {path} does not exist; name a released .pth.tar, a run directory, a "
                         "checkpoint directory or a models.pt")
    ckpt, weights = None, None
    if _is_jepa_weights(path):
        weights = load_model_weights(path)
    else:
        ckpt = safe_load(path, "a checkpoint in another project's layout, e.g. a released I-JEPA .pth.tar "
                         "(init_from.path)", mmap=False)
        if is_models_dict(ckpt):  # a models.pt of `jepa train` under another name (copied out of its run)
            weights = weights_from_models(ckpt, path)
    if weights is not None:
        if weights.recipe.modality.name != modality.name:
            raise CheckpointError(f"init_from.path: {path} holds weights of a {weights.recipe.modality.name} run (recipe "
                             f"{weights.recipe.name!r}); this recipe trains the {modality.name} modality. Name weights "
                             "of this modality")
        sections = {"encoder": weights.encoder, "predictor": weights.predictor, "target_encoder": weights.target_encoder}
        source_dir: Path | None = weights.path.parent if _is_jepa_weights(path) else None
    else:
        found = modality.foreign_state_dicts(ckpt, path) if isinstance(ckpt, dict) else None
        if found is None:
            top = sorted(ckpt)[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
            raise CheckpointError(f"init_from.path: {path} is neither a checkpoint of `jepa train` nor in a layout the "
                             f"{modality.name} modality reads (top level: {top})")
        sections = {k: v for k, v in found.items() if k in _SECTION.values()}
        source_dir = None
    if cfg.optimizer and (source_dir is None or set(cfg.parts) != set(ALL_PARTS)):
        raise CheckpointError("init_from.optimizer: optimiser state is restored only from a checkpoint of `jepa train` and "
                         "together with all three parts (parts: [encoder, predictor, target]); set optimizer: false")
    missing = [p for p in cfg.parts if _SECTION[p] not in sections or not sections[_SECTION[p]]]
    if missing:
        raise CheckpointError(f"init_from.parts: {path} holds no {', '.join(missing)} weights; drop "
                         f"{'it' if len(missing) == 1 else 'them'} from init_from.parts")
    return {p: dict(sections[_SECTION[p]]) for p in cfg.parts}, source_dir


def check_init_states(cfg: InitFromConfig, states: Mapping[str, Mapping[str, Tensor]], model: nn.Module,
                      describe: str) -> None:
    """Strict fit check of every chosen part at once, against the objective's trained ``model``
    (its ``encoder`` child, and its ``predictor`` where it has one). A part whose parameters all fit
    may differ in its fixed tables (another grid); the model keeps its own (see the module docstring).

    Raises:
        ValueError: naming the file and every missing, unexpected and mis-shaped key per part.
    """
    expected = {"encoder": model.encoder.state_dict(), "target": model.encoder.state_dict()}
    if hasattr(model, "predictor"):
        expected["predictor"] = model.predictor.state_dict()
    absent = [part for part in states if part not in expected]
    if absent:
        raise CheckpointError(f"init_from.parts: this recipe's objective trains no {', '.join(absent)}; drop "
                         f"{'it' if len(absent) == 1 else 'them'} from init_from.parts (e.g. parts: [encoder])")
    problems = []
    for part, state in states.items():
        module = model.predictor if part == "predictor" else model.encoder
        if state_problems(expected[part], {**state, **_own_tables(module, state)}):  # named with the tables
            problems += [f"{part}: {p}" for p in state_problems(expected[part], state)]
    if problems:
        raise CheckpointError(f"init_from.path: {cfg.path} does not fit the model of this recipe ({describe}):\n  "
                         + "\n  ".join(problems) + "\nSet the recipe's architecture to the one of the weights, or "
                         "drop the parts that differ from init_from.parts")


def load_into_modules(states: Mapping[str, Mapping[str, Tensor]], model: nn.Module) -> None:
    """Load the checked ``encoder`` / ``predictor`` parts into the objective's model before the engine wraps it."""
    if "encoder" in states:
        _load_keeping_tables(model.encoder, states["encoder"])
    if "predictor" in states:
        _load_keeping_tables(model.predictor, states["predictor"])


@contextmanager
def _file_shaped_tables(model: nn.Module, states: Mapping[str, Mapping[str, Tensor]]) -> Iterator[None]:
    """While the engine restores the checkpoint's modules (strictly, shapes included), the tables of
    another grid take the file's shapes; the recipe's own are put back afterwards."""
    own: dict[tuple[nn.Module, str], Tensor] = {}
    for part in ("encoder", "predictor"):
        module = getattr(model, part)
        for key, table in _own_tables(module, states[part]).items():
            owner_name, _, name = key.rpartition(".")
            owner = module.get_submodule(owner_name)
            own[(owner, name)] = table
            owner._buffers[name] = torch.empty(states[part][key].shape, dtype=table.dtype, device=table.device)
    try:
        yield
    finally:
        for (owner, name), table in own.items():
            owner._buffers[name] = table


def load_into_engine(cfg: InitFromConfig, states: Mapping[str, Mapping[str, Tensor]], source_dir: Path | None,
                     engine, run_dir: Path | None = None) -> None:
    """After the engine is built, on a run that does not resume: the ``target`` part and, when
    asked, the optimiser state (the engine restores modules and moments of the checkpoint; ZeRO
    state of another number of processes is converted in ``run_dir``/:data:`RESHARD_DIR`)."""
    if "target" in states and "target_encoder" not in engine.frozen:
        raise CheckpointError("init_from.parts: target: this recipe's objective keeps no EMA target encoder; drop target "
                         "from init_from.parts")
    if cfg.optimizer:
        assert source_dir is not None  # read_init_states refused otherwise
        target = engine.frozen["target_encoder"]
        reshard_dir = None
        if (source_dir / META_FILE).is_file() and read_meta(source_dir)["world_size"] != engine.dist.world_size:
            assert run_dir is not None, "init_from: optimiser state of another number of processes needs run_dir"
            reshard_dir = run_dir / RESHARD_DIR
        with _file_shaped_tables(engine.module, states):
            engine.load_state(source_dir, {"target_encoder": {**states["target"], **_own_tables(target, states["target"])}},
                              reshard_dir=reshard_dir)
    elif "target" in states:
        _load_keeping_tables(engine.frozen["target_encoder"], states["target"])
