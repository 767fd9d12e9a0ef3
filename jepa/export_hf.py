"""What the Hugging Face ``transformers`` exports (``--format hf``) of every modality share: the optional
import of ``transformers`` and our metadata file next to transformers' own in the written folder."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import Tensor, nn

from jepa.errors import CheckpointError, ConfigError
from jepa.sources import EXPORT_METADATA_NAME
from jepa.weights import state_problems


def import_transformers() -> ModuleType:
    """``transformers``, with its download progress bars off.

    Raises:
        ConfigError: it is not installed (the fix: the ``hf`` extra).
    """
    try:
        import transformers  # deferred: transformers, an optional extra (pip install 'jepa-forge[hf]')
    except ModuleNotFoundError as exc:
        raise ConfigError("--format hf needs Hugging Face transformers: pip install 'jepa-forge[hf]' "
                          "(or pip install 'transformers>=5,<6')") from exc
    transformers.utils.logging.disable_progress_bar()
    return transformers


def hf_model_with(model_class: type, config: Any, state: dict[str, Tensor], transformers: ModuleType) -> nn.Module:
    """A ``model_class(config)`` of transformers in eval mode, holding ``state`` (loaded strictly).

    Raises:
        CheckpointError: the installed transformers names the weights differently (every difference named).
    """
    model = model_class(config).eval()
    problems = state_problems(model.state_dict(), state)
    if problems:
        raise CheckpointError(f"transformers {transformers.__version__} names {model_class.__name__}'s weights "
                              f"differently from what this exporter writes: {'; '.join(problems)}; install "
                              "transformers>=5,<6")
    model.load_state_dict(state, strict=True)
    return model


def write_hf_metadata(folder: str | Path, meta: dict[str, Any], transformers: ModuleType, **extra: Any) -> None:
    """Add the installed transformers version (then ``extra``) to ``meta`` and write it into ``folder`` as
    ``jepa_export.json``."""
    meta["transformers_version"] = transformers.__version__
    meta.update(extra)
    (Path(folder) / EXPORT_METADATA_NAME).write_text(json.dumps(meta, indent=1))
