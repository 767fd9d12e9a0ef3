"""`jepa eval`: probes that can fail, sources of every kind, reports, and the messages users see.

The streaming machinery itself (grid heads, streamed k-NN, memory plan, peak memory, folder
input) is pinned in ``tests/test_eval_streaming.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from jepa.cli import app
from jepa.eval.evaluate import EvalSettings, evaluate_shards
from jepa.eval.grid import Grid, parse_floats
from jepa.eval.heads import AttentiveGrid, LinearGrid
from jepa.eval.knn import StreamingKNN
from jepa.eval.probes import linear_probe_scores, low_shot_indices, topk_accuracy
from jepa.eval.training import score_grid, train_grid
from jepa.sources import load_source
from jepa.export import export
from knn_reference import knn_scores
from tar_files import write_tar
from tiny_recipes import tiny_image_recipe


TINY = tiny_image_recipe(1)


def _quiet(_line: str) -> None:
    pass


# --------------------------------------------------------------------------- probes on synthetic features


def _clusters(num_classes: int, per_class: int, dim: int, gen: torch.Generator, centers: torch.Tensor,
              noise: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(num_classes).repeat(per_class)
    return centers[labels] + noise * torch.randn(labels.numel(), dim, generator=gen), labels


@pytest.fixture(scope="module")
def separable():
    """10 Gaussian clusters in 32-D (well separated): train 40 / val 20 per class; and the same
    labels on features without any class signal (pure noise), the null case."""
    gen = torch.Generator().manual_seed(0)
    centers = 3.0 * torch.randn(10, 32, generator=gen)
    train = _clusters(10, 40, 32, gen, centers)
    val = _clusters(10, 20, 32, gen, centers)
    noise = (torch.randn(400, 32, generator=gen), train[1]), (torch.randn(200, 32, generator=gen), val[1])
    return train, val, noise


def _tokens(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Tokens whose mean carries the class: 8 noisy copies of each feature vector."""
    return x[:, None, :] + 2.0 * torch.randn(x.shape[0], 8, x.shape[1], generator=gen)


def _grid_scores(heads, grid: Grid, x: torch.Tensor, labels: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor,
                 epochs: int) -> dict:
    """Train a grid on in-memory inputs (shuffled minibatches of 64) and score it on the validation inputs."""
    from jepa.eval.features import progress_bar

    def feed(epoch: int):
        order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(epoch))
        return ((x[i], labels[i]) for i in order.split(64))

    with progress_bar() as progress:
        train_grid(heads, grid, feed, epochs=epochs, steps_per_epoch=-(-x.shape[0] // 64), warmup_epochs=0,
                   device=torch.device("cpu"), precision="fp32", progress=progress, description="test")
    return score_grid(heads, [(xv, yv)], (1,), torch.device("cpu"), "fp32")


@pytest.mark.parametrize("protocol", ["logreg", "knn", "streamed-knn", "linear", "attentive"])
def test_probe_learns_separable_classes_and_is_at_chance_without_signal(separable, protocol):
    train, val, noise = separable

    def score(split_t, split_v):
        (xt, yt), (xv, yv) = split_t, split_v
        if protocol == "logreg":
            return topk_accuracy(linear_probe_scores(xt, yt, xv, 10, max_iter=50)[0], yv)[1]
        if protocol == "knn":
            return topk_accuracy(knn_scores(xt, yt, xv, 10, k=10), yv)[1]
        if protocol == "streamed-knn":
            knn = StreamingKNN(xv, k=10)
            for i in torch.arange(xt.shape[0]).split(37):
                knn.add(xt[i], yt[i])
            return topk_accuracy(knn.scores(10), yv)[1]
        torch.manual_seed(0)
        grid = Grid((3e-3, 1e-2), (1e-2,))
        if protocol == "linear":
            return max(_grid_scores(LinearGrid(2, 32, 10), grid, xt, yt, xv, yv, 15)["top1"])
        gen = torch.Generator().manual_seed(1)
        heads = AttentiveGrid(2, 32, 10, attn_heads=2, generator=torch.Generator().manual_seed(0))
        return max(_grid_scores(heads, grid, _tokens(xt, gen), yt, _tokens(xv, gen), yv, 15)["top1"])

    learned = score(train, val)
    chance = score(*noise)
    assert learned >= 0.9, f"{protocol}: {learned:.3f} on separable clusters"
    # 200 val samples, 10 balanced classes: chance is 0.1 with std ~0.02 (the best of 2 heads: a little higher).
    assert chance <= 0.2, f"{protocol}: {chance:.3f} without class signal"


def test_topk_accuracy_counts_exactly():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.1, 0.5, 0.4], [0.3, 0.3, 0.4]])
    labels = torch.tensor([0, 0, 2, 1])
    acc = topk_accuracy(scores, labels, (1, 2))
    assert acc == {1: 0.25, 2: 0.5}


def test_knn_votes_with_temperature_weights():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    votes = knn_scores(train, labels, torch.tensor([[2.0, 0.0]]), 3, k=2, temperature=0.5)
    sim = torch.nn.functional.normalize(torch.tensor([[0.9, 0.1]]), dim=1)[0, 0].item()
    expected = torch.tensor([[torch.exp(torch.tensor(1.0 / 0.5)).item(), torch.exp(torch.tensor(sim / 0.5)).item(), 0.0]])
    assert torch.allclose(votes, expected, rtol=1e-5)
    streamed = StreamingKNN(torch.tensor([[2.0, 0.0]]), k=2, temperature=0.5)
    for i in range(4):  # one training sample at a time: the running top-2 must end with the same votes
        streamed.add(train[i:i + 1], labels[i:i + 1])
    assert torch.allclose(streamed.scores(3), expected, rtol=1e-5)


def test_low_shot_keeps_a_seeded_fraction_of_every_class():
    labels = torch.cat([torch.full((100,), 0), torch.full((50,), 1), torch.full((3,), 2)])
    idx = low_shot_indices(labels, 0.1, seed=0)
    assert torch.bincount(labels[idx]).tolist() == [10, 5, 1]  # rare classes keep at least one
    assert torch.equal(idx, low_shot_indices(labels, 0.1, seed=0))
    assert not torch.equal(idx, low_shot_indices(labels, 0.1, seed=1))
    assert idx.unique().numel() == idx.numel()
    with pytest.raises(ValueError, match="--low-shot must be a fraction in"):
        low_shot_indices(labels, 1.5)


@pytest.mark.parametrize("bad, message", [
    (dict(protocols=("linear", "svm")), "--protocol: unknown 'svm'; choose from linear, linear4, attentive, knn, logreg, logreg4"),
    (dict(protocols=()), "--protocol: unknown empty list"),
    (dict(k=0), "--k must be >= 1"),
    (dict(low_shot=0.0), "--low-shot must be a fraction"),
    (dict(epochs=0), "--epochs must be >= 1"),
    (dict(device="gpu0"), "--device 'gpu0' is not a device name"),
    (dict(augment="mixup"), "--augment 'mixup': choose from none, crop, flip, crop+flip"),
    (dict(holdout=0.0), "--holdout 0 leaves no held-out split to choose among the 21 heads of linear"),
    (dict(linear_lrs=(0.0,)), "learning rates > 0"),
    (dict(batch_size=1), "--batch-size must be >= 2"),
])
def test_bad_settings_are_named(bad, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        EvalSettings(**bad)


def test_grid_flags_parse_and_name_the_flag():
    assert parse_floats("1e-3, 3e-3", "--linear-lrs") == (1e-3, 3e-3)
    with pytest.raises(ValueError, match="--linear-wds 'a,b': give comma-separated numbers"):
        parse_floats("a,b", "--linear-wds")
    assert Grid((1.0, 2.0), (0.0, 0.5, 1.0)).pairs()[4] == (2.0, 0.5)  # lr-major


# --------------------------------------------------------------------------- sources and shards


@pytest.fixture(scope="module")
def tiny_recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory) -> Path:
    from jepa.modalities.image.demo_data import write_demo_dataset

    root = tmp_path_factory.mktemp("demo")
    write_demo_dataset(root, num_images=100, num_val=60, size=32, max_count=50, show_progress=False)
    return root


def _patterns(root: Path) -> tuple[str, str]:
    return str(root / "train" / "train-{000000..000001}.tar"), str(root / "val" / "val-{000000..000001}.tar")


def _write_models_pt(path: Path, recipe: dict, encoder_state: dict, target_state: dict, step: int = 5) -> Path:
    """A weights file in the layout `jepa train` writes (format_version 1)."""
    from jepa.checkpoint import FORMAT_VERSION

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format_version": FORMAT_VERSION, "encoder": encoder_state, "predictor": {},
                "target_encoder": target_state, "step": step, "recipe": recipe}, path)
    return path


def _recipe_dict(tiny_recipe: Path) -> dict:
    from jepa.recipe import load_recipe

    return load_recipe(tiny_recipe).model_dump(mode="json")


def test_eval_on_shards_random_checkpoint_and_export_agree(tiny_recipe, demo_shards, tmp_path):
    train_pat, val_pat = _patterns(demo_shards)
    settings = EvalSettings(protocols=("logreg", "logreg4", "knn", "linear"), lbfgs_iters=30, epochs=3, batch_size=32,
                            device="cpu")
    random_src = load_source(f"random:{tiny_recipe}")
    report = evaluate_shards(random_src, train_pat, val_pat, settings)
    assert report.num_train == 100 and report.num_val == 60 and report.num_classes == 10
    assert report.source_kind == "random" and all(r.top5 is not None for r in report.results)
    assert report.results[1].settings["features"] == 128  # logreg4 on a depth-2 encoder: 2 layers x 64
    assert report.results[3].num_train == 90  # linear: 10 % held out (1 per class) to choose the head

    # The same weights as a checkpoint (target = those weights, context = other ones) and as TorchScript.
    other = load_source(f"random:{tiny_recipe}").encoder
    torch.nn.init.normal_(other.blocks[0].attn.qkv.weight)
    models = _write_models_pt(tmp_path / "run" / "models.pt", _recipe_dict(tiny_recipe),
                              other.state_dict(), random_src.encoder.state_dict())
    ckpt_src = load_source(str(models))
    assert ckpt_src.kind == "checkpoint" and ckpt_src.step == 5 and ckpt_src.which == "target"
    export(ckpt_src, tmp_path / "enc.pt", log=_quiet)
    ts_src = load_source(str(tmp_path / "enc.pt"), trust_torchscript=True)
    assert ts_src.kind == "torchscript" and ts_src.step == 5 and ts_src.depth == 2

    def numbers(r, protocols):
        return [(x.protocol, x.top1, x.top5, x.settings.get("lr")) for x in r.results if x.protocol in protocols]

    again = evaluate_shards(ckpt_src, train_pat, val_pat, settings)  # same weights, same seeds: same numbers
    assert numbers(again, settings.protocols) == numbers(report, settings.protocols)
    deterministic = ("logreg", "logreg4", "knn")  # TorchScript may differ in the last float bits
    again = evaluate_shards(ts_src, train_pat, val_pat, settings)
    assert numbers(again, deterministic) == numbers(report, deterministic)
    context = load_source(str(models), which="context")
    assert not torch.equal(context.encoder.blocks[0].attn.qkv.weight, ckpt_src.encoder.blocks[0].attn.qkv.weight)
    with pytest.raises(ValueError, match="holds the target encoder, not the context one"):
        load_source(str(tmp_path / "enc.pt"), which="context", trust_torchscript=True)


def test_cpu_evaluation_keeps_freed_memory_in_the_process(tiny_recipe, demo_shards, monkeypatch):
    """As CPU training does (jepa.host_memory): the same activations every batch would otherwise fault in anew."""
    import importlib

    evaluate_mod = importlib.import_module("jepa.eval.evaluate")  # the module (the package exports a function of its name)
    calls = []
    monkeypatch.setattr(evaluate_mod, "retain_freed_memory", lambda: calls.append(1) or True)
    train_pat, val_pat = _patterns(demo_shards)
    evaluate_shards(load_source(f"random:{tiny_recipe}"), train_pat, val_pat,
                    EvalSettings(protocols=("knn",), batch_size=50, device="cpu"))
    assert calls == [1]


def test_passes_read_each_chosen_sample_once_and_store_matches_the_encoder(tiny_recipe, demo_shards):
    from jepa.eval.features import PooledStore, fill_pooled, progress_bar
    from jepa.eval.reader import PassSpec, ShardData

    src = load_source(f"random:{tiny_recipe}")
    data = ShardData(_patterns(demo_shards)[0], src.modality)
    index = data.scan()
    assert index.num_samples == 100 and index.num_classes == 10
    keep = torch.arange(100) % 3 == 0
    seen = torch.cat([idx for _, _, idx in data.passes(PassSpec(16, keep))])
    assert seen.tolist() == keep.nonzero().flatten().tolist()  # file order, each kept sample once
    shuffled = torch.cat([idx for _, _, idx in data.passes(PassSpec(16, keep, shuffle_seed=3), num_workers=2)])
    assert sorted(shuffled.tolist()) == seen.tolist()  # two loader processes: still each kept sample once

    def order(epoch: int, seed: int = 7) -> list[int]:
        spec = PassSpec(16, None, seed, epoch, shuffle_buffer=20, open_shards=2)
        return torch.cat([idx for _, _, idx in data.passes(spec)]).tolist()

    assert sorted(order(0)) == list(range(100)) and order(0) != list(range(100))
    assert order(0) == order(0) and order(0) != order(1) and order(0) != order(0, seed=8)

    x_eval, y, idx = next(data.passes(PassSpec(8)))
    assert torch.equal(y, index.labels_N[idx])
    x_crop, _, _ = next(data.passes(PassSpec(8, augment="crop")))
    x_flip, _, _ = next(data.passes(PassSpec(8, augment="flip")))
    assert not torch.allclose(x_crop, x_eval)
    flipped = (x_flip != x_eval).flatten(1).any(1)
    assert 0 < flipped.sum() < 8 and torch.equal(x_flip[flipped], x_eval[flipped].flip(-1))

    store = PooledStore(100, 128)
    with progress_bar() as progress:
        fill_pooled(store, data.passes(PassSpec(16, keep)), src.layers, 2, torch.device("cpu"), "fp32", progress,
                    "test", None)
    assert torch.equal(store.filled_N, keep)
    with torch.no_grad():
        ref = src.encoder(x_eval).mean(1)
    assert torch.allclose(store.rows(torch.tensor([0, 3]), slice(64, None)), ref[[0, 3]], atol=1e-5)
    same = EvalSettings(protocols=("knn",), k=1, device="cpu")
    report = evaluate_shards(src, _patterns(demo_shards)[0], _patterns(demo_shards)[0], same)
    assert report.results[0].top1 == 1.0  # every sample is its own nearest neighbour


def _unlabelled_shard(path: Path) -> Path:
    from torchvision.io import encode_png

    data = encode_png(torch.zeros(3, 32, 32, dtype=torch.uint8)).numpy().tobytes()
    return write_tar(path, {f"img{i:03d}.png": data for i in range(3)})


def test_bad_inputs_give_one_clear_message(tiny_recipe, demo_shards, tmp_path):
    train_pat, val_pat = _patterns(demo_shards)
    src = load_source(f"random:{tiny_recipe}")
    settings = EvalSettings(protocols=("knn",))

    with pytest.raises(ValueError, match="no such run directory"):
        load_source(str(tmp_path / "no_run"))
    with pytest.raises(ValueError, match="no complete checkpoint"):
        load_source(str(tmp_path))

    # Weights of a narrower ViT under a recipe that says width 64.
    narrow = {**TINY, "modality": {**TINY["modality"], "encoder": {**TINY["modality"]["encoder"], "embed_dim": 32}}}
    narrow_path = tmp_path / "narrow.yaml"
    narrow_path.write_text(yaml.safe_dump(narrow))
    narrow_state = load_source(f"random:{narrow_path}").encoder.state_dict()
    models = _write_models_pt(tmp_path / "bad" / "models.pt", _recipe_dict(tiny_recipe), narrow_state, narrow_state)
    with pytest.raises(ValueError, match=r"vs ViT-Ti/8 @32 \(recipe 'tiny'\): the weights do not fit the model: shape mismatches"):
        load_source(str(models))

    unlabelled = _unlabelled_shard(tmp_path / "unlabelled" / "u-000000.tar")
    with pytest.raises(ValueError, match="shards have no labels"):
        evaluate_shards(src, str(unlabelled), val_pat, settings)
    with pytest.raises(ValueError, match="shards do not exist"):
        evaluate_shards(src, train_pat, str(tmp_path / "nothing-{0..3}.tar"), settings)

    export(src, tmp_path / "pooled.pt", pooled=True, log=_quiet)
    with pytest.raises(ValueError, match="pooled export"):
        load_source(str(tmp_path / "pooled.pt"), trust_torchscript=True)

    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.png").write_bytes(b"not read")
    with pytest.raises(ValueError, match="holds files but no class sub-folders, so it has no labels"):
        evaluate_shards(src, str(flat), val_pat, settings)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="a folder with neither shards .* nor class sub-folders"):
        evaluate_shards(src, train_pat, str(tmp_path / "empty"), settings)

    runner = CliRunner()
    res = runner.invoke(app, ["eval", str(tmp_path / "no_run"), "--train-shards", train_pat, "--val-shards", val_pat])
    assert res.exit_code == 2 and "no such run directory" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["eval", f"random:{tiny_recipe}", "--train-shards", str(unlabelled),
                              "--val-shards", val_pat])
    assert res.exit_code == 2 and "shards have no labels" in res.output


def test_cli_prints_tables_and_writes_json(tiny_recipe, demo_shards, tmp_path):
    train_pat, val_pat = _patterns(demo_shards)
    out = tmp_path / "report.json"
    res = CliRunner().invoke(app, ["eval", f"random:{tiny_recipe}", "--train-data", train_pat, "--val-data", val_pat,
                                   "--protocol", "knn,linear", "--k", "5", "--epochs", "2", "--low-shot", "0.5",
                                   "--linear-lrs", "1e-3,1e-2", "--linear-wds", "0", "--device", "cpu",
                                   "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "knn" in res.output and "top-1 %" in res.output and "linear: every head" in res.output
    data = json.loads(out.read_text())
    assert data["report_version"] == 2 and [r["protocol"] for r in data["results"]] == ["knn", "linear"]
    assert data["num_train"] == 50 and data["low_shot"] == 0.5 and data["results"][0]["settings"]["k"] == 5
    linear = data["results"][1]
    assert [(row["lr"], row["wd"]) for row in linear["grid"]] == [(1e-3, 0.0), (1e-2, 0.0)]
    chosen = max(linear["grid"], key=lambda row: (row["holdout_top1"], -row["holdout_loss"]))
    assert (linear["settings"]["lr"], linear["settings"]["wd"]) == (chosen["lr"], chosen["wd"])
    assert linear["top1"] == chosen["val_top1"]
    assert any(p["what"] == "linear" for p in data["memory_plan"])


def test_help_states_every_protocol():
    res = CliRunner().invoke(app, ["eval", "--help"])
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    from jepa.eval.protocols import PROTOCOLS

    for needle in ("linear:", "linear4:", "attentive:", "knn:", "logreg:", "logreg4:", "held-out",
                   "docs/eval_protocols.md", "--attentive-depth", "--augment", "--feature-cache"):
        assert needle in text, needle
    for name in PROTOCOLS:  # every registered protocol has its paragraph, from its declaration
        assert f"{name}: " in text, name


# --------------------------------------------------------------------------- the demo, end to end (slow)

ROOT = Path(__file__).resolve().parents[1]


def _demo_against_random_init(tmp_path: Path, recipe_name: str, seed: int, *sets: str) -> tuple[float, float, float, float, dict]:
    """`jepa demo-data` + `jepa train recipes/RECIPE_NAME --set seed=SEED SETS...`, then linear and k-NN
    probes (1000 val images, one standard error about 1.2 points) of the trained encoder and of the same
    architecture at random init with the same seed: ``(linear, knn, random linear, random knn, summary)``."""
    import subprocess
    import sys

    recipe = ROOT / "recipes" / recipe_name
    data, run = tmp_path / "demo", tmp_path / "run"
    cli = [sys.executable, "-m", "jepa.cli"]
    subprocess.run([*cli, "demo-data", str(data)], check=True, timeout=600)
    overrides = [f"run_dir={run}", f"seed={seed}", f"data.train_shards={data}/train/train-{{000000..000009}}.tar", *sets]
    subprocess.run([*cli, "train", str(recipe), *(a for o in overrides for a in ("--set", o))], check=True, timeout=5400)
    seeded = tmp_path / "random_init.yaml"
    seeded.write_text(yaml.safe_dump({**yaml.safe_load(recipe.read_text()), "seed": seed}))
    train_pat, val_pat = f"{data}/train/train-{{000000..000009}}.tar", f"{data}/val/val-{{000000..000001}}.tar"
    settings = EvalSettings(protocols=("linear", "knn"), batch_size=128, seed=seed)
    trained = evaluate_shards(load_source(str(run)), train_pat, val_pat, settings)
    baseline = evaluate_shards(load_source(f"random:{seeded}"), train_pat, val_pat, settings)
    summary = {r.protocol: (round(r.top1, 3), round(b.top1, 3)) for r, b in zip(trained.results, baseline.results)}
    print("top-1 (trained, random init):", summary)
    (linear, knn), (base_linear, base_knn) = (r.top1 for r in trained.results), (b.top1 for b in baseline.results)
    return linear, knn, base_linear, base_knn, summary


@pytest.mark.slow
def test_demo_pretraining_beats_random_init(tmp_path):
    """`bash tools/demo.sh --objective ijepa`: recipes/image_demo.yaml's I-JEPA (780 steps), seed 0."""
    linear, knn, base_linear, base_knn, summary = _demo_against_random_init(tmp_path, "image_demo.yaml", 0)
    # Measured (README, grey levels with random polarity): seed 0 linear 46.5 % vs 27.8 % at random init,
    # k-NN 14.8 % vs 14.1 %; seed 1 linear 44.9 vs 32.5, k-NN 12.2 vs 14.0. One standard error of a
    # difference on 1000 images is about 2 points: the pins are the linear margin less ~4 SE (+10 points)
    # and "k-NN not clearly worse" (k-NN does not improve at this budget; README).
    assert linear >= base_linear + 0.10, summary
    assert knn >= base_knn - 0.03, summary


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_lejepa_demo_beats_random_init_by_the_issue_margins(tmp_path, seed):
    """`bash tools/demo.sh`'s default, recipes/image_demo_lejepa.yaml (LeJEPA, 390 steps): linear at
    least 15 points and k-NN at least 10 points above random init with the same seed (the objectives
    issue's margins; measured in the README: +25.5 / +34.3 linear, +18.9 / +33.1 k-NN)."""
    linear, knn, base_linear, base_knn, summary = _demo_against_random_init(
        tmp_path, "image_demo_lejepa.yaml", seed, "eval.every_steps=null", "checkpoint.keep_best=null")
    assert linear >= base_linear + 0.15, summary
    assert knn >= base_knn + 0.10, summary
