"""Recipes: strict parsing, overrides, semantic checks and the messages users see."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jepa.recipe import RecipeError, apply_overrides, load_recipe, parse_recipe, recipe_json_schema

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))

SMALL = {
    "name": "t",
    "modality": {"name": "image", "encoder": {"arch": "vit_tiny", "patch_size": 16}, "input": {"crop_size": 224}},
    "data": {"source": "synthetic", "global_batch_size": 8, "samples_per_epoch": 64},
    "optim": {"epochs": 2, "warmup_epochs": 1},
}


def _write(tmp_path: Path, raw) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def _problems(raw, overrides=()) -> str:
    with pytest.raises(RecipeError) as info:
        parse_recipe(apply_overrides(raw, list(overrides)), "r.yaml")
    return str(info.value)


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_checks(path):
    r = load_recipe(path)
    assert r.total_steps > 0


def test_defaults_fill_in_and_roundtrip():
    r = parse_recipe(SMALL)
    assert r.modality.mask.num_targets == 4 and r.modality.mask.target_scale == (0.15, 0.2)
    assert r.optim.lr == 1e-3 and r.objective.ema.momentum == 0.996 and r.objective.name == "ijepa"
    assert r.steps_per_epoch == 8 and r.total_steps == 16 and r.warmup_steps == 8
    again = parse_recipe(yaml.safe_load(r.to_yaml()))
    assert again == r


def test_unknown_key_names_path_and_file():
    msg = _problems({**SMALL, "optim": {"epochs": 2, "warmup_epochs": 1, "lr_peak": 1.0}})
    assert "r.yaml: optim.lr_peak: unknown key" in msg


def test_unknown_key_inside_modality_section():
    raw = yaml.safe_load(yaml.safe_dump(SMALL))
    raw["modality"]["encoder"]["widht"] = 3
    assert "r.yaml: modality.encoder.widht: unknown key" in _problems(raw)


def test_wrong_type_shows_value_and_expectation():
    msg = _problems({**SMALL, "engine": {"zero_stage": 5}})
    assert "engine.zero_stage" in msg and "got 5" in msg and "0, 1, 2 or 3" in msg


def test_bad_arch_lists_allowed_values():
    raw = yaml.safe_load(yaml.safe_dump(SMALL))
    raw["modality"]["encoder"]["arch"] = "vit_hug"
    msg = _problems(raw)
    assert "modality.encoder.arch" in msg and "'vit_huge'" in msg and "got 'vit_hug'" in msg


def test_unknown_modality_lists_known():
    msg = _problems({**SMALL, "modality": {"name": "sound"}})
    assert "modality.name: unknown modality 'sound'; known modalities:" in msg and "image" in msg


def test_all_problems_reported_together():
    raw = yaml.safe_load(yaml.safe_dump(SMALL))
    raw["modality"]["encoder"]["arch"] = "nope"
    raw["engine"] = {"precision": "fp8"}
    msg = _problems(raw)
    assert "2 problems" in msg and "modality.encoder.arch" in msg and "engine.precision" in msg


def test_crop_not_divisible_by_patch():
    msg = _problems(SMALL, ["modality.input.crop_size=200"])
    assert "modality.input.crop_size: 200 is not divisible by encoder.patch_size=16" in msg


def test_heads_must_divide_width():
    msg = _problems(SMALL, ["modality.encoder.num_heads=5"])
    assert "modality.encoder.num_heads: 5 heads do not divide the encoder width 192" in msg


def test_infeasible_mask_geometry_rejected_at_check():
    # 8x8 grid with the paper's min_keep=10: the authors' sampler hangs on about half the batches.
    msg = _problems(SMALL, ["modality.input.crop_size=128"])
    assert "modality.mask" in msg


def test_schedule_checks():
    assert "optim.warmup_epochs: must be shorter than optim.epochs" in _problems(SMALL, ["optim.warmup_epochs=5"])
    assert "optim.epochs" in _problems(SMALL, ["optim.epochs=0"])
    assert "data.train_shards: required when data.source is 'shards'" in _problems(SMALL, ["data.source=shards"])


def test_set_overrides_are_validated_the_same_way():
    r = parse_recipe(apply_overrides(SMALL, ["optim.lr=0.002", "modality.mask.mode=fixed", "data.train_shards=a/{0..3}.tar"]))
    assert r.optim.lr == 0.002 and r.modality.mask.mode == "fixed" and r.data.train_shards == "a/{0..3}.tar"
    assert "optim.lr" in _problems(SMALL, ["optim.lr=fast"])


@pytest.mark.parametrize("bad, expected", [
    ("optim.lr", "expected dotted.key=value"),
    ("=3", "expected dotted.key=value"),
    ("optim..lr=3", "expected dotted.key=value"),
    ("optim.lr.x=3", "optim.lr is 0.001, not a section"),
])
def test_bad_set_syntax(bad, expected):
    raw = apply_overrides(SMALL, ["optim.lr=0.001"])
    with pytest.raises(RecipeError) as info:
        apply_overrides(raw, [bad])
    assert expected in str(info.value) and "--set" in str(info.value)


def test_load_recipe_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError, match="file not found"):
        load_recipe(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(p)


def test_schema_covers_modality_and_descriptions():
    s = recipe_json_schema()
    assert "oneOf" in s["properties"]["modality"]
    assert "image.ImageConfig" in s["$defs"]
    assert s["$defs"]["OptimConfig"]["properties"]["lr"]["description"]
    json.dumps(s)


def test_schema_keeps_each_modality_its_own_models():
    # plugins reuse class names (image and the example time-series plugin both have an EncoderConfig):
    # every reference must resolve, and the image section must lead to the image encoder's fields
    s = recipe_json_schema()

    def refs(node):
        if isinstance(node, dict):
            if "$ref" in node:
                yield node["$ref"]
            for v in node.values():
                yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    assert all(r.startswith("#/$defs/") and r[len("#/$defs/"):] in s["$defs"] for r in refs(s))
    image = s["$defs"]["image.ImageConfig"]["properties"]
    encoder = s["$defs"][image["encoder"]["$ref"][len("#/$defs/"):]]
    assert "arch" in encoder["properties"]  # the ViT's field, which no other modality's encoder has
    video = s["$defs"]["video.VideoConfig"]["properties"]
    assert video["encoder"]["$ref"] == "#/$defs/video.VideoEncoderConfig"


def _jepa(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "jepa.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_check_show_schema(tmp_path):
    ok = _jepa("recipe", "check", *map(str, RECIPES))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("ok ") == len(RECIPES)
    shown = _jepa("recipe", "show", str(ROOT / "recipes/image_vith14_in22k.yaml"), "--set", "optim.lr=0.002")
    assert shown.returncode == 0, shown.stderr
    resolved = yaml.safe_load(shown.stdout)
    assert resolved["optim"]["lr"] == 0.002 and resolved["engine"]["grad_accum_steps"] is None  # derived
    schema = _jepa("recipe", "schema")
    assert schema.returncode == 0 and json.loads(schema.stdout)["title"] == "Recipe"


def test_cli_bad_recipe_is_one_clear_message(tmp_path):
    p = _write(tmp_path, {**SMALL, "optim": {"epochs": 2, "warmup_epochs": 1, "lr_peak": 1.0}})
    res = _jepa("recipe", "check", str(p))
    assert res.returncode == 2
    assert "optim.lr_peak: unknown key" in res.stderr
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    res = _jepa("recipe", "check", str(p), "--set", "nonsense")
    assert res.returncode == 2 and "expected dotted.key=value" in res.stderr and "Traceback" not in res.stderr
