"""The objective seam: registry, recipe section (and the legacy top-level ``ema`` / ``loss``),
checkpoints written before objectives were plugins, and a third-party objective that needs no
core change."""

from __future__ import annotations

import copy
from typing import Any, Literal

import pytest
import torch
import yaml

from jepa import objectives, registry
from jepa.config import ObjectiveConfig
from jepa.checkpoint import load_model_weights
from jepa.checkpoint.resume import recipe_differences
from jepa.monitor import read_metrics
from jepa.objectives.ijepa import IJEPAConfig, IJEPAObjective
from jepa.recipe import RecipeError, parse_recipe
from jepa.sources import load_source
from jepa.train import train
from tiny_recipes import tiny_image_recipe


def _tiny(tmp_path, **top: Any) -> dict[str, Any]:
    raw = tiny_image_recipe(0)
    raw.update(run_dir=str(tmp_path / "run"), max_steps=2, log={"every_steps": 1}, engine={"precision": "fp32"})
    raw.update(top)
    return raw


def test_builtins_are_discovered_through_the_entry_point_group():
    infos = {i.name: i for i in objectives.OBJECTIVES.available()}
    assert infos["ijepa"].target == "jepa.objectives.ijepa:IJEPAObjective"
    assert infos["lejepa"].target == "jepa.objectives.lejepa:LeJEPAObjective"
    assert infos["ijepa"].package == infos["lejepa"].package == "jepa-forge"


def test_a_recipe_without_objective_is_ijepa_and_legacy_sections_move_under_it(tmp_path):
    plain = parse_recipe(_tiny(tmp_path))
    assert plain.objective == IJEPAConfig()
    legacy = parse_recipe(_tiny(tmp_path, ema={"momentum": 0.9}, loss={"kind": "smooth_l1"}))
    assert legacy.objective.ema.momentum == 0.9 and legacy.objective.loss.kind == "smooth_l1"
    dumped = legacy.model_dump(mode="json")
    assert "ema" not in dumped and dumped["objective"]["ema"]["momentum"] == 0.9
    # the same recipe in the new layout resolves to the same values
    new = parse_recipe(_tiny(tmp_path, objective={"name": "ijepa", "ema": {"momentum": 0.9}, "loss": {"kind": "smooth_l1"}}))
    assert new == legacy
    # `--set ema.momentum=...` (the older spelling) on a recipe with objective.ema overrides that key alone
    both = parse_recipe(_tiny(tmp_path, objective={"name": "ijepa", "ema": {"momentum": 0.9, "final_momentum": 0.95}},
                              ema={"momentum": 0.8}))
    assert (both.objective.ema.momentum, both.objective.ema.final_momentum) == (0.8, 0.95)


@pytest.mark.parametrize("top, match", [
    ({"objective": {"name": "nope"}}, r"objective\.name: unknown objective 'nope'; known objectives: .*ijepa.*lejepa"),
    ({"objective": {"name": "lejepa"}, "ema": {"momentum": 0.9}}, r"ema: is a setting of the ijepa objective.*remove it"),
    ({"objective": "lejepa"}, r"objective: must be a mapping"),
    ({"objective": {"name": "ijepa", "ema": {"momentum": 0.99, "final_momentum": 0.9}}},
     r"objective\.ema\.final_momentum: must be >= ema\.momentum"),
    ({"objective": {"name": "lejepa", "lam": 1.5}}, r"objective\.lam"),
    ({"objective": {"name": "lejepa", "num_global_views": 1, "num_local_views": 0}}, r"objective\.num_global_views: LeJEPA needs"),
])
def test_objective_section_errors_name_the_field_and_the_fix(tmp_path, top, match):
    with pytest.raises(RecipeError, match=match):
        parse_recipe(_tiny(tmp_path, **top))


def test_lejepa_does_not_check_the_modality_sections_it_does_not_use(tmp_path):
    raw = _tiny(tmp_path, objective={"name": "lejepa"})
    raw["modality"]["mask"] = {"min_keep": 10**6}  # infeasible masks: an error for ijepa only
    parse_recipe(raw)
    with pytest.raises(RecipeError, match="min_keep"):
        parse_recipe({**raw, "objective": {"name": "ijepa"}})


def test_a_checkpoint_of_the_legacy_layout_resumes_evaluates_and_exports(tmp_path):
    """A run written before objectives were plugins stores `ema` / `loss` at the top level of its
    recipe (models.pt, recipe.yaml): resuming compares it equal, and the weights load."""
    result = train(parse_recipe(_tiny(tmp_path, ema={"momentum": 0.9})))
    weights = load_model_weights(result.run_dir)
    legacy = copy.deepcopy(weights.recipe.model_dump(mode="json"))
    section = legacy.pop("objective")
    legacy.update(ema=section["ema"], loss=section["loss"])
    assert recipe_differences(legacy, weights.recipe.model_dump(mode="json")) == []
    models = torch.load(weights.path, weights_only=True)
    models["recipe"] = legacy
    old_file = tmp_path / "legacy_models.pt"
    torch.save(models, old_file)
    source = load_source(str(old_file))
    assert source.recipe.objective.ema.momentum == 0.9
    for k, v in weights.target_encoder.items():
        assert torch.equal(source.encoder.state_dict()[k], v)


class _NoEMAConfig(ObjectiveConfig):
    name: Literal["ijepa_frozen_target"] = "ijepa_frozen_target"


class _FrozenTargetObjective(IJEPAObjective):
    """A third-party objective: I-JEPA against a target that never moves (no core change needed)."""

    name = "ijepa_frozen_target"
    config_model = _NoEMAConfig

    def __init__(self, cfg, modality, *, total_steps=1, seed=0):
        super(IJEPAObjective, self).__init__(cfg, modality, total_steps=total_steps, seed=seed)
        self.cfg = IJEPAConfig(ema={"momentum": 1.0, "final_momentum": 1.0})
        from jepa.target import EMATargetUpdater

        self.updater = EMATargetUpdater(1.0, 1.0, total_steps)


def test_a_third_party_objective_registers_and_trains_without_core_changes(tmp_path):
    objectives.OBJECTIVES.register("ijepa_frozen_target", _FrozenTargetObjective)
    try:
        result = train(parse_recipe(_tiny(tmp_path, objective={"name": "ijepa_frozen_target"})))
        records = read_metrics(result.run_dir)
        assert [r["step"] for r in records] == [1, 2] and all(r["ema_momentum"] == 1.0 for r in records)
        weights = load_model_weights(result.run_dir)
        recipe = parse_recipe(_tiny(tmp_path))
        torch.manual_seed(recipe.seed)
        initial = IJEPAObjective(recipe.objective, registry.bind(recipe.modality)).build_model().encoder.state_dict()
        assert all(torch.equal(weights.target_encoder[k], v) for k, v in initial.items()), "the target moved"
        assert any(not torch.equal(weights.encoder[k], v) for k, v in initial.items()), "the encoder did not train"
        saved = yaml.safe_load((result.run_dir / "recipe.yaml").read_text())
        assert saved["objective"] == {"name": "ijepa_frozen_target"}
    finally:
        objectives.OBJECTIVES.unregister("ijepa_frozen_target")
