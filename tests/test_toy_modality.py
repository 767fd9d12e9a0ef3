"""The core has no image assumptions: a 1-D toy modality, installed like a third-party package,
goes through recipes, model wiring, loss, EMA and the training loop."""

from __future__ import annotations

import copy
import importlib.metadata

import pytest
import torch

from jepa import registry
from jepa.loss import latent_loss
from jepa.model import JEPA, target_tokens
from jepa.monitor import read_metrics
from jepa.recipe import RecipeError, parse_recipe
from jepa.target import EMATargetUpdater
from jepa.train import train

from toy_modality import ToyConfig, ToyModality


def test_toy_is_discovered_through_the_entry_point_group(toy_plugin_dir):
    assert (toy_plugin_dir / "toy_jepa-0.0.dist-info" / "entry_points.txt").is_file()
    eps = [ep for ep in importlib.metadata.entry_points(group=registry.GROUP) if ep.name == "toy"]
    assert len(eps) == 1 and eps[0].dist is not None and eps[0].dist.name == "toy-jepa"
    infos = {i.name: i for i in registry.available()}
    assert infos["toy"].package == "toy-jepa" and infos["toy"].target == "toy_modality:ToyModality"
    assert "toy" not in registry.MODALITIES._extra  # not registered by hand
    assert registry.get("toy") is ToyModality


def test_recipe_validation_uses_the_toy_config():
    raw = {"name": "t", "modality": {"name": "toy", "seq_len": 16, "embed_dim": 8},
           "data": {"source": "synthetic", "global_batch_size": 4, "samples_per_epoch": 16}}
    recipe = parse_recipe(raw)
    assert isinstance(recipe.modality, ToyConfig) and recipe.modality.seq_len == 16
    assert "seq_len: 16" in recipe.to_yaml()

    with pytest.raises(RecipeError, match=r"modality\.patch_size: unknown key"):
        parse_recipe({**raw, "modality": {"name": "toy", "patch_size": 16}})
    with pytest.raises(RecipeError, match=r"modality\.target_len: .*shorten the spans"):
        parse_recipe({**raw, "modality": {"name": "toy", "seq_len": 16, "num_targets": 4, "target_len": 4}})


def test_mask_sampler_contract():
    cfg = ToyConfig()
    sampler = ToyModality(cfg).build_mask_sampler()
    masks = sampler(16, torch.Generator().manual_seed(3))
    b, m, t = masks.target_idx_BMT.shape
    assert (b, m, t) == (16, cfg.num_targets, cfg.target_len)
    assert masks.context_idx_BK.shape[1] >= cfg.min_context
    for row in range(b):
        context, targets = set(masks.context_idx_BK[row].tolist()), set(masks.target_idx_BMT[row].flatten().tolist())
        assert not context & targets, "context and targets overlap"
        assert max(targets) < cfg.seq_len
    again = sampler(16, torch.Generator().manual_seed(3))
    assert torch.equal(masks.context_idx_BK, again.context_idx_BK) and torch.equal(masks.target_idx_BMT, again.target_idx_BMT)


def test_forward_backward_and_ema_through_the_core():
    cfg = ToyConfig()
    modality = ToyModality(cfg)
    torch.manual_seed(0)
    model = JEPA(modality.build_encoder(), modality.build_predictor())
    target = copy.deepcopy(model.encoder).requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    x = modality.example_input(4, g)
    masks = modality.build_mask_sampler()(4, g)

    targets = target_tokens(target, x, masks)
    predictions = model(x, masks)
    assert predictions.shape == targets.shape == (4 * cfg.num_targets, cfg.target_len, cfg.embed_dim)
    loss = latent_loss(predictions, targets)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"online parameter {name} got no gradient"
    assert all(p.grad is None for p in target.parameters()), "the target encoder received gradients"

    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in target.parameters()]
    updater = EMATargetUpdater(0.75, 1.0, total_steps=10)
    updater.update(list(target.parameters()), list(model.encoder.parameters()), step=0)
    for b, t, o in zip(before, target.parameters(), model.encoder.parameters()):
        torch.testing.assert_close(t, 0.75 * b + 0.25 * o)


def test_short_training_run_with_the_toy_modality(toy_recipe):
    result = train(toy_recipe("run", "max_steps=3", "checkpoint.every_steps=2"))
    assert result.step == 3 and result.stopped_by == "finished"
    records = read_metrics(result.run_dir)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(0 < r["loss"] < 10 and r["target_spread"] > 0 for r in records)
    assert (result.run_dir / "recipe.yaml").read_text().startswith("name: toy")
    assert result.checkpoint is not None and result.checkpoint.name == "step_000003"


def test_an_encoder_without_forward_layers_gives_its_final_output_to_single_layer_probes():
    from jepa.interfaces import Encoder

    class Minimal(Encoder):  # the contract's required part only: forward and embed_dim
        embed_dim = 4

        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3, 4)

        def forward(self, x, keep_idx_BK=None):
            return self.proj(x)

    enc, x = Minimal(), torch.randn(2, 5, 3)
    (out,) = enc.forward_layers(x)
    assert torch.equal(out, enc(x))
    with pytest.raises(NotImplementedError, match="Minimal does not expose intermediate layers .*2 asked"):
        enc.forward_layers(x, 2)
