"""The modality contract suite, importable: a plugin's own tests run it against the installed package.

In a plugin's test folder (``jepa new-modality`` writes this file)::

    # tests/test_audio_contract.py
    from jepa.testing import modality_contract_tests

    globals().update(modality_contract_tests("audio"))

and ``python -m pytest tests`` runs every check below on the installed plugin. Plain pytest, no
plugin to register: :func:`modality_contract_tests` returns the suite's test functions (each
parametrised over the named modalities, the test ids are the names) and the module-scoped fixture
they share, for the calling module's namespace. Call it once per test module. jepa's own
``tests/test_modality_contract.py`` is the same two lines over every registered modality. Needs
pytest (``pip install jepa-forge[dev]``).

Every modality runs with its :meth:`~jepa.interfaces.Modality.tiny_config` (a ``modality:``
section small enough for CPU tests; the default ``{}`` keeps the defaults), every objective with
:data:`TINY_OBJECTIVES` (unknown objectives with their defaults).

Checks, per modality: registration and config (the registered class carries the name, the default
and the tiny config pass ``check``, ``describe`` and the FLOPs are well formed); encoder shapes
(all tokens and keep-indexed) and ``forward_layers``; predictor shapes; only the online model gets
gradients through the core's ``JEPA`` / ``target_tokens`` / ``latent_loss``; mask sampler
determinism under a seeded generator, index ranges and context/target disjointness; ``decode`` of
corrupt samples raises ``ValueError``; ``write_demo_data`` shards decode into training/evaluation
views of ``example_input``'s shape; the TorchScript export equals eager on ``export_inputs`` and
records ``export_metadata``; two training steps from the generated shards; and for every
registered objective, two training steps followed by ``jepa export`` and ``jepa eval`` of the run
through the CLI. Optional hooks a modality lacks skip with the ``MissingHookError`` reason.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml
from typer.testing import CliRunner

from jepa import registry
from jepa.cli import app
from jepa.config import ModalityConfig
from jepa.data import expand_shards, read_shard
from jepa.errors import PluginError
from jepa.export import EXPORT_TOLERANCE, export_torchscript
from jepa.interfaces import DemoDataSpec, MaskSet, MissingHookError, Modality, as_mask_pairs
from jepa.loss import latent_loss, mean_over_pairs
from jepa.model import JEPA, target_tokens
from jepa.monitor import read_metrics
from jepa.objectives import OBJECTIVES
from jepa.recipe import apply_overrides, parse_recipe
from jepa.sources import load_source, quiet_jit_deprecation, read_export_metadata

__all__ = ["modality_contract_tests", "CHECKS", "DEMO_SPEC", "BATCH", "TINY_OBJECTIVES", "tiny", "tiny_section",
           "tiny_recipe", "seeded", "check_pair_in_range_and_disjoint", "demo_shards_of"]

#: What the suite asks ``write_demo_data`` for: a few labelled samples, several shards per split.
DEMO_SPEC = DemoDataSpec(num_train=16, num_val=8, num_classes=2, max_count=8, workers=1, seed=0)
#: Batch size of every check.
BATCH = 4
#: Tiny objective sections (without ``name``) per known objective; unknown names use their defaults.
TINY_OBJECTIVES: dict[str, dict[str, Any]] = {
    "ijepa": {"ema": {"momentum": 0.9}},
    "lejepa": {"num_local_views": 1, "num_slices": 16, "projector": {"hidden_dim": 32, "out_dim": 8}},
}
#: The name of the shared fixture in the calling module (``demo_shards(name)`` -> (folder, manifests)).
DEMO_FIXTURE = "contract_demo_shards"


# --------------------------------------------------------------------------- tiny settings


def tiny_section(name: str) -> dict[str, Any]:
    """The ``modality:`` section the suite runs ``name`` with: its ``tiny_config()`` plus the name."""
    section = registry.get(name).tiny_config()
    if not isinstance(section, dict) or "name" in section:
        raise TypeError(f"{name}: tiny_config() must return a dict of the modality section without 'name', "
                        f"got {section!r}")
    return {"name": name, **copy.deepcopy(section)}


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


def check_pair_in_range_and_disjoint(masks: MaskSet, n: int) -> None:
    """Indices are int64 in ``[0, n)``, no context row repeats a token, context and targets are disjoint."""
    context_BK, target_BMT = masks.context_idx_BK, masks.target_idx_BMT
    rows_count = context_BK.shape[0]
    assert context_BK.dtype == target_BMT.dtype == torch.int64, (context_BK.dtype, target_BMT.dtype)
    for idx in (context_BK, target_BMT):
        assert int(idx.min()) >= 0 and int(idx.max()) < n, f"mask indices outside 0..{n - 1}"
    rows = torch.arange(rows_count)[:, None]
    context_BN = torch.zeros(rows_count, n, dtype=torch.int64).index_put_((rows, context_BK), torch.tensor(1),
                                                                          accumulate=True)
    assert int(context_BN.max()) == 1, "a context row repeats a token"
    target_BN = torch.zeros(rows_count, n, dtype=torch.bool)
    target_BN[rows, target_BMT.flatten(1)] = True
    assert not bool((context_BN.bool() & target_BN).any()), "context and targets overlap"


# --------------------------------------------------------------------------- the checks (name: a modality)


def demo_shards_of(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, dict[str, Any]]]:
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


def check_registered_class_and_default_config_pass_check(name):
    cls = registry.get(name)
    assert issubclass(cls, Modality) and cls.name == name, f"{cls} is not a Modality named {name!r}"
    assert issubclass(cls.config_model, ModalityConfig) and cls.config_model().name == name
    default = cls()
    assert default.cfg == cls.config_model()
    assert default.check() == [], f"the default {name} config fails its own check: {default.check()}"
    assert tiny(name).check() == [], f"the tiny {name} config fails check (fix tiny_config): {tiny(name).check()}"
    assert isinstance(default.describe(), str) and default.describe()
    flops = default.train_flops_per_sample()
    assert flops is None or (math.isfinite(flops) and flops > 0), f"train_flops_per_sample() = {flops}"


def check_encoder_and_predictor_shapes(name):
    modality = tiny(name)
    torch.manual_seed(0)
    encoder, predictor, sampler = modality.build_encoder(), modality.build_predictor(), modality.build_mask_sampler()
    g = seeded()
    x = modality.example_input(BATCH, g)
    pairs = as_mask_pairs(sampler(BATCH, g))  # one (context, target) pair, or several (V-JEPA)
    n, d = sampler.num_tokens, encoder.embed_dim
    full_BND = encoder(x)
    assert full_BND.shape == (BATCH, n, d), f"encoder(x) is {tuple(full_BND.shape)}, expected {(BATCH, n, d)}"
    for i, masks in enumerate(pairs):
        b, m, t = masks.target_idx_BMT.shape
        k = masks.context_idx_BK.shape[1]
        assert x.shape[0] == b == BATCH and m >= 1 and t >= 1 and k >= 1, (x.shape, masks.target_idx_BMT.shape, k)
        context_BKD = encoder(x, masks.context_idx_BK)
        assert context_BKD.shape == (BATCH, k, d), f"encoder(x, keep) is {tuple(context_BKD.shape)}, expected {(BATCH, k, d)}"
        for j in range(m):
            pred = predictor(context_BKD, masks.context_idx_BK, masks.target_idx_BMT[:, j], mask_index=i)
            assert pred.shape == (BATCH, t, d), f"predictor output is {tuple(pred.shape)}, expected {(BATCH, t, d)}"

    try:
        layers = encoder.forward_layers(x, 2 if getattr(encoder, "depth", 1) >= 2 else 1)
    except NotImplementedError:
        return  # optional: frozen-feature evaluation then uses the last layer only
    assert all(h.shape == (BATCH, n, d) for h in layers), [tuple(h.shape) for h in layers]
    torch.testing.assert_close(layers[-1], full_BND)


def check_only_the_online_model_gets_gradients_through_the_core(name):
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
        assert predictions.shape == targets.shape == (b * m, t, model.encoder.embed_dim), \
            (predictions.shape, targets.shape)
        assert not targets.requires_grad
        losses.append(latent_loss(predictions, targets))
    loss = mean_over_pairs(losses)
    assert torch.isfinite(loss), f"loss {loss}"
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing, f"online parameters without a finite gradient: {missing}"
    assert all(p.grad is None for p in target.parameters()), "the target encoder received gradients"


def check_mask_sampler_is_seeded_in_range_and_disjoint(name):
    sampler = tiny(name).build_mask_sampler()
    n = sampler.num_tokens
    pairs = as_mask_pairs(sampler(8, seeded(7)))
    again = as_mask_pairs(sampler(8, seeded(7)))
    assert len(pairs) == len(again)
    for masks, same in zip(pairs, again):
        assert torch.equal(masks.context_idx_BK, same.context_idx_BK), "the context differs under the same seed"
        assert torch.equal(masks.target_idx_BMT, same.target_idx_BMT), "the targets differ under the same seed"
    others = [as_mask_pairs(sampler(8, seeded(s)))[0] for s in range(3)]
    assert any(not torch.equal(o.target_idx_BMT, pairs[0].target_idx_BMT)
               or not torch.equal(o.context_idx_BK, pairs[0].context_idx_BK)
               for o in others), "the sampler ignores its generator"
    for masks in pairs:
        check_pair_in_range_and_disjoint(masks, n)


def check_decode_of_a_corrupt_sample_raises_value_error(name):
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


def check_demo_data_decodes_into_views_of_the_example_shape(name, contract_demo_shards):
    modality = tiny(name)
    out, manifests = contract_demo_shards(name)
    assert set(manifests) == {"train", "val"}, f"write_demo_data returned {sorted(manifests)}"
    totals = (manifests["train"].total, manifests["val"].total)
    assert totals == (DEMO_SPEC.num_train, DEMO_SPEC.num_val), f"{totals} samples written, {DEMO_SPEC} asked"
    assert manifests["train"].classes is not None and len(manifests["train"].classes) == DEMO_SPEC.num_classes, \
        f"classes {manifests['train'].classes}, {DEMO_SPEC.num_classes} asked"
    samples = [s for url in expand_shards(str(out / "train")) for s in read_shard(url)]
    assert len(samples) == DEMO_SPEC.num_train
    labels = sorted({int(bytes(s["cls"]).decode()) for s in samples})
    assert labels == list(range(DEMO_SPEC.num_classes)), f"labels {labels}"
    items = [modality.decode(s) for s in samples[:BATCH]]
    expected = modality.example_input(BATCH).shape
    view = modality.finish_batch(modality.train_batch(items, seeded(3)))  # what the training loop feeds the encoder
    assert view.shape == expected and view.dtype == torch.float32 and bool(torch.isfinite(view).all()), \
        f"training view {tuple(view.shape)} {view.dtype}, example_input {tuple(expected)}"
    assert torch.equal(view, modality.finish_batch(modality.train_batch(items, seeded(3)))), \
        "the training view is not a function of the generator"
    evaluation = modality.eval_batch(items)
    assert evaluation.shape == expected, f"evaluation view {tuple(evaluation.shape)}, example_input {tuple(expected)}"
    assert torch.equal(evaluation, modality.eval_batch(items)), "the evaluation view is not deterministic"


def check_torchscript_export_round_trip_equals_eager(name, tmp_path):
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
            diff = (reloaded.encoder(x) - eager).abs().max().item()
            assert diff <= EXPORT_TOLERANCE, f"reloaded export differs from eager by {diff} on {tuple(x.shape)}"
            diff = (plain(x) - eager).abs().max().item()
            assert diff <= EXPORT_TOLERANCE, f"torch.jit.load export differs from eager by {diff} on {tuple(x.shape)}"


def check_two_training_steps_from_generated_shards(name, contract_demo_shards, tmp_path):
    from jepa.train import train  # deferred: DeepSpeed (jepa.train), only for the training checks

    out, _ = contract_demo_shards(name)
    raw = tiny_recipe(name, tmp_path / "run", "data.source=shards", f"data.train_shards={out / 'train'}")
    result = train(parse_recipe(raw, f"contract recipe for {name}"))
    assert result.step == 2 and result.stopped_by == "finished", (result.step, result.stopped_by)
    losses = [r["loss"] for r in read_metrics(result.run_dir)]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses), f"losses {losses}"


def check_every_objective_trains_exports_and_evaluates(name, objective, contract_demo_shards, tmp_path):
    """Two training steps of each objective on the modality's generated shards, then `jepa export`
    and `jepa eval` (k-NN) of the run, through the CLI."""
    from jepa.train import train  # deferred: DeepSpeed (jepa.train), only for the training checks

    out, _ = contract_demo_shards(name)
    raw = tiny_recipe(name, tmp_path / "run", "data.source=shards", f"data.train_shards={out / 'train'}")
    raw["objective"] = {"name": objective, **copy.deepcopy(TINY_OBJECTIVES.get(objective, {}))}
    result = train(parse_recipe(raw, f"contract recipe for {name} / {objective}"))
    records = read_metrics(result.run_dir)
    assert result.step == 2 and [r["step"] for r in records] == [1, 2], (result.step, records)
    assert all(math.isfinite(r["loss"]) for r in records), records

    exported = tmp_path / "encoder.pt"
    res = CliRunner().invoke(app, ["export", str(result.run_dir), "--out", str(exported)])
    assert res.exit_code == 0, res.output
    assert exported.is_file()
    report = tmp_path / "eval.json"
    res = CliRunner().invoke(app, ["eval", str(result.run_dir), "--train-shards", str(out / "train"), "--val-shards",
                                   str(out / "val"), "--protocol", "knn", "--json", str(report)])
    assert res.exit_code == 0, res.output
    assert report.is_file()


#: Every check of the suite, in order (each takes ``name`` and the fixtures it names).
CHECKS: tuple[Callable[..., None], ...] = (
    check_registered_class_and_default_config_pass_check,
    check_encoder_and_predictor_shapes,
    check_only_the_online_model_gets_gradients_through_the_core,
    check_mask_sampler_is_seeded_in_range_and_disjoint,
    check_decode_of_a_corrupt_sample_raises_value_error,
    check_demo_data_decodes_into_views_of_the_example_shape,
    check_torchscript_export_round_trip_equals_eager,
    check_two_training_steps_from_generated_shards,
    check_every_objective_trains_exports_and_evaluates,
)


# --------------------------------------------------------------------------- the entry point


def _as_test(check: Callable[..., None]) -> Callable[..., None]:
    """A fresh function running ``check`` (with its signature, so pytest passes the same fixtures),
    named ``test_*``: marks are stored on the function, so every module gets its own."""
    @functools.wraps(check)
    def test(*args: Any, **kwargs: Any) -> None:
        check(*args, **kwargs)

    test.__name__ = test.__qualname__ = "test_" + check.__name__.removeprefix("check_")
    return test


def modality_contract_tests(*names: str) -> dict[str, Any]:
    """The contract suite for the modalities ``names`` (none: every registered one), for a test module.

    Usage, in a test module of a plugin::

        from jepa.testing import modality_contract_tests

        globals().update(modality_contract_tests("audio"))

    Returns:
        ``{test name: test function}`` (each parametrised over ``names``, ids the names; the
        objectives test also over every registered objective) plus the module-scoped fixture
        :data:`DEMO_FIXTURE` they share. Select one modality with ``-k NAME``.

    Raises:
        ValueError: a name is not a registered modality (install the plugin first:
            ``pip install -e .`` in its folder), or a name is given twice.
    """
    known = [info.name for info in registry.available()]
    chosen = list(names) or known
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise PluginError(f"modality_contract_tests: {', '.join(map(repr, unknown))} not registered (known: "
                         f"{', '.join(known) or 'none'}); install the plugin into this environment (pip install -e "
                         "PLUGIN_DIR) and run pytest with that environment's python")
    if len(set(chosen)) != len(chosen):
        raise PluginError(f"modality_contract_tests: a modality is named twice in {chosen}")
    objectives = [info.name for info in OBJECTIVES.available()]

    @pytest.fixture(scope="module", name=DEMO_FIXTURE)
    def demo_shards(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, dict[str, Any]]]:
        return demo_shards_of(tmp_path_factory)

    tests: dict[str, Any] = {DEMO_FIXTURE: demo_shards}
    for check in CHECKS:
        test = pytest.mark.parametrize("name", chosen, ids=chosen)(_as_test(check))
        if "objective" in inspect.signature(check).parameters:
            test = pytest.mark.parametrize("objective", objectives, ids=objectives)(test)
        tests[test.__name__] = test
    return tests
