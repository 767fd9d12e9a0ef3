"""``jepa plan``: the activation estimate against the bytes autograd saves, and the ZeRO accounting."""

from __future__ import annotations

from typing import Callable

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


def _saved_during(model: torch.nn.Module, step: Callable[[], object]) -> int:
    """Bytes of the distinct non-parameter storages autograd saves while ``step`` runs."""
    params = {p.data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in params:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(storages.values())


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
    targets = target_tokens(target_encoder, x, masks)
    saved = _saved_during(model, lambda: torch.nn.functional.mse_loss(model(x, masks), targets))
    return saved, masks.context_idx_BK.shape[1], masks.target_idx_BMT.shape[2]


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


LEJEPA_SMALL = [  # (image section, objective section, batch): global + local views of two sizes
    ({"encoder": {"arch": "vit_tiny", "patch_size": 8, "depth": 3}, "input": {"crop_size": 64},
      "views": {"local_size": 32}}, {"num_global_views": 2, "num_local_views": 2, "num_slices": 256}, 4),
    ({"encoder": {"arch": "vit_small", "patch_size": 16, "depth": 2}, "input": {"crop_size": 224}},
     {"num_global_views": 2, "num_local_views": 0, "num_slices": 64, "projector": {"hidden_dim": 512}}, 2),
]


@pytest.mark.parametrize("checkpointing", [False, True], ids=["no-ckpt", "ckpt"])
@pytest.mark.parametrize("section, objective, batch", LEJEPA_SMALL, ids=["ti8-64+32", "s16-224"])
def test_lejepa_activation_estimate_within_10_percent_of_saved_bytes(section, objective, batch, checkpointing):
    """Every view through the whole encoder, the projector and SIGReg, against autograd's saved bytes
    of one fp32 LeJEPA step (encoder, projector and loss)."""
    from jepa.objectives import bind
    from jepa.objectives.lejepa import LeJEPAConfig
    from jepa.objectives.lejepa_loss import lejepa_loss
    from jepa.objectives.sigreg import slice_directions

    modality = ImageModality(ImageConfig.model_validate(section))
    lejepa = bind(LeJEPAConfig.model_validate(objective), modality)
    torch.manual_seed(0)
    model = lejepa.build_model()
    model.encoder.set_grad_checkpointing(checkpointing)
    views = [torch.randn(batch, *shape) for shape in modality.view_shapes(lejepa.view_spec)]
    c = lejepa.cfg

    def step() -> None:
        z_views, _ = model(views)
        lejepa_loss(z_views, c.num_global_views, slice_directions(c.projector.out_dim, c.num_slices, seed=0, step=0),
                    c.lam, num_points=c.num_points, t_max=c.t_max)

    saved = _saved_during(model, step)
    estimate = batch * lejepa.activation_bytes_per_sample(batch, act_bytes=4, checkpointing=checkpointing).saved
    assert estimate == pytest.approx(saved, rel=0.10)


def test_plan_of_a_lejepa_recipe_counts_its_views():
    """The LeJEPA ViT-L recipe plans with LeJEPA's activation model (more bytes per sample than the
    same encoder's I-JEPA step, which runs one masked context)."""
    out = CliRunner().invoke(app, ["plan", "recipes/lejepa_vitl_in1k.yaml", "--gpus", "8", "--gpu-memory", "80GB"])
    assert out.exit_code == 0, out.output
    from jepa import objectives, registry
    from jepa.recipe import load_recipe

    recipe = load_recipe("recipes/lejepa_vitl_in1k.yaml")
    modality = registry.bind(recipe.modality)
    lejepa = objectives.bind(recipe.objective, modality).activation_bytes_per_sample(8, act_bytes=2, checkpointing=False)
    ijepa = modality.activation_bytes_per_sample(8, act_bytes=2, checkpointing=False)
    assert lejepa.saved > 2 * ijepa.saved


VIDEO_SMALL = [  # (video section, batch): V-JEPA 1 (sin-cos, two mask generators) and V-JEPA 2 (RoPE)
    ({"encoder": {"arch": "vit_tiny", "patch_size": 8, "tubelet_size": 2, "depth": 3},
      "predictor": {"embed_dim": 96, "depth": 2, "num_heads": 3}, "input": {"num_frames": 8, "crop_size": 32}}, 4),
    ({"encoder": {"arch": "vit_tiny", "patch_size": 8, "tubelet_size": 2, "depth": 2, "pos_embed": "rope"},
      "predictor": {"embed_dim": 96, "depth": 2, "num_heads": 4}, "input": {"num_frames": 8, "crop_size": 32}}, 2),
]


@pytest.mark.parametrize("checkpointing", [False, True], ids=["no-ckpt", "ckpt"])
@pytest.mark.parametrize("section, batch", VIDEO_SMALL, ids=["sincos", "rope"])
def test_video_activation_estimate_within_10_percent_of_saved_bytes(section, batch, checkpointing):
    """Every mask pair's context encoder and predictor pass, against autograd's saved bytes of one
    fp32 V-JEPA step (the target encoder without gradients)."""
    from jepa.interfaces import as_mask_pairs
    from jepa.model import cut_targets, target_representations
    from jepa.modalities.video import VideoModality
    from jepa.modalities.video.config import VideoConfig
    from jepa.nn.memory import masked_step_activation_bytes

    modality = VideoModality(VideoConfig.model_validate(section))
    torch.manual_seed(0)
    encoder, predictor = modality.build_encoder(), modality.build_predictor()
    encoder.set_grad_checkpointing(checkpointing)
    predictor.set_grad_checkpointing(checkpointing)
    model = JEPA(encoder, predictor)
    target = modality.build_encoder().requires_grad_(False)
    x = modality.example_input(batch, torch.Generator().manual_seed(0))
    pairs = as_mask_pairs(modality.build_mask_sampler()(batch, torch.Generator().manual_seed(0)))
    h = target_representations(target, x)
    saved = _saved_during(model, lambda: sum(torch.nn.functional.mse_loss(model(x, m, mask_index=i), cut_targets(h, m))
                                             for i, m in enumerate(pairs)))
    counts = [(m.context_idx_BK.shape[1], *m.target_idx_BMT.shape[1:]) for m in pairs]  # this batch's K, M, T
    estimate = batch * masked_step_activation_bytes(encoder, predictor, tuple(x.shape[1:]), counts, act_bytes=4,
                                                    checkpointing=checkpointing).saved
    assert estimate == pytest.approx(saved, rel=0.10)
    assert modality.activation_bytes_per_sample(batch, act_bytes=4, checkpointing=checkpointing).saved > 0
