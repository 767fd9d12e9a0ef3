"""The DeepSpeed engine: param groups, schedules on the groups, the target encoder, precision,
accumulation. Single process (a world of one); multi-process ZeRO runs are in test_train.py."""

from __future__ import annotations

import pytest
import torch

from jepa.engine import Engine, deepspeed_config
from jepa.param_groups import PARAM_GROUP_NAMES, build_param_groups
from jepa.loss import latent_loss
from jepa.model import target_tokens
from jepa.monitor import read_metrics
from jepa.recipe import EngineConfig, OptimConfig, split_global_batch
from jepa.schedules import cosine, linear, warmup_cosine
from jepa.objectives.ijepa import IJEPAConfig, IJEPAObjective
from jepa.train import train

from toy_modality import ToyConfig, ToyModality

MODALITY = ToyModality()


def _engine(global_batch_size: int = 8, momentum: float = 0.9, optim: OptimConfig | None = None, **engine_cfg) -> Engine:
    torch.manual_seed(0)
    objective = IJEPAObjective(IJEPAConfig(ema={"momentum": momentum, "final_momentum": 1.0}), MODALITY, total_steps=100)
    model = objective.build_model()
    engine = Engine(model, frozen=objective.build_frozen(model),
                    engine_cfg=EngineConfig(**{"precision": "fp32", **engine_cfg}), optim_cfg=optim or OptimConfig(),
                    global_batch_size=global_batch_size)
    engine.test_objective = objective  # the EMA update after a step: objective.after_step(engine, step)
    return engine


def _batch(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return MODALITY.example_input(n, g), MODALITY.build_mask_sampler()(n, g)


def _train_step(engine: Engine, x, masks) -> torch.Tensor:
    with engine.autocast():
        targets = target_tokens(engine.frozen["target_encoder"], x, masks)
        predictions = engine.forward(x, masks)
    loss = latent_loss(predictions, targets)
    engine.backward(loss)
    engine.step()
    return loss.detach()


def test_param_groups_follow_the_authors_layout():
    torch.manual_seed(0)
    encoder, predictor = MODALITY.build_encoder(), MODALITY.build_predictor()
    groups = build_param_groups({"encoder": encoder, "predictor": predictor}, weight_decay=0.04)
    assert [g["name"] for g in groups] == list(PARAM_GROUP_NAMES)
    assert PARAM_GROUP_NAMES == ("encoder_decay", "predictor_decay", "encoder_no_decay", "predictor_no_decay")
    names = {id(p): f"encoder.{n}" for n, p in encoder.named_parameters()}
    names |= {id(p): f"predictor.{n}" for n, p in predictor.named_parameters()}
    members = {g["name"]: {names[id(p)] for p in g["params"]} for g in groups}
    every = [names[id(p)] for g in groups for p in g["params"]]
    assert sorted(every) == sorted(names.values()), "every trainable parameter in exactly one group"
    for group in groups:
        part, decay = group["name"].split("_", 1)
        assert all(n.startswith(part + ".") for n in members[group["name"]])
        params = group["params"]
        no_decay = [("bias" in names[id(p)] or p.ndim == 1) for p in params]
        assert all(no_decay) if decay == "no_decay" else not any(no_decay)
        assert group["weight_decay"] == (0.04 if decay == "decay" else 0.0)
    # the authors' rule puts positional embeddings and the mask token in the decay groups
    assert "encoder.pos_embed" in members["encoder_decay"]
    assert {"predictor.mask_token", "predictor.predictor_pos_embed"} <= members["predictor_decay"]
    assert "encoder.blocks.0.norm1.weight" in members["encoder_no_decay"]


def test_lr_wd_and_momentum_used_at_each_step_equal_the_closed_forms(toy_recipe, monkeypatch):
    seen: list[list[tuple[str, float, float]]] = []
    original_step = Engine.step

    def spy_step(self):  # what the optimiser step reads, per group
        seen.append([(g["name"], g["lr"], g["weight_decay"]) for g in self.param_groups])
        original_step(self)

    monkeypatch.setattr(Engine, "step", spy_step)
    recipe = toy_recipe("run", "max_steps=14", "optim.lr=1e-3", "optim.start_lr=1e-4", "optim.final_lr=1e-5",
                        "optim.weight_decay=0.05", "optim.final_weight_decay=0.5")
    train(recipe)
    total, warmup = recipe.total_steps, recipe.warmup_steps
    assert (total, warmup) == (100, 10) and len(seen) == 14
    for step, groups in enumerate(seen):
        lr = warmup_cosine(step, warmup_steps=10, total_steps=100, start=1e-4, peak=1e-3, final=1e-5)
        wd = cosine(step, total_steps=100, start=0.05, final=0.5)
        assert [g[0] for g in groups] == ["encoder_decay", "predictor_decay", "encoder_no_decay", "predictor_no_decay"]
        for name, group_lr, group_wd in groups:
            assert group_lr == lr, (step, name)
            assert group_wd == (wd if name.endswith("_decay") and "no_decay" not in name else 0.0), (step, name)
    records = read_metrics(recipe.resolved_run_dir)
    for r in records:
        assert r["ema_momentum"] == linear(r["step"] - 1, total_steps=100, start=0.9, final=1.0)
    assert seen[0][0][1] == 1e-4 and seen[10][0][1] == 1e-3  # warm-up start and peak


def test_target_encoder_is_a_frozen_replica_updated_only_by_ema():
    engine = _engine(momentum=0.5)
    try:
        target = engine.frozen["target_encoder"]
        online = engine.module.encoder
        assert all(not p.requires_grad for p in target.parameters())
        optimised = {id(p) for g in engine.param_groups for p in g["params"]}
        assert not optimised & {id(p) for p in target.parameters()}
        for t, o in zip(target.parameters(), online.parameters()):
            assert torch.equal(t, o) and t.data_ptr() != o.data_ptr()

        before = [p.clone() for p in target.parameters()]
        _train_step(engine, *_batch(8))
        assert all(p.grad is None for p in target.parameters()), "the target encoder received gradients"
        assert all(torch.equal(a, b) for a, b in zip(before, target.parameters())), "the optimiser moved the target"
        momentum = engine.test_objective.after_step(engine, 0)["ema_momentum"]
        assert momentum == 0.5
        for b, t, o in zip(before, target.parameters(), online.parameters()):
            torch.testing.assert_close(t, 0.5 * b + 0.5 * o, rtol=0, atol=1e-7)
        assert any(not torch.equal(b, t) for b, t in zip(before, target.parameters()))
    finally:
        engine.close()


def test_the_optimiser_is_torch_fused_adamw():
    """On CPU torch's AdamW would loop over the tensors in Python (about 4x slower for ViT-Ti, see
    tools/bench_optimizer.py); the engine asks for the fused kernel, and a step moves every parameter."""
    engine = _engine()
    try:
        inner = engine.optimizer
        while not isinstance(inner, torch.optim.AdamW):  # DeepSpeed may wrap the client optimiser
            inner = inner.optimizer
        assert inner.defaults["fused"] is True and inner.defaults["foreach"] is None
        online = [p for g in engine.param_groups for p in g["params"]]
        before = [p.detach().clone() for p in online]
        _train_step(engine, *_batch(8))
        assert all(not torch.equal(b, p) for b, p in zip(before, online))
    finally:
        engine.close()


def test_grad_accumulation_equals_one_big_batch():
    x, masks = _batch(8, seed=1)
    params = []
    for accum in (1, 2):
        engine = _engine(grad_accum_steps=accum)
        try:
            assert engine.micro_batch_per_rank == 8 // accum
            engine.set_optim_hparams(1e-3, 0.05)
            mb = engine.micro_batch_per_rank
            for i in range(accum):
                _train_step(engine, x[i * mb:(i + 1) * mb], masks[i * mb:(i + 1) * mb])
            params.append([p.detach().clone() for p in engine.module.parameters()])
        finally:
            engine.close()
    moved = max((a - b).abs().max().item() for a, b in zip(params[0], _engine_initial_params()))
    assert moved > 1e-4, "the step did not move the weights; the comparison would be vacuous"
    for a, b in zip(*params):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def _engine_initial_params() -> list[torch.Tensor]:
    torch.manual_seed(0)
    from jepa.model import JEPA

    return [p.detach() for p in JEPA(MODALITY.build_encoder(), MODALITY.build_predictor()).parameters()]


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_mixed_precision_autocasts_and_keeps_fp32_weights(precision, dtype):
    engine = _engine(precision=precision)
    try:
        x, masks = _batch(8)
        with engine.autocast():
            assert engine.forward(x, masks).dtype == dtype
        losses = [_train_step(engine, x, masks).item() for _ in range(3)]
        assert all(torch.isfinite(torch.tensor(losses)))
        assert all(p.dtype == torch.float32 for p in engine.module.parameters())
        assert all(p.dtype == torch.float32 for p in engine.frozen["target_encoder"].parameters())
    finally:
        engine.close()


def test_deepspeed_config_from_the_engine_section():
    optim = OptimConfig(grad_clip=1.0)
    fp32 = deepspeed_config(EngineConfig(precision="fp32", zero_stage=2, grad_accum_steps=2), optim,
                            global_batch_size=64, micro_batch_per_rank=8, grad_accum_steps=2)
    assert fp32["train_batch_size"] == 64 and fp32["train_micro_batch_size_per_gpu"] == 8
    assert fp32["gradient_accumulation_steps"] == 2
    assert fp32["zero_optimization"]["stage"] == 2 and fp32["gradient_clipping"] == 1.0
    assert "torch_autocast" not in fp32 and "bf16" not in fp32 and "fp16" not in fp32
    one = {"global_batch_size": 64, "micro_batch_per_rank": 64, "grad_accum_steps": 1}
    bf16 = deepspeed_config(EngineConfig(precision="bf16"), optim, **one)
    assert bf16["torch_autocast"] == {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    fp16 = deepspeed_config(EngineConfig(precision="fp16", zero_stage=0), optim, **one)
    assert fp16["torch_autocast"]["dtype"] == "float16"
    with pytest.raises(ValueError, match=r"fp16 with optim.grad_clip=1.0 under engine.zero_stage=2"):
        deepspeed_config(EngineConfig(precision="fp16", zero_stage=2), optim, **one)


def test_micro_batch_must_divide():
    assert split_global_batch(2048, 16, 1) == (128, 1)
    with pytest.raises(ValueError, match=r"global_batch_size=10 is not divisible by world_size=4 x engine.grad_accum_steps=1"):
        split_global_batch(10, 4, 1)


def test_the_engine_splits_the_global_batch_as_requested():
    """The requested micro batch (data.micro_batch_size) is the one in effect, the accumulation steps
    follow, and DeepSpeed is configured with the same split."""
    torch.manual_seed(0)
    objective = IJEPAObjective(IJEPAConfig(), MODALITY, total_steps=100)
    model = objective.build_model()
    engine = Engine(model, frozen=objective.build_frozen(model), engine_cfg=EngineConfig(precision="fp32"),
                    optim_cfg=OptimConfig(), global_batch_size=8, requested_micro_batch=2)
    try:
        assert (engine.micro_batch_per_rank, engine.grad_accum_steps) == (2, 4)
        assert engine._deepspeed.train_micro_batch_size_per_gpu() == 2
        assert engine._deepspeed.gradient_accumulation_steps() == 4
        assert engine.module is model and not hasattr(engine, "model")
    finally:
        engine.close()


def test_deepspeeds_universal_checkpoint_modules_load_weights_only_and_torch_load_stays():
    """The weights-only loading of DeepSpeed's universal-checkpoint code swaps only those modules'
    ``torch`` name, for the context only; the global ``torch.load`` every other thread uses is untouched."""
    import importlib

    from jepa.engine.safe_load import UNIVERSAL_CHECKPOINT_MODULES, load_weights_only, weights_only_universal_checkpoint

    modules = [importlib.import_module(name) for name in UNIVERSAL_CHECKPOINT_MODULES]
    load = torch.load
    with weights_only_universal_checkpoint():
        assert torch.load is load
        assert all(m.torch is not torch and m.torch.load is load_weights_only for m in modules)
        assert all(m.torch.cat is torch.cat and m.torch.Tensor is torch.Tensor for m in modules)
    assert all(m.torch is torch for m in modules)


def test_activation_checkpointing_is_switched_on_and_changes_nothing():
    x, masks = _batch(8, seed=2)
    grads = []
    for enabled in (False, True):
        engine = _engine(activation_checkpointing=enabled)
        try:
            assert engine.module.encoder.grad_checkpointing is enabled
            assert engine.module.predictor.grad_checkpointing is enabled
            assert engine.frozen["target_encoder"].grad_checkpointing is False  # no gradients there: nothing to recompute
            with engine.autocast():
                targets = target_tokens(engine.frozen["target_encoder"], x, masks)
                loss = latent_loss(engine.forward(x, masks), targets)
            engine.backward(loss)
            grads.append([p.grad.clone() for p in engine.module.parameters()])
        finally:
            engine.close()
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


@pytest.mark.slow
def test_compile_trains():
    engine = _engine(compile=True)
    try:
        losses = [_train_step(engine, *_batch(8, seed=s)).item() for s in range(3)]
        assert all(torch.isfinite(torch.tensor(losses)))
    finally:
        engine.close()


@pytest.mark.parametrize("accum", [1, 2])
def test_one_process_skips_deepspeeds_reduction_with_the_same_updates(accum):
    """A world of one at stage 0 does not flatten / scale-by-1 / copy back every gradient, and the
    weights after three steps are bitwise those of DeepSpeed's reduction path."""
    weights = []
    for reduce in (False, True):
        engine = _engine(global_batch_size=8, grad_accum_steps=accum)
        try:
            assert engine._deepspeed.enable_backward_allreduce is False
            engine._deepspeed.enable_backward_allreduce = reduce
            for step in range(3):
                for micro in range(accum):
                    _train_step(engine, *_batch(8 // accum, seed=10 * step + micro))
            weights.append([p.detach().clone() for p in engine.module.parameters()])
        finally:
            engine.close()
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))
