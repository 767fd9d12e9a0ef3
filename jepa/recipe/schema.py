"""The :class:`Recipe` model tying the sections together, and its JSON Schema.

The modality and objective sections are the plugins' own models (``name`` picks the plugin,
:mod:`jepa.recipe.parsing`); the others are the core sections of :mod:`jepa.recipe.sections`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, SerializeAsAny

from jepa import objectives, registry
from jepa.config import ModalityConfig, ObjectiveConfig, StrictModel
from jepa.objectives.ijepa import IJEPAConfig
from jepa.recipe.sections import (CheckpointConfig, DataConfig, EngineConfig, EvalConfig, InitFromConfig, LogConfig,
                                  OptimConfig)


class Recipe(StrictModel):
    """A complete training recipe."""

    name: str = Field(min_length=1, description="Run name; the run directory defaults to runs/<name>")
    seed: int = 0
    run_dir: str | None = Field(None, description="Where checkpoints, metrics and the resolved recipe go (default runs/<name>)")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many steps (schedules still span the full run)")
    modality: SerializeAsAny[ModalityConfig] = Field(description="The modality section; 'name' selects the plugin")
    objective: SerializeAsAny[ObjectiveConfig] = Field(
        default_factory=IJEPAConfig, description="How the encoder learns; 'name' selects the objective plugin "
        "(ijepa: latent prediction against an EMA target; lejepa: views + SIGReg)")
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    engine: EngineConfig = EngineConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    log: LogConfig = LogConfig()
    eval: EvalConfig = EvalConfig()
    init_from: InitFromConfig | None = Field(
        None, description="Start a new run from these weights instead of random init (see jepa.init_from)")

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.data.samples_per_epoch // self.data.global_batch_size)

    @property
    def total_steps(self) -> int:
        """Optimiser steps that the schedules span."""
        return max(1, math.ceil(self.optim.epochs * self.steps_per_epoch))

    @property
    def warmup_steps(self) -> int:
        return round(self.optim.warmup_epochs * self.steps_per_epoch)

    @property
    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir or f"runs/{self.name}")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _plugin_schemas(schema: dict[str, Any], field: str, group: "registry.PluginGroup[Any]", prefix: str) -> None:
    """Point ``schema``'s ``field`` at one of the group's plugins' config models, each plugin's models
    under its own prefix in ``$defs`` (plugins reuse class names). A plugin that cannot be loaded is
    left out (``group.problems()`` says why)."""
    defs = schema.setdefault("$defs", {})
    options = []
    for name in group.loadable():
        plugin_prefix = f"{prefix}{name}."
        sub = group.get(name).config_model.model_json_schema(ref_template=f"#/$defs/{plugin_prefix}{{model}}")
        defs.update({plugin_prefix + name: model for name, model in sub.pop("$defs", {}).items()})
        key = plugin_prefix + sub.get("title", "config")
        defs[key] = sub
        options.append({"$ref": f"#/$defs/{key}"})
    schema["properties"][field] = {"description": f"The {field} section; 'name' selects the plugin", "oneOf": options}


def recipe_json_schema() -> dict[str, Any]:
    """JSON Schema of a recipe, the modality and objective sections each one of the registered plugins' models
    (of those that load: see :func:`plugin_problems`)."""
    schema = Recipe.model_json_schema()
    _plugin_schemas(schema, "modality", registry.MODALITIES, "")
    _plugin_schemas(schema, "objective", objectives.OBJECTIVES, "objective.")
    return schema


def plugin_problems() -> list[str]:
    """One line for every installed modality or objective plugin that cannot be used (imports them all)."""
    return [*registry.MODALITIES.problems().values(), *objectives.OBJECTIVES.problems().values()]
