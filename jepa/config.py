"""Base classes of every config section: strict pydantic models.

:class:`StrictModel` is the base of every recipe section (core and plugins);
:class:`ModalityConfig` is the base of a modality's section, so the core can read ``name``
from any of them without knowing the plugin.

Strictness, for every field of every section (plugins included, no annotation needed):

* counts (``int``) take whole numbers only: ``true``, ``8.0`` and ``"8"`` are refused (pydantic's
  lax mode would read ``true`` as 1), and so are values beyond int64;
* flags (``bool``) take ``true`` / ``false`` only (not 0, 1 or ``"yes"``);
* numbers (``float``) take ints and floats but not booleans, and must be finite (no ``.inf``/``.nan``);
* choices of numbers (``Literal[0, 1, 2, 3]``) do not take booleans (``True == 1`` in Python).
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from jepa.errors import ConfigError

_INT64_MAX = 2**63 - 1


def type_problem(annotation: Any, value: Any) -> str | None:
    """Why ``value`` is not of the exact kind ``annotation`` asks for, or None (pydantic checks the rest).

    Args:
        annotation: a field's type (``int``, ``bool``, ``float``, ``Literal``, unions, tuples, lists).
        value: the raw value from the recipe.
    """
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if annotation is int:
        if type(value) is not int:
            return "must be a whole number (not true/false, a decimal or a string)"
        return None if abs(value) <= _INT64_MAX else f"must be at most {_INT64_MAX} in size"
    if annotation is float:
        return "must be a number, not true/false" if isinstance(value, bool) else None
    if origin is Literal:
        if isinstance(value, bool) and not any(isinstance(a, bool) for a in args):
            return f"must be one of {', '.join(repr(a) for a in args)}, not true/false"
        return None
    if origin is Annotated:
        return type_problem(args[0], value)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        problems = [type_problem(a, value) for a in args if a is not type(None)]
        return None if any(p is None for p in problems) else problems[0]
    if origin in (tuple, list) and isinstance(value, (list, tuple)):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            kinds = args if len(args) == len(value) else ()  # a wrong length is pydantic's message
        else:
            kinds = (args[0],) * len(value) if args else ()
        for i, (kind, item) in enumerate(zip(kinds, value)):
            problem = type_problem(kind, item)
            if problem:
                return f"item {i} {problem}"
    return None


def check_range(name: str, value: tuple[float, float], upper: float | None = None) -> None:
    """Validate a ``(low, high)`` range field: ``0 < low <= high`` (and ``high <= upper`` when given).

    Raises:
        ValueError: naming the field and the value.
    """
    lo, hi = value
    if not 0 < lo <= hi:
        raise ConfigError(f"{name} must satisfy 0 < low <= high, got {tuple(value)}")
    if upper is not None and hi > upper:
        raise ConfigError(f"{name} must be <= {upper}, got {tuple(value)}")


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, values are re-validated on assignment,
    counts and flags have exact types and numbers are finite (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _exact_kind(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        problem = type_problem(field.annotation, value) if field is not None else None
        if problem:
            raise ConfigError(problem)
        return value


class ModalityConfig(StrictModel):
    """Base of a modality's recipe section (``modality:``). Subclasses narrow ``name`` to a
    ``Literal`` of their registered name and add their own sub-sections."""

    name: str


class ObjectiveConfig(StrictModel):
    """Base of an objective's recipe section (``objective:``). Subclasses narrow ``name`` to a
    ``Literal`` of their registered name and add their own settings."""

    name: str
