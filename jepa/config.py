"""Base classes of every config section: strict pydantic models.

:class:`StrictModel` is the base of every recipe section (core and plugins);
:class:`ModalityConfig` is the base of a modality's section, so the core can read ``name``
from any of them without knowing the plugin.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, values are re-validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModalityConfig(StrictModel):
    """Base of a modality's recipe section (``modality:``). Subclasses narrow ``name`` to a
    ``Literal`` of their registered name and add their own sub-sections."""

    name: str
