"""Hostile recipes, names and plugins (issue #27, round three): every one ends in one clear report,
never a traceback, a machine filled before step 1 or a terminal driven by an escape sequence.

* counts that size memory or processes have upper bounds (``data.prefetch_factor: 1000000`` used to
  pass ``jepa recipe check`` and fill the memory before step 1);
* characters YAML refuses (NUL, ESC) in a recipe file or a ``--set`` value: one ``error:`` line with
  the file (or key) and the position;
* control characters of recipe keys, file names and ``--set`` keys are escaped in every error line;
* running out of GPU or host memory: one line with the settings to lower;
* a broken plugin (import fails, not a plugin class, wrong name, registered twice) breaks itself only.

Run in-process through the console-script entry point (``jepa.cli.main``), where a traceback
escapes as an exception.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from jepa import objectives, registry
from cli_runner import run_jepa as _cli
from jepa.errors import DataError
from jepa.text import printable
from tiny_recipes import tiny_image_recipe

REPO = Path(__file__).resolve().parents[1]
ESC = "\x1b"


def _assert_error(code: int, err: str, *names: str) -> None:
    """Exit 2, one ``error:`` report (a recipe report: a header and one line per problem), the names in
    it, no traceback and no raw control character."""
    assert code == 2, err
    assert err.startswith("error:") and "Traceback" not in err, err
    assert err.count("error:") == 1, err
    assert all(name in err for name in names), (names, err)
    assert printable(err.replace("\n", "")) == err.replace("\n", ""), repr(err)


@pytest.fixture
def good_recipe(tmp_path) -> Path:
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(tiny_image_recipe(0)))
    return path


# --------------------------------------------------------------------------- 1. bounded settings

BIG_BATCH = "data={source: synthetic, samples_per_epoch: 262144, global_batch_size: 262144, micro_batch_size: 131072}"
BOUNDED = [  # (--set overrides, the key named in the report); values that every other check accepts
    (["data.prefetch_factor=1000000"], "data.prefetch_factor"),
    (["data.num_workers=100000"], "data.num_workers"),
    (["data.shuffle_buffer=1000000000"], "data.shuffle_buffer"),
    ([BIG_BATCH], "data.micro_batch_size"),
    (["data.global_batch_size=1099511627776", "data.samples_per_epoch=1099511627776"], "data.global_batch_size"),
    (["eval.max_samples=1000000000"], "eval.max_samples"),
    (["eval.batch_size=10000000"], "eval.batch_size"),
    (["eval.k=100000000"], "eval.k"),
    (["modality.input.crop_size=16384", "modality.encoder.patch_size=64"], "modality.input.crop_size"),
    (["modality.input.in_chans=1000000"], "modality.input.in_chans"),
    (["modality.encoder.embed_dim=1000000"], "modality.encoder.embed_dim"),
    (["modality.encoder.depth=1000000"], "modality.encoder.depth"),
    (["modality.predictor.mlp_ratio=100000"], "modality.predictor"),
    (["objective={name: lejepa, projector: {hidden_dim: 10000000}}"], "objective.projector.hidden_dim"),
    # just above the bounds: on code without them the video checks would build masks this large
    (["modality={name: video, input: {num_frames: 2048}}"], "modality.input.num_frames"),
    (["modality={name: video, mask: {generators: [{num_blocks: 2048}]}}"], "modality.mask.generators.0.num_blocks"),
    (["modality={name: video, mask: {generators: [" + ", ".join(["{num_blocks: 1}"] * 65) + "]}}"],
     "modality.mask.generators"),
]


@pytest.mark.parametrize("overrides,key", BOUNDED, ids=[b[1] for b in BOUNDED])
def test_unbounded_settings_are_refused_by_recipe_check(overrides, key, good_recipe, monkeypatch, capsys):
    args = [a for o in overrides for a in ("--set", o)]
    code, _, err = _cli(monkeypatch, capsys, "recipe", "check", str(good_recipe), *args)
    _assert_error(code, err, key)
    assert "invalid recipe (1 problem)" in err, err
    assert err.count(f": {key}: ") == 1, err


def test_bounded_settings_admit_their_bound(good_recipe, monkeypatch, capsys):
    code, out, err = _cli(monkeypatch, capsys, "recipe", "check", str(good_recipe), "--set", "data.prefetch_factor=64",
                          "--set", "data.num_workers=256", "--set", "data.shuffle_buffer=100000", "--set", "eval.k=10000")
    assert code == 0, err


def test_huge_prefetch_factor_in_the_file_is_one_line_saying_why(tmp_path, monkeypatch, capsys):
    raw = tiny_image_recipe(0)
    raw["data"]["prefetch_factor"] = 1_000_000
    path = tmp_path / "prefetch.yaml"
    path.write_text(yaml.safe_dump(raw))
    code, _, err = _cli(monkeypatch, capsys, "recipe", "check", str(path))
    _assert_error(code, err, str(path), "data.prefetch_factor", "less than or equal to 64", "held in memory")


def test_bounds_admit_every_shipped_recipe(monkeypatch, capsys):
    recipes = sorted(str(p) for p in (REPO / "recipes").glob("*.yaml"))
    code, out, err = _cli(monkeypatch, capsys, "recipe", "check", *recipes)
    assert code == 0, err
    assert out.count("ok ") == len(recipes), out


# --------------------------------------------------------------------------- 2. characters YAML refuses


@pytest.mark.parametrize("char", ["\x00", ESC], ids=["nul", "esc"])
def test_control_character_in_a_recipe_file(char, tmp_path, monkeypatch, capsys):
    path = tmp_path / "hostile.yaml"
    path.write_bytes(f"name: tiny\nseed: 0\nmodality: {{name: ima{char}ge}}\n".encode())
    code, _, err = _cli(monkeypatch, capsys, "recipe", "check", str(path))
    _assert_error(code, err, str(path), "line 3, column 21", f"U+{ord(char):04X}")


@pytest.mark.parametrize("char", ["\x00", ESC], ids=["nul", "esc"])
def test_control_character_in_a_set_value(char, good_recipe, monkeypatch, capsys):
    code, _, err = _cli(monkeypatch, capsys, "recipe", "check", str(good_recipe), "--set", f"name=ru{char}n")
    _assert_error(code, err, "--set name", "line 1, column 3", f"U+{ord(char):04X}")


def test_control_character_in_a_random_source_recipe(tmp_path, monkeypatch, capsys):
    path = tmp_path / "hostile.yaml"
    path.write_bytes(b"name: tiny\x00\nmodality: {name: image}\n")
    code, _, err = _cli(monkeypatch, capsys, "eval", f"random:{path}", "--train-data", str(tmp_path / "t.tar"),
                        "--val-data", str(tmp_path / "v.tar"))
    _assert_error(code, err, str(path), "line 1, column 11", "U+0000")


# --------------------------------------------------------------------------- 3. escaped names


def test_recipe_key_with_an_escape_sequence_is_escaped(tmp_path, monkeypatch, capsys):
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump(tiny_image_recipe(0)) + '"clear\\e[2Jscreen": 1\n')
    code, _, err = _cli(monkeypatch, capsys, "recipe", "check", str(path))
    _assert_error(code, err, "clear\\x1b[2Jscreen", "unknown key")
    assert ESC not in err


def test_set_key_and_file_name_with_escape_sequences_are_escaped(tmp_path, good_recipe, monkeypatch, capsys):
    code, _, err = _cli(monkeypatch, capsys, "recipe", "check", str(good_recipe), "--set", f"data.x{ESC}]0;pwned{ESC}\\=1")
    _assert_error(code, err, "data.x\\x1b]0;pwned")
    missing = tmp_path / f"no{ESC}[2Jsuch\r.yaml"
    code, _, err = _cli(monkeypatch, capsys, "recipe", "check", str(missing))
    _assert_error(code, err, "no\\x1b[2Jsuch\\x0d.yaml", "file not found")


def test_every_error_line_is_escaped(monkeypatch, capsys):
    """Any expected failure's text (here a UserError from a command) reaches the terminal escaped,
    its line breaks kept."""
    from jepa.cli.errors import message_of

    assert message_of(ValueError(f"a{ESC}[2Jb\x07c\rd\u2028e\nnext")) == "a\\x1b[2Jb\\x07c\\x0dd\\u2028e\nnext"
    assert printable("caf\u00e9 \u6570\u636e \U0001f600") == "caf\u00e9 \u6570\u636e \U0001f600"  # ordinary text kept

    def hostile(*args, **kwargs):
        raise DataError(f"shard {ESC}[31mred{ESC}[0m.tar is corrupt")

    monkeypatch.setattr("jepa.cli.recipe_cmds.load_recipe", hostile)
    code, _, err = _cli(monkeypatch, capsys, "recipe", "show", "any.yaml")
    _assert_error(code, err, "shard \\x1b[31mred")


# --------------------------------------------------------------------------- 4. out of memory

OOM = [
    (MemoryError(), "out of host memory"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.1 GiB "
                            "of which 1.2 GiB is free.\nIncluding non-PyTorch memory, this process has ..."),
     "out of GPU memory (CUDA out of memory. Tried to allocate 20.00 GiB)"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
                  "allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)"), "out of host memory"),
]


@pytest.mark.parametrize("exc,expected", OOM, ids=["MemoryError", "OutOfMemoryError", "cpu_allocator"])
def test_out_of_memory_in_training_is_one_line_with_the_knobs(exc, expected, good_recipe, monkeypatch, capsys):
    def train(*args, **kwargs):
        raise exc

    monkeypatch.setattr("jepa.train.train", train)
    code, _, err = _cli(monkeypatch, capsys, "train", str(good_recipe))
    _assert_error(code, err, expected, "data.micro_batch_size", "jepa plan")
    assert len(err.strip().splitlines()) == 1, err


def test_out_of_memory_in_evaluation_is_one_line(good_recipe, tmp_path, monkeypatch, capsys):
    def evaluate(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")

    import jepa.cli.eval_cmds

    monkeypatch.setattr(jepa.cli.eval_cmds, "evaluate_shards", evaluate)  # where the command calls it
    code, _, err = _cli(monkeypatch, capsys, "eval", f"random:{good_recipe}", "--train-data", str(tmp_path / "t.tar"),
                        "--val-data", str(tmp_path / "v.tar"))
    _assert_error(code, err, "out of GPU memory", "eval.batch_size", "jepa plan")
    assert len(err.strip().splitlines()) == 1, err


# --------------------------------------------------------------------------- 5. broken plugins

BROKEN_MODULE = "raise RuntimeError('this plugin cannot start')\n"
PLAIN_MODULE = """
from jepa.interfaces import Modality


class NotAPlugin:
    name = "notaplugin"


class Misnamed(Modality):
    name = "other_name"


class TwiceA(Modality):
    name = "twice"


class TwiceB(Modality):
    name = "twice"
"""
PACKAGES = {  # distribution -> entry_points.txt
    "hostile-plugins": ("[jepa.modalities]\nboom = hostile_boom_mod:Boom\nnotaplugin = hostile_plain_mod:NotAPlugin\n"
                        "misnamed = hostile_plain_mod:Misnamed\ntwice = hostile_plain_mod:TwiceA\n"
                        "[jepa.objectives]\nboomobj = hostile_boom_mod:Boom\n"
                        "notanobjective = hostile_plain_mod:NotAPlugin\n"),
    "hostile-twin": "[jepa.modalities]\ntwice = hostile_plain_mod:TwiceB\n",
}
BROKEN = {  # name -> what its one line names
    "boom": ("hostile-plugins", "jepa.modalities:boom = hostile_boom_mod:Boom", "cannot be imported",
             "this plugin cannot start"),
    "notaplugin": ("hostile-plugins", "jepa.modalities:notaplugin = hostile_plain_mod:NotAPlugin",
                   "not a jepa.interfaces.Modality subclass"),
    "misnamed": ("hostile-plugins", "jepa.modalities:misnamed = hostile_plain_mod:Misnamed", "'other_name'",
                 "must equal the class's name"),
    "twice": ("hostile-plugins", "hostile-twin", "registered twice", "uninstall one"),
}


@pytest.fixture
def broken_plugins(tmp_path, monkeypatch):
    """Install (for this test) two packages whose entry points are broken in every way listed in BROKEN."""
    (tmp_path / "hostile_boom_mod.py").write_text(BROKEN_MODULE)
    (tmp_path / "hostile_plain_mod.py").write_text(PLAIN_MODULE)
    dists = []
    for name, text in PACKAGES.items():
        info = tmp_path / f"{name.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(text)
        dists.append(importlib.metadata.PathDistribution(info))
    monkeypatch.syspath_prepend(str(tmp_path))
    installed = importlib.metadata.entry_points

    def entry_points(*, group: str):
        return [*installed(group=group), *(ep for d in dists for ep in d.entry_points if ep.group == group)]

    monkeypatch.setattr(registry, "entry_points", entry_points)
    for group in (registry.MODALITIES, objectives.OBJECTIVES):  # what this test loads is forgotten after it
        monkeypatch.setattr(group, "_cache", dict(group._cache))
        monkeypatch.setattr(group, "_broken", {}, raising=False)
    yield


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_broken_plugin_is_a_plugin_error_naming_package_and_entry_point(name, broken_plugins):
    with pytest.raises(ValueError) as info:
        registry.get(name)
    message = str(info.value)
    assert "\n" not in message and all(part in message for part in BROKEN[name]), message
    assert registry.get("image").name == "image"


def test_modalities_lists_the_others_and_one_warning_per_broken_plugin(broken_plugins, monkeypatch, capsys):
    code, out, err = _cli(monkeypatch, capsys, "modalities")
    assert code == 0, err
    assert "image" in out and "video" in out and "jepa-forge" in out, out
    lines = err.strip().splitlines()
    assert len(lines) == len(BROKEN) and all(line.startswith("warning:") for line in lines), err
    for name, parts in BROKEN.items():
        assert any(f"'{name}'" in line and all(p in line for p in parts) for line in lines), (name, err)
    assert "Traceback" not in err


def test_schema_and_recipe_check_keep_working_beside_broken_plugins(broken_plugins, monkeypatch, capsys):
    code, out, err = _cli(monkeypatch, capsys, "recipe", "schema")
    assert code == 0, err
    defs = json.loads(out)["$defs"]
    assert "image.ImageConfig" in defs and "video.VideoConfig" in defs and "objective.lejepa.LeJEPAConfig" in defs
    assert all(line.startswith("warning:") for line in err.strip().splitlines()), err
    assert "boomobj" in err and "notanobjective" in err and "Traceback" not in err
    code, out, err = _cli(monkeypatch, capsys, "recipe", "check", str(REPO / "recipes/image_demo.yaml"))
    assert code == 0 and out.startswith("ok "), (out, err)


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_recipe_naming_a_broken_modality_is_one_error(name, broken_plugins, tmp_path, monkeypatch, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**tiny_image_recipe(0), "modality": {"name": name}}))
    code, _, err = _cli(monkeypatch, capsys, "recipe", "check", str(path))
    _assert_error(code, err, "modality.name", *BROKEN[name])


@pytest.mark.parametrize("name,expected", [("boomobj", "cannot be imported"),
                                           ("notanobjective", "not a jepa.objective.Objective subclass")])
def test_a_recipe_naming_a_broken_objective_is_one_error(name, expected, broken_plugins, good_recipe, monkeypatch, capsys):
    code, _, err = _cli(monkeypatch, capsys, "recipe", "check", str(good_recipe), "--set", f"objective.name={name}")
    _assert_error(code, err, "objective.name", "hostile-plugins", f"jepa.objectives:{name} = ", expected)
