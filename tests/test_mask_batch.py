"""The mask-collation batch is part of the recipe (``data.micro_batch_size``) and the block sizes are
drawn once per optimiser step: a recipe's masks are the same on any number of processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from jepa.objectives.ijepa import MaskBatches
from jepa.checkpoint import load_model_weights
from jepa.data.build import build_train_loader
from jepa.data.loader import sample_masks, step_generator
from jepa.interfaces import MaskSet
from jepa.modalities.image import ImageModality
from jepa.modalities.image.config import ImageConfig, MaskConfig
from jepa.modalities.image.demo_data import write_demo_dataset
from jepa.modalities.image.masks import MultiBlockMaskSampler
from jepa.monitor import read_metrics
from jepa.recipe import (DataConfig, RecipeError, load_recipe, micro_batch_warning, parse_recipe,
                         split_global_batch)

from tiny_recipes import tiny_image_recipe

ROOT = Path(__file__).resolve().parents[1]
PAPER_MICRO = {"image_vith14_in1k": 128, "image_vith14_in22k": 32, "image_vith16_448_in1k": 16,
               "image_vitg16_in22k": 16}
"""The authors' per-GPU batch (``data.batch_size`` of their configs; 2048 in total in every run)."""


# --------------------------------------------------------------------------- the split of a global batch
@pytest.mark.parametrize("world, accum, micro, expected", [
    (16, None, None, (128, 1)),   # today's behaviour: accumulation 1
    (16, 2, None, (64, 2)),
    (1, None, 128, (128, 16)),    # micro batch pinned: accumulation derived
    (2, None, 128, (128, 8)),
    (16, None, 128, (128, 1)),
    (8, 2, 128, (128, 2)),        # both given and consistent
    (32, None, 128, (64, 1)),     # more ranks than 2048 / 128: the largest micro batch that fits
    (128, None, 16, (16, 1)),
])
def test_split_global_batch(world, accum, micro, expected):
    assert split_global_batch(2048, world, accum, micro) == expected


def test_split_global_batch_errors_name_the_numbers():
    with pytest.raises(ValueError, match=r"world_size=16 x engine.grad_accum_steps=2 x data.micro_batch_size=128 = 4096, "
                                         r"not data.global_batch_size=2048; leave engine.grad_accum_steps unset"):
        split_global_batch(2048, 16, 2, 128)
    with pytest.raises(ValueError, match=r"data.global_batch_size=2048 is not divisible by world_size=3; run on"):
        split_global_batch(2048, 3, None, 128)
    with pytest.raises(ValueError, match=r"data.global_batch_size=10 is not divisible by world_size=4 x "
                                         r"engine.grad_accum_steps=1 = 4"):
        split_global_batch(10, 4)


def test_recipe_check_fails_with_the_numbers():
    raw = tiny_image_recipe(0)
    raw["data"]["micro_batch_size"] = 3
    with pytest.raises(RecipeError, match=r"data.micro_batch_size: must divide data.global_batch_size=8 \(got 3: "
                                          r"8 / 3 = 2.66667\); use a divisor such as 2"):
        parse_recipe(raw, "r.yaml")
    raw["data"]["micro_batch_size"] = 2
    raw["engine"] = {"grad_accum_steps": 3}
    with pytest.raises(RecipeError, match=r"engine.grad_accum_steps: data.micro_batch_size=2 x engine.grad_accum_steps=3 = 6 "
                                          r"does not divide data.global_batch_size=8"):
        parse_recipe(raw, "r.yaml")
    raw["engine"] = {"grad_accum_steps": 2}
    assert parse_recipe(raw, "r.yaml").engine.grad_accum_steps == 2  # 8 = 2 ranks x 2 x 2: checked at run time


@pytest.mark.parametrize("name", sorted(PAPER_MICRO))
def test_paper_recipes_pin_the_authors_per_gpu_batch(name):
    r = load_recipe(ROOT / "recipes" / f"{name}.yaml")
    micro = PAPER_MICRO[name]
    assert r.data.global_batch_size == 2048 and r.data.micro_batch_size == micro
    assert r.engine.grad_accum_steps is None and r.modality.mask.mode == "faithful"
    for world in (1, 2, 16):
        assert split_global_batch(2048, world, None, micro) == (micro, 2048 // (world * micro))
        assert micro_batch_warning(r, world, micro) is None
    text = (ROOT / "recipes" / f"{name}.yaml").read_text()
    assert f"micro_batch_size: {micro}" in text and f"({micro} x {2048 // micro} GPUs = 2048)" in text


def test_warns_in_faithful_mode_when_the_recipes_micro_batch_cannot_be_used():
    r = load_recipe(ROOT / "recipes" / "image_vith14_in1k.yaml")
    micro, accum = split_global_batch(2048, 32, None, r.data.micro_batch_size)
    assert (micro, accum) == (64, 1)
    note = micro_batch_warning(r, 32, micro)
    assert note is not None and "data.micro_batch_size=128 does not fit 32 ranks" in note
    assert "cut to the shortest context of 64 images instead of 128" in note and "at most 16 processes" in note
    fixed = load_recipe(ROOT / "recipes" / "image_vith14_in1k.yaml", ["modality.mask.mode=fixed"])
    assert micro_batch_warning(fixed, 32, micro) is None  # fixed masks do not depend on the batch
    unpinned = load_recipe(ROOT / "recipes" / "image_vith14_in1k.yaml", ["data.micro_batch_size=null"])
    assert micro_batch_warning(unpinned, 32, 64) is None


# --------------------------------------------------------------------------- block sizes shared by a step
def _block_sides(masks: MaskSet, grid: int) -> tuple[int, int]:
    """(h, w) of the batch's target blocks (one size per batch)."""
    idx = masks.target_idx_BMT[0, 0]
    rows, cols = idx // grid, idx % grid
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


IMAGE_CFG = ImageConfig.model_validate({"encoder": {"arch": "vit_tiny", "patch_size": 8}, "input": {"crop_size": 64},
                                        "mask": {"min_keep": 2}})


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("demo")
    write_demo_dataset(out, num_images=160, num_val=16, size=32, num_classes=4, max_count=20, workers=1,
                       show_progress=False)
    return str(out / "train")


def test_faithful_block_sizes_are_shared_by_every_rank_and_worker(demo_shards):
    """2 ranks x 2 loader workers, micro batch 4 of a global 16 (2 accumulation steps): the 2 x 2 micro
    batches of a step (from both workers of both ranks) have the step's block sizes, which change
    from step to step while the positions differ between ranks."""
    modality = ImageModality(IMAGE_CFG)
    sampler = modality.build_mask_sampler()
    cfg = DataConfig(train_shards=demo_shards, global_batch_size=16, num_workers=2, shuffle_buffer=8,
                     samples_per_epoch=160)
    per_rank = []
    for rank in range(2):
        loader = build_train_loader(cfg, modality, MaskBatches(modality, sampler), seed=5, rank=rank, world_size=2, micro_batch_size=4)
        it = iter(loader)
        per_rank.append([next(it).masks[0] for _ in range(8)])
        it.close()
        loader.close()
    grid = IMAGE_CFG.grid_size
    sides_per_step = []
    for step in range(4):
        batches = [per_rank[r][2 * step + a] for r in range(2) for a in range(2)]
        sides = {_block_sides(m, grid) for m in batches}
        assert len(sides) == 1, (step, sides)
        (target_hw, _) = sampler._draw_batch_sides(step_generator(5, step))
        assert sides == {target_hw}, "not the step's shared draw"
        assert not torch.equal(batches[0].target_idx_BMT, batches[2].target_idx_BMT), "ranks drew the same positions"
        sides_per_step.append(target_hw)
    assert len(set(sides_per_step)) > 1, sides_per_step


@pytest.mark.parametrize("mode", ["faithful", "fixed"])
def test_one_process_accumulating_2_has_the_masks_of_2_processes(mode):
    """Synthetic data, global batch 8 in micro batches of 4: rank 0 of 1 (2 accumulation steps) and
    ranks 0 and 1 of 2 (1 step each) see the same inputs and masks, step after step."""
    cfg = ImageConfig.model_validate({**tiny_image_recipe(0)["modality"], "mask": {"mode": mode, "min_keep": 1}})
    modality = ImageModality(cfg)
    data = DataConfig(source="synthetic", global_batch_size=8, samples_per_epoch=64)

    def stream(rank: int, world: int, n: int) -> list:
        loader = build_train_loader(data, modality, MaskBatches(modality, modality.build_mask_sampler()), seed=1, rank=rank,
                                    world_size=world, micro_batch_size=4)
        it = iter(loader)
        return [next(it) for _ in range(n)]

    one = stream(0, 1, 8)
    two = [stream(r, 2, 4) for r in range(2)]
    for step in range(4):
        for a in range(2):
            x, y = one[2 * step + a], two[a][step]
            assert torch.equal(x.inputs, y.inputs)
            mx, my = x.masks[0], y.masks[0]
            assert torch.equal(mx.context_idx_BK, my.context_idx_BK) and torch.equal(mx.target_idx_BMT, my.target_idx_BMT)
            assert (mx.context_valid_BK is None) == (my.context_valid_BK is None)
            if mx.context_valid_BK is not None:
                assert torch.equal(mx.context_valid_BK, my.context_valid_BK)
        assert mx.target_idx_BMT.shape == one[2 * step].masks[0].target_idx_BMT.shape  # one size per step
    assert not torch.equal(one[0].masks[0].target_idx_BMT, one[1].masks[0].target_idx_BMT)


def _authors_collator():
    """The independent model of the authors' collator in tools/bench_masks.py (written from docs/method/ijepa.md)."""
    from tool_module import load_tool

    return load_tool("bench_masks").authors_collator


@pytest.fixture
def one_thread():
    """As in the loader workers; on a busy machine OpenMP hand-offs make these tiny ops many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", sorted(PAPER_MICRO))
def test_faithful_context_matches_the_authors_collator_at_their_per_gpu_batch(name, one_thread):
    """Mean collated context and target tokens per image of 600 micro batches of the recipe's
    data.micro_batch_size (sizes from the step generator) against 600 batches of the authors' collator
    at their per-GPU batch: equal within 4 standard errors."""
    r = load_recipe(ROOT / "recipes" / f"{name}.yaml")
    grid, cfg, micro = r.modality.grid_size, r.modality.mask, r.data.micro_batch_size
    sampler, authors = MultiBlockMaskSampler(grid, cfg), _authors_collator()
    gen, ref_gen = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    ours = [sampler(micro, gen, step_generator=step_generator(0, i)) for i in range(600)]
    ours_k = torch.tensor([float(m.context_idx_BK.shape[1]) for m in ours], dtype=torch.float64)
    ours_t = torch.tensor([float(m.target_idx_BMT[0].numel()) for m in ours], dtype=torch.float64)
    ref = torch.tensor([authors(grid, micro, i, cfg, ref_gen) for i in range(600)], dtype=torch.float64)
    ref_k, ref_t = ref[:, 0], cfg.num_targets * ref[:, 1]
    for a, b in ((ours_k, ref_k), (ours_t, ref_t)):
        se = ((a.var() + b.var()) / 600) ** 0.5
        assert abs(float(a.mean() - b.mean())) < 4 * float(se), (name, float(a.mean()), float(b.mean()), float(se))


def test_sample_masks_gives_the_step_generator_only_to_samplers_that_take_it():
    sampler = MultiBlockMaskSampler(8, MaskConfig(min_keep=2))
    a = sample_masks(sampler, 4, torch.Generator().manual_seed(0), step_generator(0, 3))
    b = sampler(4, torch.Generator().manual_seed(0), step_generator=step_generator(0, 3))
    assert torch.equal(a.context_idx_BK, b.context_idx_BK) and torch.equal(a.target_idx_BMT, b.target_idx_BMT)

    class Plain:  # a sampler without per-step draws
        def __call__(self, batch_size, generator):
            return MaskSet(torch.zeros(batch_size, 2, dtype=torch.long), torch.ones(batch_size, 1, 1, dtype=torch.long))

    assert sample_masks(Plain(), 3, torch.Generator(), step_generator(0, 0)).batch_size == 3


def test_without_step_generator_the_sampler_draws_as_before():
    """Callers that pass one generator (the sampler's unit tests, benchmarks) get exactly the old draws:
    sizes first, from the same stream."""
    sampler = MultiBlockMaskSampler(16, MaskConfig())
    gen, ref = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    masks = sampler(32, gen)
    (th, tw), _ = sampler._draw_batch_sides(ref)
    assert masks.target_idx_BMT.shape[-1] == th * tw


# --------------------------------------------------------------------------- 1 process x 2 = 2 processes x 1
@pytest.mark.slow
def test_one_process_accumulating_2_trains_like_2_processes(tmp_path):
    """fp32 on CPU, faithful masks, global batch 8 in micro batches of 4: 1 process accumulating 2 micro
    batches and 2 processes (torchrun, gloo) with one each log the same losses, bit for bit, and end
    with the same weights. Both run with one intra-op thread (torchrun's default for several processes):
    a matmul split over another number of threads sums in another order."""
    raw = tiny_image_recipe(3)
    raw["modality"]["mask"] = {"mode": "faithful", "min_keep": 1}
    raw["data"]["micro_batch_size"] = 4
    raw.update(max_steps=4, engine={"precision": "fp32"}, log={"every_steps": 1})
    raw["optim"] = {"epochs": 1, "warmup_epochs": 0, "lr": 3e-3}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, nproc in (("one", 1), ("two", 2)):
        recipe_file = tmp_path / f"{name}.yaml"
        recipe_file.write_text(yaml.safe_dump({**raw, "run_dir": str(tmp_path / name)}))
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if nproc == 2 else []
        cmd = [sys.executable, *launcher, "-m", "jepa.cli", "train", str(recipe_file), "--resume", "none"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    a, b = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert a[0]["loss"] != a[-1]["loss"], "the loss did not move; the comparison is vacuous"
    wa, wb = load_model_weights(tmp_path / "one"), load_model_weights(tmp_path / "two")
    for part in ("encoder", "predictor", "target_encoder"):
        sa, sb = getattr(wa, part), getattr(wb, part)
        diff = max((sa[k] - sb[k]).abs().max().item() for k in sa)
        assert diff == 0.0, (part, diff)
