"""The modality contract, pinned for every registered modality (``jepa.interfaces.Modality``).

Parametrised over ``registry.available()`` at collection time: the built-in image modality, the
test toy (``conftest.py``), the example plugin when installed (``examples/jepa-timeseries``;
``tools/env.sh`` installs it), video, and any other installed plugin. Known modalities run with the
tiny configs of :data:`TINY_OVERRIDES` (their defaults are paper-sized ViTs); any other runs with its
defaults, so a plugin under development keeps its defaults small or adds a row here.

Run it against your own plugin: install the plugin into the environment and
``python -m pytest tests/test_modality_contract.py -k NAME``.

Per modality: registration and config; encoder shapes (all tokens and keep-indexed) and
``forward_layers``; predictor shapes; only the online model gets gradients through the core's
``JEPA`` / ``target_tokens`` / ``latent_loss``; mask sampler determinism under a seeded generator,
index ranges and context/target disjointness; ``decode`` of corrupt samples raises ``ValueError``;
the default config passes ``check``; ``write_demo_data`` shards decode into training/evaluation
views of ``example_input``'s shape; TorchScript export round trip equals eager; two training steps
from generated shards. Optional hooks a modality lacks skip with the ``MissingHookError`` reason.
"""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from jepa import registry
from jepa.objectives import OBJECTIVES
from jepa.config import ModalityConfig
from jepa.data import expand_shards, read_shard
from jepa.interfaces import DemoDataSpec, Modality, MissingHookError, as_mask_pairs
from jepa.loss import latent_loss, mean_over_pairs
from jepa.model import JEPA, target_tokens
from jepa.recipe import apply_overrides, parse_recipe
from tiny_recipes import tiny_image_recipe

MODALITIES = [info.name for info in registry.available()]

#: Tiny modality sections (without ``name``) per known modality; unknown names use their defaults.
TINY_OVERRIDES: dict[str, dict[str, Any]] = {
    "image": {k: v for k, v in tiny_image_recipe(0)["modality"].items() if k != "name"},
    "video": {
        "encoder": {"arch": "vit_tiny", "patch_size": 8, "tubelet_size": 2, "embed_dim": 48, "depth": 2, "num_heads": 4},
        "predictor": {"embed_dim": 32, "depth": 1, "num_heads": 4},
        "input": {"num_frames": 4, "frame_step": 1, "crop_size": 32},
    },
    "timeseries": {
        "encoder": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4},
        "predictor": {"embed_dim": 16, "depth": 1, "num_heads": 4},
        "input": {"seq_len": 64},
        "mask": {"num_targets": 2, "target_scale": [0.15, 0.25], "min_context": 2},
    },
}

DEMO_SPEC = DemoDataSpec(num_train=16, num_val=8, num_classes=2, max_count=8, workers=1, seed=0)
BATCH = 4


def tiny_section(name: str) -> dict[str, Any]:
    return {"name": name, **copy.deepcopy(TINY_OVERRIDES.get(name, {}))}


@functools.cache
def tiny(name: str) -> Modality:
    """The modality ``name`` bound to its tiny config (validated like a recipe section)."""
    cls = registry.get(name)
    return cls(cls.config_model.model_validate(tiny_section(name)))


def tiny_recipe(name: str, run_dir: Path, *overrides: str) -> dict[str, Any]:
    """A raw 2-step CPU recipe for ``name`` on the synthetic source (``overrides``: dotted key=value)."""
    raw = {
        "name": f"contract-{name}", "seed": 0, "run_dir": str(run_dir), "max_steps": 2,
        "modality": tiny_section(name),
        "data": {"source": "synthetic", "global_batch_size": BATCH, "samples_per_epoch": 4 * BATCH,
                 "num_workers": 0, "shuffle_buffer": 8},
        "optim": {"epochs": 1, "warmup_epochs": 0},
        "engine": {"precision": "fp32"},
        "log": {"every_steps": 1},
        "checkpoint": {"every_steps": 1000},
    }
    return apply_overrides(raw, list(overrides))


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory):
    """``demo_shards(name)`` -> (folder, manifests) of the modality's ``write_demo_data`` (written once)."""
    made: dict[str, Any] = {}

    def get(name: str) -> tuple[Path, dict[str, Any]]:
        if name not in made:
            out = tmp_path_factory.mktemp(f"demo-{name}")
            try:
                made[name] = (out, tiny(name).write_demo_data(out, DEMO_SPEC))
            except MissingHookError as exc:
                made[name] = exc
        if isinstance(made[name], MissingHookError):
            pytest.skip(str(made[name]))
        return made[name]

    return get


pytestmark = pytest.mark.parametrize("name", MODALITIES)


# --------------------------------------------------------------------------- registration and config


def test_registered_class_and_default_config_pass_check(name):
    cls = registry.get(name)
    assert issubclass(cls, Modality) and cls.name == name
    assert issubclass(cls.config_model, ModalityConfig) and cls.config_model().name == name
    default = cls()
    assert default.cfg == cls.config_model()
    assert default.check() == [], f"the default {name} config fails its own check"
    assert tiny(name).check() == [], f"the contract suite's tiny {name} config fails check (fix TINY_OVERRIDES)"
    assert isinstance(default.describe(), str) and default.describe()
    flops = default.train_flops_per_sample()
    assert flops is None or (math.isfinite(flops) and flops > 0)


# --------------------------------------------------------------------------- models


def test_encoder_and_predictor_shapes(name):
    modality = tiny(name)
    torch.manual_seed(0)
    encoder, predictor, sampler = modality.build_encoder(), modality.build_predictor(), modality.build_mask_sampler()
    g = seeded()
    x = modality.example_input(BATCH, g)
    pairs = as_mask_pairs(sampler(BATCH, g))  # one (context, target) pair, or several (V-JEPA)
    n, d = sampler.num_tokens, encoder.embed_dim
    full_BND = encoder(x)
    assert full_BND.shape == (BATCH, n, d)
    for i, masks in enumerate(pairs):
        b, m, t = masks.target_idx_BMT.shape
        k = masks.context_idx_BK.shape[1]
        assert x.shape[0] == b == BATCH and m >= 1 and t >= 1 and k >= 1
        context_BKD = encoder(x, masks.context_idx_BK)
        assert context_BKD.shape == (BATCH, k, d)
        for j in range(m):
            pred = predictor(context_BKD, masks.context_idx_BK, masks.target_idx_BMT[:, j], mask_index=i)
            assert pred.shape == (BATCH, t, d)

    try:
        layers = encoder.forward_layers(x, 2 if getattr(encoder, "depth", 1) >= 2 else 1)
    except NotImplementedError:
        return  # optional: frozen-feature evaluation then uses the last layer only
    assert all(h.shape == (BATCH, n, d) for h in layers)
    torch.testing.assert_close(layers[-1], full_BND)


def test_only_the_online_model_gets_gradients_through_the_core(name):
    modality = tiny(name)
    torch.manual_seed(0)
    model = JEPA(modality.build_encoder(), modality.build_predictor())
    target = copy.deepcopy(model.encoder)  # requires_grad left on: target_tokens itself must cut the graph
    g = seeded(1)
    x = modality.example_input(BATCH, g)
    pairs = as_mask_pairs(modality.build_mask_sampler()(BATCH, g))

    losses = []
    for i, masks in enumerate(pairs):
        targets = target_tokens(target, x, masks)
        predictions = model(x, masks, mask_index=i)
        b, m, t = masks.target_idx_BMT.shape
        assert predictions.shape == targets.shape == (b * m, t, model.encoder.embed_dim)
        assert not targets.requires_grad
        losses.append(latent_loss(predictions, targets))
    loss = mean_over_pairs(losses)
    assert torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing, f"online parameters without a finite gradient: {missing}"
    assert all(p.grad is None for p in target.parameters()), "the target encoder received gradients"


# --------------------------------------------------------------------------- masks


def test_mask_sampler_is_seeded_in_range_and_disjoint(name):
    sampler = tiny(name).build_mask_sampler()
    n = sampler.num_tokens
    pairs = as_mask_pairs(sampler(8, seeded(7)))
    again = as_mask_pairs(sampler(8, seeded(7)))
    assert len(pairs) == len(again)
    for masks, same in zip(pairs, again):
        assert torch.equal(masks.context_idx_BK, same.context_idx_BK)
        assert torch.equal(masks.target_idx_BMT, same.target_idx_BMT)
    others = [as_mask_pairs(sampler(8, seeded(s)))[0] for s in range(3)]
    assert any(not torch.equal(o.target_idx_BMT, pairs[0].target_idx_BMT)
               or not torch.equal(o.context_idx_BK, pairs[0].context_idx_BK)
               for o in others), "the sampler ignores its generator"
    for masks in pairs:
        _check_pair_in_range_and_disjoint(masks, n)


def _check_pair_in_range_and_disjoint(masks, n: int) -> None:
    context_BK, target_BMT = masks.context_idx_BK, masks.target_idx_BMT
    assert context_BK.dtype == target_BMT.dtype == torch.int64
    for idx in (context_BK, target_BMT):
        assert int(idx.min()) >= 0 and int(idx.max()) < n
    rows = torch.arange(8)[:, None]
    context_BN = torch.zeros(8, n, dtype=torch.int64).index_put_((rows, context_BK), torch.tensor(1), accumulate=True)
    assert int(context_BN.max()) == 1, "a context row repeats a token"
    target_BN = torch.zeros(8, n, dtype=torch.bool)
    target_BN[rows, target_BMT.flatten(1)] = True
    assert not bool((context_BN.bool() & target_BN).any()), "context and targets overlap"


# --------------------------------------------------------------------------- data


def test_decode_of_a_corrupt_sample_raises_value_error(name):
    modality = tiny(name)
    with pytest.raises(ValueError):
        modality.decode({"__key__": "empty", "__url__": "contract"})
    try:
        keys = sorted(set(modality.file_suffixes().values()))
    except MissingHookError:
        keys = []
    for key in keys:
        with pytest.raises(ValueError):
            modality.decode({"__key__": "corrupt", "__url__": "contract", key: b"\x00\x01 not a sample \xff" * 4})


def test_demo_data_decodes_into_views_of_the_example_shape(name, demo_shards):
    modality = tiny(name)
    out, manifests = demo_shards(name)
    assert set(manifests) == {"train", "val"}
    assert (manifests["train"].total, manifests["val"].total) == (DEMO_SPEC.num_train, DEMO_SPEC.num_val)
    assert manifests["train"].classes is not None and len(manifests["train"].classes) == DEMO_SPEC.num_classes
    samples = [s for url in expand_shards(str(out / "train")) for s in read_shard(url)]
    assert len(samples) == DEMO_SPEC.num_train
    labels = sorted({int(bytes(s["cls"]).decode()) for s in samples})
    assert labels == list(range(DEMO_SPEC.num_classes))
    items = [modality.decode(s) for s in samples[:BATCH]]
    expected = modality.example_input(BATCH).shape
    view = modality.finish_batch(modality.train_batch(items, seeded(3)))  # what the training loop feeds the encoder
    assert view.shape == expected and view.dtype == torch.float32 and bool(torch.isfinite(view).all())
    assert torch.equal(view, modality.finish_batch(modality.train_batch(items, seeded(3)))), \
        "the training view is not a function of the generator"
    evaluation = modality.eval_batch(items)
    assert evaluation.shape == expected and torch.equal(evaluation, modality.eval_batch(items))


# --------------------------------------------------------------------------- export


def test_torchscript_export_round_trip_equals_eager(name, tmp_path):
    from jepa.export import EXPORT_TOLERANCE, export_torchscript
    from jepa.sources import load_source, quiet_jit_deprecation, read_export_metadata

    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(tiny_recipe(name, tmp_path / "run")))
    source = load_source(f"random:{recipe_file}")
    out = tmp_path / "encoder.pt"
    export_torchscript(source, out, log=lambda line: None)

    meta = read_export_metadata(out)
    assert meta["modality_name"] == name and meta["modality"] == tiny(name).cfg.model_dump(mode="json")
    for key, value in source.modality.export_metadata(source.encoder).items():
        assert meta[key] == value, f"export metadata {key!r} differs from the modality's export_metadata"
    with quiet_jit_deprecation():
        reloaded = load_source(str(out), trust_torchscript=True)  # what `jepa eval` reads
        plain = torch.jit.load(str(out))  # what a user without jepa does
    assert reloaded.kind == "torchscript" and reloaded.modality.cfg == source.modality.cfg
    with torch.no_grad():
        for x in source.modality.export_inputs(source.encoder, seeded(5)):
            eager = source.encoder(x)
            assert (reloaded.encoder(x) - eager).abs().max().item() <= EXPORT_TOLERANCE
            assert (plain(x) - eager).abs().max().item() <= EXPORT_TOLERANCE


# --------------------------------------------------------------------------- training


def test_two_training_steps_from_generated_shards(name, demo_shards, tmp_path):
    from jepa.monitor import read_metrics
    from jepa.train import train

    out, _ = demo_shards(name)
    raw = tiny_recipe(name, tmp_path / "run", "data.source=shards", f"data.train_shards={out / 'train'}")
    result = train(parse_recipe(raw, f"contract recipe for {name}"))
    assert result.step == 2 and result.stopped_by == "finished"
    losses = [r["loss"] for r in read_metrics(result.run_dir)]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)


# --------------------------------------------------------------------------- every objective


#: Tiny objective sections (without ``name``) per known objective; unknown names use their defaults.
TINY_OBJECTIVES: dict[str, dict[str, Any]] = {
    "ijepa": {"ema": {"momentum": 0.9}},
    "lejepa": {"num_local_views": 1, "num_slices": 16, "projector": {"hidden_dim": 32, "out_dim": 8}},
}


@pytest.mark.parametrize("objective", [info.name for info in OBJECTIVES.available()])
def test_every_objective_trains_exports_and_evaluates(name, objective, demo_shards, tmp_path):
    """Two training steps of each objective on the modality's generated shards, then `jepa export`
    and `jepa eval` (k-NN) of the run, through the CLI."""
    from typer.testing import CliRunner

    from jepa.cli import app
    from jepa.monitor import read_metrics
    from jepa.train import train

    out, _ = demo_shards(name)
    raw = tiny_recipe(name, tmp_path / "run", "data.source=shards", f"data.train_shards={out / 'train'}")
    raw["objective"] = {"name": objective, **copy.deepcopy(TINY_OBJECTIVES.get(objective, {}))}
    result = train(parse_recipe(raw, f"contract recipe for {name} / {objective}"))
    records = read_metrics(result.run_dir)
    assert result.step == 2 and [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in records)

    exported = tmp_path / "encoder.pt"
    res = CliRunner().invoke(app, ["export", str(result.run_dir), "--out", str(exported)])
    assert res.exit_code == 0, res.output
    assert exported.is_file()
    report = tmp_path / "eval.json"
    res = CliRunner().invoke(app, ["eval", str(result.run_dir), "--train-shards", str(out / "train"), "--val-shards",
                                   str(out / "val"), "--protocol", "knn", "--json", str(report)])
    assert res.exit_code == 0, res.output
    assert report.is_file()
