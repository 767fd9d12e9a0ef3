"""Reading weights safely and checking that they fit a model: the one home for both.

Every file a user hands us is read with ``torch.load(weights_only=True)``, which refuses any
pickled object other than tensors and plain containers, so no code in the file can run.
Fit checks compare full shapes key by key and report every difference in one message;
nothing is ever partially loaded.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from jepa.errors import CheckpointError


def safe_load(path: str | Path, what: str, mmap: bool = True) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; unreadable files become a clear ``ValueError``.

    Args:
        path: the file.
        what: how to name the file in messages (e.g. ``"a jepa weights file"``).
        mmap: memory-map the tensors (large checkpoints load lazily).

    Raises:
        ValueError: missing file, not a torch file, or it holds objects other than tensors and
            plain containers (which would run code if unpickled).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; pass {what}")
    zipped = zipfile.is_zipfile(path)
    try:
        # only torch's zip format can be memory-mapped; the legacy format (torch < 1.6 or
        # _use_new_zipfile_serialization=False) is read whole, just as safely
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipped)
    except Exception as exc:
        problem = None if zipped else _not_torch_file(path)
        if problem:  # torch's own message would advise weights_only=False, or re-saving a file that is no checkpoint
            raise CheckpointError(f"{path}: cannot be read as {what}: not a PyTorch file ({problem})") from exc
        if isinstance(exc, pickle.UnpicklingError):
            raise CheckpointError(f"{path}: cannot be read as {what}: it holds objects other than tensors and plain "
                             f"containers, so it cannot be read safely (weights_only=True); re-save its state dicts "
                             f"with torch.save. Detail: {exc}") from exc
        if isinstance(exc, (RuntimeError, EOFError, OSError)):
            raise CheckpointError(f"{path}: cannot be read as {what} ({type(exc).__name__}: {exc})") from exc
        raise


def _not_torch_file(path: Path) -> str | None:
    """Why a file that is no zip archive is not a legacy torch file either (which starts with a
    pickle protocol-2+ opcode, ``0x80``), or None when it may be one."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"\x80"):
        return None
    if not head:
        return "the file is empty"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "it is a tar archive, e.g. a data shard"
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ")):
        return "it is a compressed archive"
    if b"\x00" in head or head.decode("utf-8", "replace").count("\ufffd") > 3:  # a cut-off last character is fine
        return f"it starts with {head[:8]!r}"
    return "it is YAML text, e.g. a recipe" if path.suffix.lower() in (".yaml", ".yml") else "it is text"


def _short(items: list[str], limit: int = 8) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return "[" + ", ".join(items[:limit]) + "]" + more


def _shape(value: Any) -> list[int]:
    return list(getattr(value, "shape", ()))


def state_problems(expected: Mapping[str, Any], state: Mapping[str, Any]) -> list[str]:
    """Differences between the shapes a model expects and a state dict (empty when it fits).

    Args:
        expected: key -> tensor or shape tuple of the model (full, unsharded shapes).
        state: key -> tensor of the weights to load.

    Returns:
        At most three lines: ``missing keys [...]``, ``unexpected keys [k (file shape [..]), ...]``,
        ``shape mismatches [k: file [..] vs model [..], ...]`` (long lists are cut, with a count).
    """
    def shape_of(v: Any) -> list[int]:
        return list(v) if isinstance(v, (tuple, list, torch.Size)) else _shape(v)

    missing = [k for k in expected if k not in state]
    unexpected = [f"{k} (file shape {_shape(v)})" for k, v in state.items() if k not in expected]
    shapes = [f"{k}: file {_shape(state[k])} vs model {shape_of(v)}"
              for k, v in expected.items() if k in state and _shape(state[k]) != shape_of(v)]
    problems = []
    if missing:
        problems.append(f"missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches {_short(shapes)}")
    return problems


def check_state_dict(module: nn.Module, state: Mapping[str, Tensor], what: str, fix: str) -> None:
    """Raise one clear error when ``state`` does not fit ``module`` key for key and shape for shape.

    Args:
        module: the model the weights should load into.
        state: the weights.
        what: names the weights and the model in the message (e.g. ``"run/models.pt (target
            encoder) vs ViT-S/16 @224"``).
        fix: what the user should do (ends the message).

    Raises:
        ValueError: naming every missing, unexpected and mis-shaped key.
    """
    problems = state_problems(module.state_dict(), state)
    if problems:
        raise CheckpointError(f"{what}: the weights do not fit the model: {'; '.join(problems)}. {fix}")


def load_states(targets: list[tuple[str, nn.Module]], states: Mapping[str, Mapping[str, Tensor]], what: str,
                fix: str) -> None:
    """Load ``states[key]`` strictly into each ``(key, module)`` of ``targets``, once all of them fit.

    Raises:
        CheckpointError: ``"{what} does not match the model ({fix}):"`` and every problem of every model.
    """
    problems = [f"{key}: {p}" for key, module in targets for p in state_problems(module.state_dict(), states[key])]
    if problems:
        raise CheckpointError(f"{what} does not match the model ({fix}):\n  " + "\n  ".join(problems))
    for key, module in targets:
        module.load_state_dict(states[key], strict=True)
