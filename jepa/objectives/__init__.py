"""Learning objectives, discovered from the ``jepa.objectives`` entry-point group (the contract is
:mod:`jepa.objective`). Built in: ``ijepa`` (:mod:`jepa.objectives.ijepa`) and ``lejepa``
(:mod:`jepa.objectives.lejepa`). A package ships another one by declaring::

    [project.entry-points."jepa.objectives"]
    myobjective = "my_package.objective:MyObjective"
"""

from __future__ import annotations

from jepa.config import ObjectiveConfig
from jepa.interfaces import Modality
from jepa.objective import Objective
from jepa.registry import PluginGroup

GROUP = "jepa.objectives"
DEFAULT = "ijepa"
"""The objective of a recipe without an ``objective:`` section."""

OBJECTIVES: PluginGroup[Objective] = PluginGroup(GROUP, Objective, "objective", "objectives")


def bind(cfg: ObjectiveConfig, modality: Modality, *, total_steps: int = 1, seed: int = 0) -> Objective:
    """The objective named by ``cfg.name``, bound to ``cfg`` and the modality."""
    return OBJECTIVES.get(cfg.name)(cfg, modality, total_steps=total_steps, seed=seed)
