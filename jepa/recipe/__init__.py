"""Typed, strict recipes: YAML -> validated pydantic models, with ``--set`` overrides.

A recipe states what differs from the defaults in code. The package, one concept a module:

* :mod:`~jepa.recipe.sections`: the core sections (data, optim, engine, checkpoint, log, eval,
  init_from), with upper bounds on every count that sizes memory, processes or work per step;
* :mod:`~jepa.recipe.schema`: the :class:`Recipe` tying them to the modality and objective
  plugins' sections, and its JSON Schema;
* :mod:`~jepa.recipe.parsing`: files and ``--set`` overrides to a validated recipe (the passes
  are listed there), read by the strict YAML reader :mod:`~jepa.recipe.strict_yaml`;
* :mod:`~jepa.recipe.checks`: semantic checks across sections and plugins;
* :mod:`~jepa.recipe.batch`: global / micro batch, accumulation steps and world size;
* :mod:`~jepa.recipe.errors`: every problem is reported as ``FILE: field.path: problem (got
  VALUE)`` in one :class:`RecipeError`, never as a traceback.

Everything public is importable from ``jepa.recipe`` itself.
"""

from __future__ import annotations

from jepa.config import ModalityConfig, StrictModel
from jepa.recipe.batch import micro_batch_warning, split_global_batch
from jepa.recipe.checks import MAX_STEPS, check_recipe
from jepa.recipe.errors import RecipeError
from jepa.recipe.parsing import LEGACY_OBJECTIVE_SECTIONS, apply_overrides, load_recipe, parse_recipe
from jepa.recipe.schema import Recipe, plugin_problems, recipe_json_schema
from jepa.recipe.sections import (HEALTH_METRICS, MAX_GLOBAL_BATCH, MAX_MICRO_BATCH, CheckpointConfig, DataConfig,
                                  EngineConfig, EvalConfig, InitFromConfig, KeepBestConfig, LogConfig, OptimConfig)
from jepa.recipe.strict_yaml import YAMLProblem, load_yaml

__all__ = [
    "Recipe", "RecipeError", "StrictModel", "ModalityConfig", "load_recipe", "parse_recipe", "apply_overrides",
    "DataConfig", "OptimConfig", "EngineConfig", "CheckpointConfig", "KeepBestConfig", "LogConfig", "EvalConfig",
    "InitFromConfig", "HEALTH_METRICS", "MAX_STEPS", "MAX_GLOBAL_BATCH", "MAX_MICRO_BATCH", "LEGACY_OBJECTIVE_SECTIONS",
    "check_recipe", "split_global_batch", "micro_batch_warning", "recipe_json_schema", "plugin_problems",
    "YAMLProblem", "load_yaml",
]
