"""Bad recipes and ``--set`` values, generated from the recipe models: every one ends in one
``error:`` report naming the field (or the file's problem), exit status 2, never a traceback.

Cases are generated per field from its type (a count gets ``true``, ``2.5``, ``"eight"``, a list,
``2**70`` and, when bounded, ``-1``; a number gets ``true``, ``.inf``, ``.nan``, a string, a list; a
flag gets ``1``, a string, ``null``; a choice gets an unknown word and ``true``; a pair gets the
wrong length and a boolean item; a section gets a scalar), each written into the recipe file and
given with ``--set``; then file-level faults (not UTF-8, duplicate keys, an alias bomb, ...) and
malformed ``--set`` options. All run in-process through the console-script entry point
(``jepa.cli.main``), where a traceback would escape as an exception.
"""

from __future__ import annotations

import math
import resource
import sys
import time
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import pytest
import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel

from jepa.cli import main
from jepa.modalities.image.config import ImageConfig
from jepa.recipe import Recipe
from tiny_recipes import tiny_image_recipe

BASE = tiny_image_recipe(0)


def _walk(model: type[BaseModel], prefix: str = ""):
    """``(dotted path, annotation, constraints)`` of every field of ``model``, sections included."""
    for name, field in model.model_fields.items():
        path, ann = prefix + name, field.annotation
        yield path, ann, field.metadata
        if isinstance(ann, type) and issubclass(ann, BaseModel) and not ann.__name__.endswith("ModalityConfig"):
            yield from _walk(ann, path + ".")


def _bad_values(ann: Any, constraints: list[Any]) -> list[Any]:
    """Values that ``ann`` (with ``constraints``) must refuse."""
    origin, args = get_origin(ann), get_args(ann)
    optional = origin in (Union, types.UnionType) and type(None) in args
    if optional:
        ann = next(a for a in args if a is not type(None))
        origin, args = get_origin(ann), get_args(ann)
    bounded = any(isinstance(c, (Ge, Gt)) for c in constraints)
    if ann is int:
        return [True, 2.5, "eight", [1], 2**70] + ([-1] if bounded else []) + ([] if optional else [None])
    if ann is float:
        out = [True, math.inf, math.nan, "fast", [0.5]] + ([-1.0] if bounded else [])
        return out + ([2.0] if any(isinstance(c, (Le, Lt)) for c in constraints) else [])
    if ann is bool:
        return [1, "maybe", None, 0.0]
    if origin is Literal:
        return ["no-such-choice", True, [args[0]]]
    if origin is tuple:
        return [[0.5], [True] * len(args), "pair", [math.nan] * len(args)]
    if ann is str:
        return [5, [1], {"a": 1}] + ([] if optional else [None])
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [5, "section", [1]]
    return []


def _set(raw: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = yaml.safe_load(yaml.safe_dump(raw))
    node = out
    *parents, last = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return out


def _yaml_text(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


FIELD_CASES = [
    (path, value)
    for model, prefix in ((Recipe, ""), (ImageConfig, "modality."))
    for path, ann, constraints in _walk(model, prefix)
    if path not in ("modality", "modality.name") or prefix
    for value in _bad_values(ann, constraints)
]


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """Run ``jepa ARGS`` in-process; (exit status, stderr). An escaping exception fails the test."""
    monkeypatch.setattr(sys, "argv", ["jepa", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


def _assert_one_report(code: int, err: str, *names: str) -> None:
    assert code == 2, err
    assert err.startswith("error:") and "Traceback" not in err, err
    assert all(name in err for name in names), (names, err)


def test_at_least_150_generated_field_cases():
    assert len(FIELD_CASES) >= 150, len(FIELD_CASES)


def _report(path: Path, overrides: list[str]) -> tuple[int, str]:
    """What ``jepa recipe check`` does with a bad recipe, without the CLI's start-up cost: the
    exit status and the text that :mod:`jepa.cli.errors` prints (any other exception escapes)."""
    from jepa.cli.errors import exit_code_for, message_of
    from jepa.recipe import load_recipe

    try:
        load_recipe(path, overrides)
    except Exception as exc:  # noqa: BLE001 - mapped exactly as the CLI maps it, or re-raised
        code = exit_code_for(exc)
        if code is None:
            raise
        return code, f"error: {message_of(exc)}"
    return 0, ""


def test_bad_field_values_in_the_file_and_by_set(tmp_path, monkeypatch, capsys):
    """Each generated bad value, once in the recipe file and once as --set: a report naming the field
    (every tenth case also through the whole CLI)."""
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(BASE))
    tried = 0
    for i, (path, value) in enumerate(FIELD_CASES):
        bad = tmp_path / f"bad{i}.yaml"
        bad.write_text(yaml.safe_dump(_set(BASE, path, value)))
        override = f"{path}={_yaml_text(value)}"
        _assert_one_report(*_report(bad, []), str(bad), path)
        _assert_one_report(*_report(good, [override]), "--set", path)
        if i % 10 == 0:
            _assert_one_report(*_cli(monkeypatch, capsys, "recipe", "check", str(bad)), str(bad), path)
            _assert_one_report(*_cli(monkeypatch, capsys, "recipe", "check", str(good), "--set", override), "--set", path)
        tried += 2
    assert tried >= 300


def _alias_bomb(levels: int = 8) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\nname: bomb\n"


FILE_CASES: list[tuple[str, bytes | None, tuple[str, ...]]] = [
    ("not_utf8", b"name: caf\xe9\nmodality: {name: image}\n", ("not UTF-8",)),
    ("utf16", "name: t\n".encode("utf-16"), ("not UTF-8",)),
    ("a_list", b"- 1\n- 2\n", ("a recipe must be a YAML mapping",)),
    ("a_scalar", b"hello\n", ("a recipe must be a YAML mapping",)),
    ("empty", b"", ("the recipe is empty", "modality")),
    ("binary", bytes(range(256)) * 4, ("not UTF-8",)),
    ("invalid_yaml", b"name: [\n", ("not valid YAML",)),
    ("tabs", b"name: t\nmodality:\n\tname: image\n", ("not valid YAML",)),
    ("duplicate_top_key", yaml.safe_dump(BASE).encode() + b"seed: 3\n", ("'seed' appears twice",)),
    ("duplicate_nested_key", b"name: t\nmodality:\n  name: image\n  input: {crop_size: 32, crop_size: 64}\n",
     ("'crop_size' appears twice",)),
    ("alias_bomb", _alias_bomb().encode(), ("aliases",)),
    ("recursive_alias", b"name: &n [*n]\n", ("recursive alias",)),
    ("deep_nesting", b"name: " + b"[" * 3000 + b"]" * 3000 + b"\n", ("nested too deeply",)),
    ("too_big", b"name: t\n" + b"# padding\n" * 200_000, ("bytes, more than a recipe may have",)),
    ("unknown_top_key", yaml.safe_dump({**BASE, "optimizer": {}}).encode(), ("optimizer", "unknown key")),
    ("unknown_nested_key", yaml.safe_dump(_set(BASE, "modality.mask.min_kep", 3)).encode(), ("modality.mask.min_kep",)),
    ("no_modality", yaml.safe_dump({k: v for k, v in BASE.items() if k != "modality"}).encode(), ("modality",)),
    ("unknown_modality", yaml.safe_dump(_set(BASE, "modality.name", "audio")).encode(), ("modality.name", "image")),
    ("modality_scalar", yaml.safe_dump({**BASE, "modality": "image"}).encode(),
     ("modality: must be a mapping with at least `name:`", "got 'image'")),
    ("epochs_overflow", yaml.safe_dump(_set(BASE, "optim.epochs", 1e300)).encode(), ("optim.epochs",)),
    ("steps_overflow", yaml.safe_dump(_set(_set(BASE, "data.samples_per_epoch", 2**62), "data.global_batch_size", 1)).encode(),
     ("optim.epochs",)),
    ("warmup_too_long", yaml.safe_dump(_set(BASE, "optim.warmup_epochs", 5)).encode(), ("optim.warmup_epochs",)),
    ("betas_out_of_range", yaml.safe_dump(_set(BASE, "optim.betas", [0.9, 1.5])).encode(), ("optim.betas",)),
    ("crop_80000", yaml.safe_dump(_set(BASE, "modality.input.crop_size", 80000)).encode(), ("modality.input.crop_size",)),
    ("crop_not_divisible", yaml.safe_dump(_set(BASE, "modality.input.crop_size", 33)).encode(), ("modality.input.crop_size",)),
    ("min_keep_infeasible", yaml.safe_dump(_set(BASE, "modality.mask.min_keep", 15)).encode(), ("modality.mask.min_keep",)),
    ("range_inverted", yaml.safe_dump(_set(BASE, "modality.mask.target_scale", [0.3, 0.2])).encode(),
     ("target_scale", "0 < low <= high")),
    ("scale_above_one", yaml.safe_dump(_set(BASE, "modality.mask.context_scale", [0.85, 1.5])).encode(),
     ("context_scale", "<= 1")),
    ("heads_do_not_divide", yaml.safe_dump(_set(BASE, "modality.encoder.num_heads", 3)).encode(), ("modality.encoder.num_heads",)),
    ("a_directory", None, ("not a file",)),
    ("missing_file", None, ("file not found",)),
]


@pytest.mark.parametrize("name,text,expected", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_bad_recipe_files(name, text, expected, tmp_path, monkeypatch, capsys):
    path = tmp_path / f"{name}.yaml"
    if name == "a_directory":
        path.mkdir()
    elif text is not None:
        path.write_bytes(text)
    start = time.perf_counter()
    _assert_one_report(*_cli(monkeypatch, capsys, "recipe", "check", str(path)), *expected)
    assert time.perf_counter() - start < 30


SET_CASES = [
    ("no_equals", ["optim.lr"], ("expected dotted.key=value",)),
    ("empty_key", ["=5"], ("expected dotted.key=value",)),
    ("empty_part", ["optim..lr=1"], ("optim..lr",)),
    ("through_a_scalar", ["seed.x=1"], ("seed.x", "not a section")),
    ("invalid_yaml_value", ["optim.lr=["], ("optim.lr", "not valid YAML")),
    ("duplicate_key_value", ["optim={lr: 1, lr: 2}"], ("optim", "appears twice")),
    ("alias_bomb_value", ["name=" + "[" + ", ".join(["x"] * 10) + "]"], ()),  # a list: refused for a name
    ("unknown_key", ["data.bogus=1"], ("data.bogus", "unknown key")),
    ("section_replaced", ["optim=3"], ("optim",)),
    ("crop_2240_patch_8", ["modality.input.crop_size=2240", "modality.encoder.patch_size=8",
                           "modality.mask.min_keep=100000"], ("modality.mask.min_keep",)),
]


@pytest.mark.parametrize("name,overrides,expected", SET_CASES, ids=[c[0] for c in SET_CASES])
def test_bad_set_options(name, overrides, expected, tmp_path, monkeypatch, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(BASE))
    args = [a for o in overrides for a in ("--set", o)]
    _assert_one_report(*_cli(monkeypatch, capsys, "recipe", "check", str(good), *args), *expected)


def test_set_on_a_list_recipe(tmp_path, monkeypatch, capsys):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    _assert_one_report(*_cli(monkeypatch, capsys, "recipe", "check", str(path), "--set", "seed=1"), "--set", "not a mapping")


def test_values_that_look_alike_are_read_as_meant(tmp_path):
    """YAML 1.2 floats (``1e-3``), whole numbers for float fields, dates as strings."""
    from jepa.recipe import load_recipe

    path = tmp_path / "r.yaml"
    raw = {k: v for k, v in BASE.items() if k != "name"}
    path.write_text("name: 2024-01-01\n" + yaml.safe_dump(raw).replace("optim:\n", "optim:\n  lr: 1e-3\n  final_lr: 0\n"))
    r = load_recipe(path, ["optim.start_lr=2e-4", "optim.epochs=2"])
    assert r.name == "2024-01-01" and r.optim.lr == 1e-3 and r.optim.final_lr == 0.0
    assert r.optim.start_lr == 2e-4 and r.optim.epochs == 2.0


def test_mask_check_of_a_large_grid_is_bounded(tmp_path):
    """crop_size 2240 at patch 8 (a 280 x 280 grid) used to allocate 22 GB in `jepa recipe check`."""
    from jepa.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(BASE))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    for mode in ("faithful", "fixed"):
        load_recipe(path, ["modality.input.crop_size=2240", "modality.encoder.patch_size=8", f"modality.mask.mode={mode}",
                           "modality.mask.min_keep=10", "modality.mask.num_targets=16"])
    assert time.perf_counter() - start < 60
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 2 * 2**20  # KiB: less than 2 GiB more
