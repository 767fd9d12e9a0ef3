"""From text to a validated :class:`~jepa.recipe.schema.Recipe`: files, ``--set`` overrides and
the validation passes.

Validation happens in passes, all before anything heavy is built:

1. the modality section, by the plugin's own ``config_model`` (``modality.name`` picks it);
2. the objective section, by the objective's own ``config_model`` (``objective.name`` picks it,
   default ``ijepa``; the older top-level ``ema:`` / ``loss:`` sections are read as the ijepa
   objective's, their keys overriding those under ``objective:``);
3. the core sections (data, optim, engine, checkpoint, log, eval) by :mod:`jepa.recipe.sections`;
4. semantic checks (:func:`jepa.recipe.checks.check_recipe`): the core's, the objective's and
   the modality's ``check``.

Every problem of the first three passes is collected into one :class:`RecipeError`; the text of
files and ``--set`` values is read strictly (:mod:`jepa.recipe.strict_yaml`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from jepa import objectives, registry
from jepa.config import ModalityConfig, ObjectiveConfig
from jepa.recipe.checks import check_recipe
from jepa.recipe.errors import Problem, RecipeError, format_value, problems_from
from jepa.recipe.schema import Recipe
from jepa.recipe.strict_yaml import MAX_BYTES, YAMLProblem, load_yaml


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML) to a raw recipe dict.

    Raises:
        RecipeError: the recipe is not a mapping, an override is not of the form ``a.b=value``,
            its value is not valid YAML, or it walks through a non-mapping.
    """
    if raw is not None and not isinstance(raw, dict):
        raise RecipeError("--set", [("", f"the recipe is a YAML {type(raw).__name__}, not a mapping of sections, "
                                         "so --set has nothing to override; a recipe is `key: value` lines")])
    out = copy.deepcopy(raw) if raw else {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not p for p in key.split(".")):
            raise RecipeError("--set", [(key or item, f"expected dotted.key=value, got {format_value(item)}")])
        try:
            value = load_yaml(text, f"--set {key}") if text.strip() != "" else None
        except YAMLProblem as exc:
            raise RecipeError("--set", [(key, str(exc))]) from None
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise RecipeError("--set", [(key, f"{where} is {format_value(child)}, not a section; cannot set {key}")])
            node = child
        node[parts[-1]] = value
    return out


def parse_recipe(raw: Any, source: str = "<recipe>") -> Recipe:
    """Validate a raw recipe mapping (types and semantics).

    Raises:
        RecipeError: naming ``source``, every bad field path, the bad value and what is allowed.
    """
    if raw is None:
        raise RecipeError(source, [("", "the recipe is empty; it needs at least `name:` and a `modality:` section "
                                        "(e.g. `modality: {name: image}`)")])
    if not isinstance(raw, dict):
        raise RecipeError(source, [("", f"a recipe must be a YAML mapping, got {type(raw).__name__}")])
    raw = dict(raw)
    modality_cfg, problems = _modality_section(raw)
    objective_cfg, objective_problems = _objective_section(raw)
    problems += objective_problems

    try:
        fields = {**raw, "modality": modality_cfg or _Placeholder()}
        if objective_cfg is not None:
            fields["objective"] = objective_cfg
        recipe = Recipe.model_validate(fields)
    except ValidationError as exc:
        problems += problems_from(exc, model=Recipe)
        recipe = None
    if problems:
        raise RecipeError(source, problems)
    assert recipe is not None
    semantic = check_recipe(recipe)
    if semantic:
        raise RecipeError(source, semantic)
    return recipe


def _modality_section(raw: dict[str, Any]) -> tuple[ModalityConfig | None, list[Problem]]:
    """Pop and validate the modality section of ``raw`` by its plugin's model.

    Returns:
        ``(config, problems)``: config None when it does not validate (the problems say why).
    """
    section = raw.pop("modality", None)
    if section is None:
        return None, [("modality", "required section is missing (e.g. `modality: {name: image}`)")]
    if not isinstance(section, dict):
        return None, [("modality", f"must be a mapping with at least `name:` (e.g. `modality: {{name: image}}`), "
                                   f"got {format_value(section)}")]
    if "name" not in section:
        return None, [("modality.name", "required key is missing; it selects the modality plugin (`jepa modalities` lists them)")]
    try:
        plugin = registry.get(str(section["name"]))
    except ValueError as exc:
        return None, [("modality.name", str(exc))]
    try:
        return plugin.config_model.model_validate(section), []
    except ValidationError as exc:
        return None, problems_from(exc, ("modality",), plugin.config_model)


LEGACY_OBJECTIVE_SECTIONS = ("ema", "loss")
"""Top-level sections of recipes written before objectives were plugins: the ijepa objective's."""


def _objective_section(raw: dict[str, Any]) -> tuple[ObjectiveConfig | None, list[Problem]]:
    """Pop and validate the objective section of ``raw`` (moving legacy ``ema`` / ``loss`` under it).

    Returns:
        ``(config, problems)``: config None when it does not validate (the problems say why).
    """
    section = raw.pop("objective", None)
    legacy = {key: raw.pop(key) for key in LEGACY_OBJECTIVE_SECTIONS if key in raw}
    if section is None:
        section = {"name": objectives.DEFAULT}
    if not isinstance(section, dict):
        return None, [("objective", f"must be a mapping with at least `name:` (e.g. `objective: {{name: lejepa}}`), "
                                    f"got {format_value(section)}")]
    section = dict(section)
    name = str(section.setdefault("name", objectives.DEFAULT))
    problems: list[Problem] = []
    for key, value in legacy.items():
        if name != "ijepa":
            problems.append((key, f"is a setting of the ijepa objective, and this recipe's objective is {name!r}; "
                                  "remove it (LeJEPA's optional EMA is objective.teacher)"))
        elif isinstance(value, dict) and isinstance(section.get(key), dict):
            section[key] = {**section[key], **value}  # e.g. `--set ema.momentum=...` on a recipe with objective.ema
        else:
            section[key] = value
    try:
        plugin = objectives.OBJECTIVES.get(name)
    except (ValueError, TypeError) as exc:
        return None, [*problems, ("objective.name", str(exc))]
    try:
        return plugin.config_model.model_validate(section), problems
    except ValidationError as exc:
        return None, [*problems, *problems_from(exc, ("objective",), plugin.config_model)]


class _Placeholder(ModalityConfig):
    """Stands in for an invalid modality section so the core sections still get checked."""

    name: str = "?"


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file."""
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise RecipeError(source, [("", "file not found")])
    if not path.is_file():
        raise RecipeError(source, [("", "not a file; pass a recipe YAML file")])
    try:
        if path.stat().st_size > MAX_BYTES:
            raise YAMLProblem(f"{path.stat().st_size:,} bytes, more than a recipe may have ({MAX_BYTES:,}); "
                              "is this the right file?")
        raw = load_yaml(path.read_bytes(), source)
    except YAMLProblem as exc:
        raise RecipeError(source, [("", str(exc).removeprefix(f"{source}: "))]) from None
    except OSError as exc:
        raise RecipeError(source, [("", f"cannot be read ({exc.strerror or exc})")]) from None
    if overrides:
        raw = apply_overrides(raw or {}, overrides)
        source = f"{source} (with --set {' '.join(overrides)})"
    return parse_recipe(raw, source)
