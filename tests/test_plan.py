"""``jepa plan``: the activation estimate against the bytes autograd saves, and the ZeRO accounting."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from jepa.cli import app
from jepa.model import JEPA, target_tokens
from jepa.modalities.image import ImageModality
from jepa.modalities.image.config import ImageConfig
from jepa.modalities.image.memory import activation_bytes_per_sample
from jepa.plan import parse_bytes, stage_plan

SMALL = [  # three small configs: (recipe modality section, batch)
    ({"encoder": {"arch": "vit_tiny", "patch_size": 4}, "predictor": {"embed_dim": 96, "depth": 4, "num_heads": 3},
      "mask": {"min_keep": 4}, "input": {"crop_size": 32}}, 8),
    ({"encoder": {"arch": "vit_small", "patch_size": 16, "depth": 4}, "predictor": {"embed_dim": 192, "depth": 2},
      "input": {"crop_size": 224}}, 2),
    ({"encoder": {"arch": "vit_tiny", "patch_size": 8, "embed_dim": 128, "depth": 3, "num_heads": 4},
      "predictor": {"embed_dim": 64, "depth": 2, "num_heads": 4}, "mask": {"min_keep": 4, "mode": "fixed"},
      "input": {"crop_size": 96}}, 4),
]


def _saved_bytes(cfg: ImageConfig, batch: int, checkpointing: bool) -> tuple[int, int, int]:
    """Bytes of the distinct non-parameter storages autograd saves in one fp32 training forward; K; T."""
    modality = ImageModality(cfg)
    torch.manual_seed(0)
    encoder, predictor = modality.build_encoder(), modality.build_predictor()
    encoder.set_grad_checkpointing(checkpointing)
    predictor.set_grad_checkpointing(checkpointing)
    target_encoder = modality.build_encoder().requires_grad_(False)
    masks = modality.build_mask_sampler()(batch, torch.Generator().manual_seed(0))
    x = torch.randn(batch, 3, cfg.input.crop_size, cfg.input.crop_size)
    model = JEPA(encoder, predictor)
    params = {p.data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in params:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    targets = target_tokens(target_encoder, x, masks)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        torch.nn.functional.mse_loss(model(x, masks), targets)
    return sum(storages.values()), masks.context_idx_BK.shape[1], masks.target_idx_BMT.shape[2]


@pytest.mark.parametrize("checkpointing", [False, True], ids=["no-ckpt", "ckpt"])
@pytest.mark.parametrize("section, batch", SMALL, ids=["ti4-32", "s16-224", "w128-p8-96"])
def test_activation_estimate_within_10_percent_of_saved_bytes(section, batch, checkpointing):
    cfg = ImageConfig.model_validate(section)
    saved, k, t = _saved_bytes(cfg, batch, checkpointing)
    estimate = batch * activation_bytes_per_sample(cfg, act_bytes=4, checkpointing=checkpointing,
                                                   context_tokens=k, target_tokens=t).saved
    assert estimate == pytest.approx(saved, rel=0.10)


def test_zero_stages_shard_what_they_should():
    p, n = 1000, 8
    s0, s1, s2, s3 = (stage_plan(s, gpus=n, trainable=p, encoder=600, largest=100) for s in range(4))
    assert (s0.parameters, s0.gradients, s0.master, s0.optimizer) == (4 * p, 4 * p, 0, 8 * p)
    assert (s1.gradients, s1.optimizer) == (4 * p, 8 * p / n)
    assert (s2.parameters, s2.gradients) == (4 * p, 4 * p / n)
    assert s3.parameters == 4 * p / n and s3.target == 4 * 600
    assert parse_bytes("80GB") == 80e9 and parse_bytes("40GiB") == 40 * 2**30


def test_plan_cli_on_a_paper_recipe():
    out = CliRunner().invoke(app, ["plan", "recipes/image_vith14_in1k.yaml", "--gpus", "8", "--gpu-memory", "80GB"])
    assert out.exit_code == 0, out.output
    import re

    from jepa.recipe import load_recipe, split_global_batch

    text = " ".join(out.output.split())  # rich may wrap the line
    sets = re.findall(r"--set (\S+)", text)
    assert [s.split("=")[0] for s in sets] == ["engine.zero_stage", "data.micro_batch_size",
                                               "engine.activation_checkpointing"], text
    recipe = load_recipe("recipes/image_vith14_in1k.yaml", sets)  # the suggestion is a valid recipe change
    micro, accum = split_global_batch(recipe.data.global_batch_size, 8, recipe.engine.grad_accum_steps,
                                      recipe.data.micro_batch_size)
    assert f"micro batch {micro} per GPU, {accum} accumulation step(s) on 8 GPUs" in text
