"""Statistical tests of the 3-D multi-block mask sampler (jepa.modalities.video.masks) over 10,000
clips per generator at V-JEPA's ViT-L/16 geometry (8 x 14 x 14 tokens): block sizes against their
closed-form distribution, aspect ratios, all-time extent, uniform corners, context / target
disjointness, the two collations, determinism, and the feasibility check."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import pytest
import torch

from jepa.interfaces import MaskSet
from jepa.modalities.video.config import MaskGeneratorConfig, VideoMaskConfig
from jepa.modalities.video.masks import BlockMaskGenerator, MultiMaskSampler, check_mask_feasibility

GRID = (8, 14, 14)
N = 8 * 14 * 14
NUM_CLIPS, BATCH = 10_000, 50
NUM_CLIPS_FIXED = 2_000  # 'fixed' differs only in the collation; fewer clips keep the test fast


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@dataclass
class Draws:
    sides: torch.Tensor  # (num_batches, 3)
    corners: torch.Tensor  # (clips, M, 3)
    target: torch.Tensor  # (clips, N) bool, un-collated
    masks: list[MaskSet]  # collated, one per batch


_cache: dict[tuple[str, int], Draws] = {}


def get_draws(mode: str, index: int) -> Draws:
    """10,000 clips (2,000 for 'fixed') of V-JEPA generator ``index`` (0: 8 blocks at 0.15, 1: 2 at 0.7)."""
    if (mode, index) not in _cache:
        gen = MultiMaskSampler(GRID, VideoMaskConfig(mode=mode)).generators[index]
        g = torch.Generator().manual_seed(100 + index)
        sides, corners, target, masks = [], [], [], []
        for _ in range((NUM_CLIPS if mode == "faithful" else NUM_CLIPS_FIXED) // BATCH):
            d = gen.sample_blocks(BATCH, g)
            sides.append(d.sides)
            corners.append(d.corners_BM3)
            target.append(d.target_mask_BN)
            masks.append(MaskSet(gen.collate(~d.target_mask_BN, g), gen.collate(d.target_mask_BN, g).unsqueeze(1)))
        _cache[mode, index] = Draws(torch.stack(sides), torch.cat(corners), torch.cat(target), masks)
    return _cache[mode, index]


# ---------------------------------------------------------------------------- block sizes
def exact_side_probabilities(area: int, aspect: tuple[float, float]) -> dict[tuple[int, int], float]:
    """P(h, w) for a ~ U(aspect): h = round(sqrt(area a)) = k  <=>  a in [(k-1/2)^2/area, (k+1/2)^2/area)."""
    lo, hi = aspect
    out = {}
    for h in range(1, 15):
        for w in range(1, 15):
            a_lo = max(lo, (h - 0.5) ** 2 / area, area / (w + 0.5) ** 2)
            a_hi = min(hi, (h + 0.5) ** 2 / area, area / (w - 0.5) ** 2)
            if a_hi > a_lo:
                out[h, w] = (a_hi - a_lo) / (hi - lo)
    return out


@pytest.mark.parametrize("index, area", [(0, 29), (1, 137)])  # int(196 * 0.15), int(196 * 0.7)
def test_block_sizes_follow_the_closed_form(index, area):
    gen = MultiMaskSampler(GRID, VideoMaskConfig()).generators[index]
    sides = gen.sample_sides(100_000, torch.Generator().manual_seed(index))
    assert bool((sides[:, 0] == 8).all())  # temporal_scale (1, 1): every block spans all 8 time steps
    exact = exact_side_probabilities(area, (0.75, 1.5))
    assert abs(sum(exact.values()) - 1) < 1e-9
    hw, counts = torch.unique(sides[:, 1:], dim=0, return_counts=True)
    seen = {tuple(x): int(c) for x, c in zip(hw.tolist(), counts)}
    assert set(seen) <= set(exact), (seen, exact)
    for key, p in exact.items():
        sigma = math.sqrt(p * (1 - p) / 100_000)
        assert abs(seen.get(key, 0) / 100_000 - p) < 5 * sigma + 1e-4, (key, seen.get(key, 0), p)
    # areas stay within rounding of the target and aspect ratios within rounding of (0.75, 1.5)
    h, w = sides[:, 1].double(), sides[:, 2].double()
    assert abs(float((h * w).mean()) - area) < 0.05 * area
    ratio = h / w
    assert float(ratio.min()) >= 0.75 * (1 - 1 / h.min()) - 1e-9 and float(ratio.max()) <= 1.5 * (1 + 1 / w.min())
    assert 0.95 < float(ratio.mean()) < 1.25  # E[a] = 1.125 before rounding


@pytest.mark.parametrize("index", [0, 1])
def test_batch_draws_use_one_size_per_batch_with_the_same_distribution(index):
    d = get_draws("faithful", index)
    assert d.corners.shape == (NUM_CLIPS, (8, 2)[index], 3)
    area = (d.sides[:, 1] * d.sides[:, 2]).double()
    assert abs(float(area.mean()) - (29, 137)[index]) < (29, 137)[index] * 0.08


# ---------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("index", [0, 1])
def test_blocks_span_all_time_and_masks_are_tubes(index):
    d = get_draws("faithful", index)
    assert bool((d.corners[..., 0] == 0).all())  # start time 0, length 8
    per_step = d.target.view(NUM_CLIPS, 8, 196)
    assert torch.equal(per_step, per_step[:, :1].expand_as(per_step))  # same spatial mask at every time step


@pytest.mark.parametrize("index", [0, 1])
def test_corners_are_uniform_and_inclusive(index):
    d = get_draws("faithful", index)
    clip_sides = d.sides.repeat_interleave(BATCH, 0)  # (NUM_CLIPS, 3)
    for axis in (1, 2):
        side = clip_sides[:, axis, None].expand(-1, d.corners.shape[1])
        corner = d.corners[..., axis]
        assert bool((corner >= 0).all()) and bool((corner + side <= 14).all())
        assert bool((corner == 14 - side).any())  # the last position is reachable (inclusive bound)
        n = (15 - side).double()[side < 14]  # positions; uniform on {0 .. n-1}: mean (n-1)/2, var (n^2-1)/12
        z = (corner.double()[side < 14] - (n - 1) / 2) / ((n * n - 1) / 12).sqrt()
        assert z.numel() > 1000 and abs(float(z.mean())) < 0.05 and abs(float(z.var()) - 1) < 0.05


def test_targets_cover_every_token():
    cover = get_draws("faithful", 0).target.double().mean(0).view(8, 14, 14)
    assert bool((cover > 0.05).all())  # every token can be a target (corners: 8 %, centre: 95 %)
    for flipped in (cover.flip(1), cover.flip(2)):  # not the transpose: blocks are taller than wide on average
        assert float((cover - flipped).abs().max()) < 0.03  # no side is favoured


@pytest.mark.parametrize("mode", ["faithful", "fixed"])
@pytest.mark.parametrize("index", [0, 1])
def test_context_and_targets_are_disjoint_and_collated(mode, index):
    d = get_draws(mode, index)
    for b, m in enumerate(d.masks):
        target = d.target[b * BATCH:(b + 1) * BATCH]
        ctx, tgt = m.context_idx_BK, m.target_idx_BMT[:, 0]
        assert m.target_idx_BMT.shape[1] == 1
        assert ctx.shape[1] == int((~target).sum(1).min()) and tgt.shape[1] == int(target.sum(1).min())
        assert bool((ctx.diff(dim=1) > 0).all()) and bool((tgt.diff(dim=1) > 0).all())  # ascending, no repeats
        assert not bool(target.gather(1, ctx).any())  # context never in the union of blocks
        assert bool(target.gather(1, tgt).all())  # targets only from the union
    assert int((~d.target).sum(1).min()) >= 1  # min_keep

def test_context_sizes_match_the_vjepa_masks():
    """Short-range (8 x 0.15): ~37 % context per clip; long-range (2 x 0.7): ~19 %."""
    k0 = float((~get_draws("faithful", 0).target).sum(1).double().mean())
    k1 = float((~get_draws("faithful", 1).target).sum(1).double().mean())
    assert 0.33 < k0 / N < 0.41, k0
    assert 0.15 < k1 / N < 0.23, k1
    collated = sum(m.context_idx_BK.shape[1] for m in get_draws("faithful", 1).masks) / (NUM_CLIPS // BATCH)
    assert collated < 0.5 * k1  # the batch minimum (B = 50) is far below the mean


def _mean_time(idx: torch.Tensor) -> float:
    return float((idx // 196).double().mean())


@pytest.mark.parametrize("index", [0, 1])
def test_faithful_collation_drops_late_time_steps_and_fixed_does_not(index):
    """Raster order is time-major, so cutting to the first K drops the last time steps."""
    fixed, faithful = get_draws("fixed", index), get_draws("faithful", index)
    for d, low, high in ((fixed, 3.3, 3.7), (faithful, 0.0, 3.3)):
        t_ctx = sum(_mean_time(m.context_idx_BK) for m in d.masks) / len(d.masks)
        t_tgt = sum(_mean_time(m.target_idx_BMT) for m in d.masks) / len(d.masks)
        assert low < t_ctx < high and low < t_tgt < high, (t_ctx, t_tgt)  # un-collated mean time is 3.5


# ---------------------------------------------------------------------------- temporal options
def test_short_blocks_and_max_temporal_keep():
    cfg = MaskGeneratorConfig(spatial_scale=(0.2, 0.2), temporal_scale=(0.5, 0.5), num_blocks=3, max_temporal_keep=0.75)
    gen = BlockMaskGenerator(GRID, cfg)
    d = gen.sample_blocks(2000, torch.Generator().manual_seed(0))
    assert d.sides[0] == 4  # int(8 * 0.5)
    assert set(d.corners_BM3[..., 0].unique().tolist()) == {0, 1, 2, 3, 4}
    per_step = d.target_mask_BN.view(2000, 8, 196)
    assert bool(per_step[:, 6:].all())  # steps >= int(8 * 0.75) are never context
    assert bool((~per_step[:, :6]).any(2).all())


# ---------------------------------------------------------------------------- determinism
def test_deterministic_given_the_generator_only():
    sampler = MultiMaskSampler(GRID, VideoMaskConfig(mode="fixed"))
    torch.manual_seed(0)
    a = sampler(8, torch.Generator().manual_seed(7))
    torch.manual_seed(1)  # the global RNG plays no part
    b = sampler(8, torch.Generator().manual_seed(7))
    c = sampler(8, torch.Generator().manual_seed(8))
    assert len(a) == 2 and all(isinstance(m, MaskSet) for m in a)
    for x, y in zip(a, b):
        assert torch.equal(x.context_idx_BK, y.context_idx_BK) and torch.equal(x.target_idx_BMT, y.target_idx_BMT)
    assert not torch.equal(a[0].target_idx_BMT, c[0].target_idx_BMT) or not torch.equal(a[1].target_idx_BMT, c[1].target_idx_BMT)


def test_a_step_generator_gives_every_micro_batch_of_a_step_the_same_block_sizes():
    """The training loaders pass step_generator (jepa.data.loader.sample_masks): block sizes then depend on
    the step alone, corners on each micro batch's own generator; without it nothing changes."""
    from jepa.data.loader import sample_masks, step_generator

    gen = MultiMaskSampler(GRID, VideoMaskConfig(mode="faithful")).generators[0]
    sides = {}
    for step in (3, 4):
        for micro in range(3):
            g = torch.Generator().manual_seed(1000 * step + micro)
            sides[step, micro] = gen.sample_blocks(4, g, step_generator(0, step)).sides
    assert all(torch.equal(sides[s, 0], sides[s, m]) for s in (3, 4) for m in (1, 2))
    draws = [gen.sample_blocks(4, torch.Generator().manual_seed(0), step_generator(0, s)).sides for s in range(8)]
    assert len({tuple(d.tolist()) for d in draws}) > 1  # sizes still vary from step to step
    plain = gen.sample_blocks(4, torch.Generator().manual_seed(5))
    again = gen.sample_blocks(4, torch.Generator().manual_seed(5), None)
    assert torch.equal(plain.sides, again.sides) and torch.equal(plain.corners_BM3, again.corners_BM3)
    sampler = MultiMaskSampler(GRID, VideoMaskConfig(mode="faithful"))
    loader = sample_masks(sampler, 4, torch.Generator().manual_seed(1), step_generator(0, 9))  # as training draws
    direct = sampler(4, torch.Generator().manual_seed(1), step_generator=step_generator(0, 9))
    alone = sampler(4, torch.Generator().manual_seed(1))
    assert all(torch.equal(x.target_idx_BMT, y.target_idx_BMT) for x, y in zip(loader, direct))
    assert not all(torch.equal(x.target_idx_BMT, y.target_idx_BMT) for x, y in zip(loader, alone))


# ---------------------------------------------------------------------------- feasibility
@pytest.mark.parametrize("grid", [GRID, (4, 8, 8), (2, 4, 4)])
def test_check_accepts_vjepa_defaults(grid):
    assert check_mask_feasibility(grid, VideoMaskConfig()) == []


def test_check_rejects_blocks_that_cover_the_clip():
    cfg = VideoMaskConfig(generators=[MaskGeneratorConfig(), MaskGeneratorConfig(spatial_scale=(0.9, 1.0), num_blocks=3)])
    problems = check_mask_feasibility(GRID, cfg)
    assert [f for f, _ in problems] == ["generators.1.spatial_scale"]
    assert "min_keep=1" in problems[0][1] and "lower num_blocks" in problems[0][1]


def test_check_rejects_context_steps_below_min_keep():
    cfg = VideoMaskConfig(min_keep=300, generators=[MaskGeneratorConfig(max_temporal_keep=0.1)])
    assert [f for f, _ in check_mask_feasibility(GRID, cfg)] == ["generators.0.max_temporal_keep"]


def test_sampler_raises_instead_of_hanging():
    gen = BlockMaskGenerator(GRID, MaskGeneratorConfig(spatial_scale=(1.0, 1.0), aspect_ratio=(1.0, 1.0), num_blocks=1))
    outcome: list[BaseException | None] = []

    def draw() -> None:
        try:
            gen(4, torch.Generator().manual_seed(0))
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            outcome.append(e)

    worker = threading.Thread(target=draw, daemon=True)
    worker.start()
    worker.join(timeout=20.0)
    assert outcome and isinstance(outcome[0], RuntimeError) and "8x14x14 token grid" in str(outcome[0]), outcome
