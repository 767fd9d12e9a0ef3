"""How recipe problems are reported: one :class:`RecipeError` listing ``FILE: field.path: problem
(got VALUE)`` lines, never a traceback.

Its text shows control characters of file names and keys as escapes (:func:`jepa.text.printable`),
one line per problem; the user's values are shown shortened (:func:`format_value`), however large.
"""

from __future__ import annotations

import reprlib
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from jepa.errors import ConfigError
from jepa.text import printable

Problem = tuple[str, str]
"""``(dotted field path, what is wrong and how to fix it)``; the path is empty for the whole file."""


class RecipeError(ConfigError):
    """A recipe problem a user can fix; ``str()`` is the full, readable report."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        shown = printable(source)  # names from the command line and the file: no control character reaches a terminal
        lines = [printable(f"{source}: {path}: {msg}" if path else f"{source}: {msg}") for path, msg in problems]
        header = f"{shown}: invalid recipe ({len(problems)} problem{'s' if len(problems) != 1 else ''})"
        super().__init__("\n".join([header, *("  " + line for line in lines)]))


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 2, 4, 4, 4, 4
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 60, 60, 40


def format_value(value: Any) -> str:
    """A short repr of a user's value (bounded work, whatever its size)."""
    text = _REPR.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_BOUND_ERRORS = ("less_than_equal", "less_than", "too_long")


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The config model a field holds (``Section``, ``Section | None``, ``list[Section]``), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for kind in get_args(annotation):
        found = _model_of(kind)
        if found is not None:
            return found
    return None


def _description(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> str | None:
    """The description of the field at ``loc`` (list indices skipped) in ``model``, or None."""
    field = None
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part)) if model is not None else None
        if field is None:
            return None
        model = _model_of(field.annotation)
    return field.description if field is not None else None


def problems_from(err: ValidationError, prefix: tuple[Any, ...] = (),
                  model: type[BaseModel] | None = None) -> list[Problem]:
    """One ``(field path, message)`` per error; a value above a bound also gets the field's
    description, which says why the bound is there."""
    problems = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (*prefix, *e["loc"]))
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `jepa recipe schema` lists every key)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif e["type"] == "value_error":
            msg = f"{e['msg'].removeprefix('Value error, ')} (got {format_value(e.get('input'))})"
        else:
            msg = f"{e['msg']} (got {format_value(e.get('input'))})"
            why = _description(model, e["loc"]) if e["type"] in _BOUND_ERRORS else None
            if why:
                msg += f"; {e['loc'][-1]}: {why}"
        problems.append((loc, msg))
    return problems
