"""Reading DeepSpeed's state files without running code from them.

DeepSpeed unpickles its model, optimiser and ZeRO-shard files with ``weights_only=False``, which
runs whatever a crafted pickle asks for. Here every such file is read with ``weights_only=True``:
only tensors, plain containers and the few DeepSpeed record types of :func:`deepspeed_state_types`
can be unpickled; anything else is refused before it can run.

Two routes, because DeepSpeed reads its files two ways:

* Saving and resuming on the same world size go through DeepSpeed's checkpoint engine, which is
  replaceable: :class:`WeightsOnlyCheckpointEngine` is ours, no swap involved.
* The universal checkpoint (resuming on another world size, :mod:`jepa.engine.reshard`) calls
  ``torch.load(..., weights_only=False)`` directly, from six modules, with no hook or argument to
  change it. :func:`weights_only_universal_checkpoint` swaps the ``torch`` name of only those
  modules, for the length of the conversion or load, under a lock; ``torch.load`` itself, as every
  other module and thread sees it, is never touched.
"""

from __future__ import annotations

import importlib
import pickle
import threading
import types
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

from jepa.errors import CheckpointError


def deepspeed_state_types() -> list[Any]:
    """The only non-tensor types DeepSpeed 0.19's own checkpoint files hold (every ZeRO stage and
    precision, measured with ``torch.serialization.get_unsafe_globals_in_checkpoint``): plain data
    records, unpickled by setting attributes, never by running code of the file's choosing."""
    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def load_weights_only(f: Any, *args: Any, **kwargs: Any) -> Any:
    """``torch.load(f, ...)`` with ``weights_only=True`` whatever the caller asked for, DeepSpeed's
    record types allowed. Raises ``pickle.UnpicklingError`` on anything else in the file."""
    kwargs["weights_only"] = True
    with torch.serialization.safe_globals(deepspeed_state_types()):
        return torch.load(f, *args, **kwargs)


class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine, loading with :func:`load_weights_only`.

    Raises:
        ValueError: the file holds more than tensors and DeepSpeed's records (naming it), or
            cannot be read.
    """

    def load(self, path: str, map_location: Any = None) -> Any:
        try:
            return load_weights_only(path, map_location=map_location)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(f"{path}: this DeepSpeed state file holds objects other than tensors and DeepSpeed's "
                             "own records, so it is not loaded (it could run code); resume from a checkpoint "
                             f"written by `jepa train`. Detail: {' '.join(str(exc).split())[:300]}") from None
        except (RuntimeError, EOFError, OSError) as exc:
            raise CheckpointError(f"{path}: cannot read this DeepSpeed state file ({type(exc).__name__}: {exc})") from None


class _WeightsOnlyTorch(types.ModuleType):
    """``torch`` as the universal-checkpoint modules see it inside :func:`weights_only_universal_checkpoint`:
    every attribute is torch's, but ``load`` is :func:`load_weights_only`."""

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    load = staticmethod(load_weights_only)


UNIVERSAL_CHECKPOINT_MODULES = (
    "deepspeed.checkpoint.ds_to_universal",
    "deepspeed.checkpoint.deepspeed_checkpoint",
    "deepspeed.checkpoint.zero_checkpoint",
    "deepspeed.checkpoint.universal_checkpoint",
    "deepspeed.runtime.base_optimizer",
    "deepspeed.runtime.zero.stage3",
)
"""The DeepSpeed 0.19 modules that call ``torch.load(..., weights_only=False)`` themselves while a
ZeRO 1-3 state is converted to a universal checkpoint or loaded from one (traced over every stage;
``tests/test_resume_resize.py`` checks that no other DeepSpeed code calls ``torch.load`` there)."""

_WEIGHTS_ONLY_TORCH = _WeightsOnlyTorch()
_swap_lock = threading.Lock()


@contextmanager
def weights_only_universal_checkpoint() -> Iterator[None]:
    """Within the context, DeepSpeed's universal-checkpoint code loads every file weights-only.

    Why a swap: those modules (:data:`UNIVERSAL_CHECKPOINT_MODULES`) call ``torch.load(...,
    weights_only=False)`` directly instead of through the checkpoint engine, and DeepSpeed 0.19 has
    no hook or argument for it; the conversion takes a folder, not tensors, so there is nothing we
    could load and hand over either (short of rewriting ``ds_to_universal``).

    How narrow: only the module-level name ``torch`` of those six modules is replaced, by a stand-in
    whose ``load`` is :func:`load_weights_only` and whose every other attribute is torch's. The global
    ``torch.load`` is never changed, so other threads and modules (the data loader, user code) load
    as they asked; code of those six modules that runs meanwhile loads weights-only, which is never
    less safe. The lock makes concurrent uses wait for each other, so one never restores while
    another still relies on the swap. Not re-entrant: do not nest.
    """
    modules = [importlib.import_module(name) for name in UNIVERSAL_CHECKPOINT_MODULES]
    with _swap_lock:
        assert all(m.torch is torch for m in modules), [m.__name__ for m in modules if m.torch is not torch]
        for m in modules:
            m.torch = _WEIGHTS_ONLY_TORCH
        try:
            yield
        finally:
            for m in modules:
                m.torch = torch
