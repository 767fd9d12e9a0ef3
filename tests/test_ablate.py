"""The ablation tool (tools/ablate.py): every row of the shipped plans is a valid recipe change, and the
table reports means over seeds with the references first."""

from __future__ import annotations

from pathlib import Path

import pytest

from jepa.recipe import load_recipe
from tool_module import load_tool

ROOT = Path(__file__).resolve().parents[1]
PLANS = sorted((ROOT / "tools" / "ablations").glob("*.yaml"))


def _tool():
    return load_tool("ablate")


@pytest.mark.parametrize("plan_path", PLANS, ids=[p.stem for p in PLANS])
def test_every_row_of_the_plan_is_a_valid_recipe(plan_path):
    tool = _tool()
    plan = tool.load_plan(plan_path)
    assert len(plan["rows"]) >= 4 and len(plan["seeds"]) >= 2
    common = [*plan.get("base_set", []), *plan["budget"]]
    base = load_recipe(ROOT / plan["base"], common)
    for row in plan["rows"]:
        recipe = load_recipe(ROOT / plan["base"], [*common, *row.get("set", [])])
        if row.get("set"):
            assert recipe != base, f"row {row['name']} changes nothing"
        cmd = tool.train_command(plan, row, 7, Path("/x"))
        assert cmd[:3] == ["jepa", "train", plan["base"]] and "seed=7" in cmd and "run_dir=/x" in cmd


def test_table_means_over_seeds_with_references_first(tmp_path):
    tool = _tool()
    plan = {"rows": [{"name": "base", "set": []}, {"name": "lr", "set": ["optim.lr=1e-3"], "why": "higher lr"}]}
    results = {"base": {0: {"linear": 0.30, "knn": 0.10}, 1: {"linear": 0.40, "knn": 0.20}},
               "random": {0: {"linear": 0.2, "knn": 0.1}}}
    lines = tool.table(plan, results).splitlines()
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["random", "pixels", "base", "lr"]
    assert "**35.0** (30.0 / 40.0)" in lines[4] and "**15.0** (10.0 / 20.0)" in lines[4]
    assert lines[5].split("|")[2].strip() == "higher lr" and lines[5].split("|")[3].strip() == "-"
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: x\nrows: []\n")
    with pytest.raises(SystemExit, match="lacks"):
        tool.load_plan(bad)


def test_a_protocol_added_later_is_probed_alone_and_merged(tmp_path, monkeypatch):
    """A finished cell lacking a protocol of the plan gets only that probe, merged into its report; the
    pixel row uses ``pixel_protocols``; nothing is trained again."""
    import json

    tool = _tool()
    calls = []

    def fake_run(cmd, log):
        calls.append(cmd)
        assert cmd[:2] == ["jepa", "eval"], f"only probes may run here, not {cmd[:2]}"
        protocols = cmd[cmd.index("--protocol") + 1].split(",")
        results = [{"protocol": p, "top1": 0.5 + 0.1 * i} for i, p in enumerate(protocols)]
        Path(cmd[cmd.index("--json") + 1]).write_text(json.dumps({"results": results, "total_seconds": 1.0}))

    monkeypatch.setattr(tool, "_run", fake_run)
    plan = {"train_data": "t", "val_data": "v", "protocols": ["linear", "knn", "attentive"],
            "pixel_protocols": ["linear", "knn"], "rows": [{"name": "base"}]}
    cell = tmp_path / "base" / "seed0"
    cell.mkdir(parents=True)
    (cell / "eval.json").write_text(json.dumps({"results": [{"protocol": "linear", "top1": 0.3},
                                                            {"protocol": "knn", "top1": 0.2}]}))
    assert tool.missing_protocols(cell / "eval.json", plan["protocols"]) == ["attentive"]
    top1 = tool.run_cell(plan, {"name": "base"}, 0, tmp_path)
    assert len(calls) == 1 and calls[0][calls[0].index("--protocol") + 1] == "attentive"
    assert top1 == {"linear": 0.3, "knn": 0.2, "attentive": 0.5}
    report = json.loads((cell / "eval.json").read_text())
    assert report["merged"] == [{"protocols": ["attentive"], "total_seconds": 1.0}]
    assert tool.run_cell(plan, {"name": "base"}, 0, tmp_path) == top1 and len(calls) == 1  # complete: no probe
    assert tool.run_reference(plan, "pixels", 0, tmp_path) == {"linear": 0.5, "knn": 0.6}
    assert calls[-1][2] == f"pixels:{cell / 'recipe.yaml'}" and calls[-1][calls[-1].index("--protocol") + 1] == "linear,knn"


def test_demo_knn_diagnosis_measures_what_it_names():
    """tools/demo_knn_diagnosis.py: variance shares and k-NN on features whose answer is known."""
    tool = load_tool("demo_knn_diagnosis")
    import torch

    images, labels, lighter, quadrant = tool.demo_images(400, seed=5, size=32)
    assert images.shape == (400, 3, 32, 32) and set(quadrant.tolist()) == {0, 1, 2, 3}
    assert 0.35 < lighter.float().mean() < 0.65  # random polarity
    g = torch.Generator().manual_seed(0)
    groups = torch.arange(300) % 3
    separated = torch.nn.functional.one_hot(groups, 3).float() * 10 + torch.randn(300, 3, generator=g) * 0.1
    assert tool.between_share(separated, groups) > 0.99
    assert tool.between_share(torch.randn(300, 3, generator=g), groups) < 0.05
    assert tool.knn_top1(separated[:200], groups[:200], separated[200:], groups[200:]) == 1.0
    assert tool.knn_top1(separated[:200], groups[:200], separated[200:], (groups[200:] + 1) % 3) == 0.0

    class Tokens:  # a stand-in source whose last layer is given
        depth = 1

        def __init__(self, fn):
            self.fn = fn

        def layers(self, x, depth):
            return [self.fn(x)]

    pixels = images[:40]
    per_image = torch.randn(40, 1, 16, generator=g)  # every token of an image the same vector
    assert tool.token_similarity(Tokens(lambda x: per_image[: len(x)].expand(-1, 9, -1)), pixels, (0.5,) * 3,
                                 (0.2,) * 3) > 0.99
    own = torch.randn(40, 9, 16, generator=g)  # every token its own vector
    assert abs(tool.token_similarity(Tokens(lambda x: own[: len(x)]), pixels, (0.5,) * 3, (0.2,) * 3)) < 0.1
    shared_offset = own + 100.0  # a constant offset every token shares is centred away
    assert abs(tool.token_similarity(Tokens(lambda x: shared_offset[: len(x)]), pixels, (0.5,) * 3, (0.2,) * 3)) < 0.1
