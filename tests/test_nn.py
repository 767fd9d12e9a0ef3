"""The core building blocks in ``jepa/nn``: sin-cos tables, geometry checks, the N-D grid block-mask
sampler and its collations, the transformer bases' subclassing API, the FLOP formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from jepa.interfaces import MaskSet
from jepa.nn import flops as nn_flops
from jepa.nn.geometry import check_heads, check_patch_tiles, check_sincos_width, check_stack
from jepa.nn.grid_masks import (BlockSpec, GridBlockMaskSampler, cut_to_shortest, pad_to_longest, row_counts)
from jepa.nn.init import init_weights
from jepa.nn.pos_embed import axis_widths_3d, sincos_1d, sincos_2d, sincos_3d
from jepa.nn.transformer import TransformerEncoder, TransformerPredictor


# ---------------------------------------------------------------------------- sin-cos tables
def _code(width: int, pos: Tensor) -> Tensor:
    """Reference 1-D code, written out: [sin(x w_i) | cos(x w_i)], w_i = 10000^(-i / (width/2))."""
    half = width // 2
    omega = torch.tensor([10000.0 ** (-i / half) for i in range(half)], dtype=torch.float64)
    return torch.cat([torch.sin(pos[:, None] * omega), torch.cos(pos[:, None] * omega)], 1)


@pytest.mark.parametrize("dim, n", [(2, 1), (8, 5), (64, 33)])
def test_sincos_1d_shape_and_formula(dim, n):
    table = sincos_1d(dim, n)
    assert table.shape == (n, dim) and table.dtype == torch.float32
    torch.testing.assert_close(table, _code(dim, torch.arange(n, dtype=torch.float64)).float(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("dim, h, w", [(4, 1, 1), (64, 4, 4), (32, 3, 5)])
def test_sincos_2d_is_column_code_then_row_code(dim, h, w):
    table = sincos_2d(dim, h, w)
    assert table.shape == (h * w, dim)
    rows = torch.arange(h, dtype=torch.float64).repeat_interleave(w)
    cols = torch.arange(w, dtype=torch.float64).repeat(h)
    ref = torch.cat([_code(dim // 2, cols), _code(dim // 2, rows)], 1).float()
    torch.testing.assert_close(table, ref, rtol=0, atol=1e-6)
    # the table I-JEPA's released checkpoints store, computed the way the image modality always did
    quarter = dim // 4
    omega = 1.0 / torch.pow(10000.0, torch.arange(quarter, dtype=torch.float64) / quarter)
    a_c, a_r = cols[:, None] * omega, rows[:, None] * omega
    assert torch.equal(table, torch.cat([a_c.sin(), a_c.cos(), a_r.sin(), a_r.cos()], 1).float())


def test_image_and_video_modules_use_the_core_tables():
    from jepa.modalities.image import pos_embed as image_pos
    from jepa.modalities.video import pos_embed as video_pos

    assert image_pos.sincos_2d is sincos_2d
    for dim, grid, uniform in [(1024, (2, 3, 4), True), (48, (3, 2, 5), True), (48, (2, 2, 2), False), (50, (1, 4, 3), True)]:
        assert torch.equal(sincos_3d(dim, *grid, uniform), video_pos.sincos_3d(dim, *grid, uniform))
        assert axis_widths_3d(dim, uniform) == video_pos.axis_widths(dim, uniform)


@pytest.mark.parametrize("uniform", [True, False])
def test_sincos_3d_layout(uniform):
    dim, (t, h, w) = 48, (3, 2, 5)
    table = sincos_3d(dim, t, h, w, uniform)
    assert table.shape == (t * h * w, dim)
    widths = axis_widths_3d(dim, uniform)
    assert widths == ([16, 16, 16] if uniform else [24, 12, 12])
    idx = torch.arange(t * h * w)
    pos = [idx // (h * w), idx % (h * w) // w, idx % w]  # time slowest, width fastest
    ref = torch.cat([_code(a, p.double()) for a, p in zip(widths, pos)], 1)[:, :dim].float()
    torch.testing.assert_close(table, ref, rtol=0, atol=1e-6)


def test_sincos_3d_cuts_the_uniform_split_to_the_width():
    assert axis_widths_3d(1024) == [342, 342, 342]
    assert sincos_3d(1024, 1, 2, 2).shape == (4, 1024)


def test_sincos_errors_and_scripting():
    with pytest.raises(ValueError, match="must be even"):
        sincos_1d(5, 3)
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_2d(6, 2, 2)
    with pytest.raises(ValueError, match="multiple of 8"):
        sincos_3d(12, 1, 1, 1, uniform_power=False)
    with pytest.raises(ValueError, match="non-empty"):
        sincos_3d(12, 0, 1, 1)
    for fn, args in ((sincos_1d, (8, 3)), (sincos_2d, (8, 2, 3)), (sincos_3d, (12, 2, 2, 3, True))):
        assert torch.equal(torch.jit.script(fn)(*args), fn(*args))


# ---------------------------------------------------------------------------- geometry checks
def test_geometry_messages_name_the_fix():
    with pytest.raises(ValueError, match=r"^Enc: num_heads=5 must divide the width 64; pick a divisor of 64$"):
        check_heads("Enc", 64, 5)
    with pytest.raises(ValueError, match="num_heads=0"):
        check_heads("Enc", 64, 0)
    check_heads("Enc", 64, 8)
    with pytest.raises(ValueError, match=r"^Enc: width 33 must be even for the 1-D sin-cos positions$"):
        check_sincos_width("Enc", 33, num_axes=1)
    with pytest.raises(ValueError, match=r"^Enc: width 34 must be a multiple of 4 for the 2-D sin-cos positions$"):
        check_sincos_width("Enc", 34, num_axes=2)
    with pytest.raises(ValueError, match="multiple of 8 when uniform_power is false"):
        check_sincos_width("Enc", 36, num_axes=3, uniform_power=False)
    with pytest.raises(ValueError, match="1-, 2- and 3-D grids, not 4-D"):
        check_sincos_width("Enc", 64, num_axes=4)
    check_sincos_width("Enc", 34, num_axes=1)
    check_sincos_width("Enc", 36, num_axes=3)  # uniform_power: any positive width
    with pytest.raises(ValueError, match=r"^Enc: img_size=30 must be a positive multiple of patch_size=8$"):
        check_patch_tiles("Enc", "img_size", 30, "patch_size", 8)
    with pytest.raises(ValueError, match="num_frames=1 must be a positive multiple of tubelet_size=2"):
        check_patch_tiles("Enc", "num_frames", 1, "tubelet_size", 2)
    with pytest.raises(ValueError, match="patch_size=0"):
        check_patch_tiles("Enc", "seq_len", 8, "patch_size", 0)
    with pytest.raises(ValueError, match="depth must be positive, got 0"):
        check_stack("Enc", 0)
    with pytest.raises(ValueError, match=r"drop_path must be in \[0, 1\), got 1.0"):
        check_stack("Enc", 2, 1.0)


# ---------------------------------------------------------------------------- collation
def _mask(rows: list[list[int]], n: int) -> Tensor:
    out = torch.zeros(len(rows), n, dtype=torch.bool)
    for r, idx in enumerate(rows):
        out[r, idx] = True
    return out


def test_cut_to_shortest_first_and_random():
    mask = _mask([[0, 2, 3, 7], [1, 4, 5], [2, 3, 6, 8, 9]], 10)
    assert cut_to_shortest(mask, "first").tolist() == [[0, 2, 3], [1, 4, 5], [2, 3, 6]]
    rand = cut_to_shortest(mask, "random", torch.Generator().manual_seed(0))
    assert rand.shape == (3, 3) and bool((rand.diff(dim=1) > 0).all())
    assert all(set(r) <= set(torch.nonzero(m).squeeze(1).tolist()) for r, m in zip(rand.tolist(), mask))
    assert torch.equal(rand, cut_to_shortest(mask, "random", torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="'first' or 'random'"):
        cut_to_shortest(mask, "last")


def test_pad_to_longest_keeps_every_token_and_marks_the_padding():
    mask = _mask([[0, 2, 3, 7], [1, 4], [2, 3, 6]], 10)
    idx, valid = pad_to_longest(mask)
    assert idx.tolist() == [[0, 2, 3, 7], [1, 4, 1, 1], [2, 3, 6, 2]]
    assert valid.tolist() == [[True] * 4, [True, True, False, False], [True, True, True, False]]
    same = _mask([[0, 1], [5, 9]], 10)
    assert pad_to_longest(same)[1] is None and pad_to_longest(same)[0].tolist() == [[0, 1], [5, 9]]
    assert row_counts(mask).tolist() == [4, 2, 3] and row_counts(mask).dtype == torch.int32


# ---------------------------------------------------------------------------- grid block sampler
GRIDS = {1: (40,), 2: (8, 6), 3: (4, 6, 5)}


def _sampler(axes: int, collation: str = "first", targets: str = "union", **spec) -> GridBlockMaskSampler:
    spec = {"num_blocks": 3, "scale": (0.1, 0.2), "aspect_ratio": (0.75, 1.5), "leading_scale": (0.5, 1.0), **spec}
    return GridBlockMaskSampler(GRIDS[axes], BlockSpec(**spec), collation=collation, targets=targets, min_keep=2)


def _check_masks(sampler: GridBlockMaskSampler, masks: MaskSet, batch: int) -> None:
    n = sampler.num_tokens
    ctx, tgt, valid = masks.context_idx_BK, masks.target_idx_BMT, masks.context_valid_BK
    assert ctx.dtype == tgt.dtype == torch.int64 and ctx.shape[0] == tgt.shape[0] == batch
    assert int(ctx.min()) >= 0 and int(ctx.max()) < n and int(tgt.min()) >= 0 and int(tgt.max()) < n
    for b in range(batch):
        real = ctx[b] if valid is None else ctx[b][valid[b]]
        assert real.numel() >= sampler.min_keep and len(set(real.tolist())) == real.numel()
        assert not set(real.tolist()) & set(tgt[b].flatten().tolist()), "context and targets overlap"


@pytest.mark.parametrize("axes", [1, 2, 3])
@pytest.mark.parametrize("collation", ["first", "random", "pad"])
@pytest.mark.parametrize("targets", ["union", "blocks"])
def test_grid_sampler_shapes_disjointness_and_collation(axes, collation, targets):
    sampler = _sampler(axes, collation, targets)
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        masks = sampler(6, g)
        _check_masks(sampler, masks, 6)
        draw = sampler.sample_blocks(6, torch.Generator().manual_seed(seed))
        context_mask = ~draw.target_mask_BN
        counts = row_counts(context_mask)
        ctx = masks.context_idx_BK
        if collation == "pad":
            assert ctx.shape[1] == int(counts.max())
            valid = masks.context_valid_BK
            if valid is not None:
                assert valid.sum(1).tolist() == counts.tolist()
                assert torch.equal(ctx[~valid], ctx[:, :1].expand_as(ctx)[~valid])  # padding repeats a real index
        else:
            assert ctx.shape[1] == int(counts.min()) and masks.context_valid_BK is None
        if collation == "first":
            assert torch.equal(ctx, cut_to_shortest(context_mask, "first"))
        if targets == "blocks":
            assert masks.target_idx_BMT.shape == (6, 3, int(draw.sides.prod()))
        else:
            assert masks.target_idx_BMT.shape[:2] == (6, 1)


@pytest.mark.parametrize("axes", [1, 2, 3])
def test_grid_sampler_block_indices_are_the_drawn_boxes(axes):
    sampler = _sampler(axes, targets="blocks")
    draw = sampler.sample_blocks(5, torch.Generator().manual_seed(3))
    idx = sampler.block_indices(draw.corners_BMA, draw.sides)
    strides = torch.tensor([math.prod(sampler.grid[a + 1:]) for a in range(axes)])
    coords = torch.stack([idx // s % g for s, g in zip(strides, sampler.grid)], -1)  # (B, M, T, A)
    lo, hi = draw.corners_BMA[:, :, None, :], draw.corners_BMA[:, :, None, :] + draw.sides
    assert bool(((coords >= lo) & (coords < hi)).all())
    assert bool((idx.diff(dim=-1) > 0).all())  # raster order inside every block, no repeats
    union = torch.zeros(5, sampler.num_tokens, dtype=torch.bool).scatter_(1, idx.flatten(1), True)
    assert torch.equal(union, draw.target_mask_BN)  # leading_keep 1: the target mask is the blocks' union


def test_grid_sampler_block_sizes_follow_the_spec():
    one = _sampler(1, scale=(0.25, 0.25))
    assert bool((one.sample_sides(50, torch.Generator().manual_seed(0)) == 10).all())  # floor(40 * 0.25)
    two = _sampler(2, scale=(0.5, 0.5), aspect_ratio=(1.0, 1.0))
    assert two.sample_sides(3, torch.Generator().manual_seed(0)).tolist() == [[5, 5]] * 3  # area 24 -> round(4.9)
    three = _sampler(3, scale=(0.2, 0.2), aspect_ratio=(1.0, 1.0), leading_scale=(0.5, 0.5))
    assert three.sample_sides(3, torch.Generator().manual_seed(0)).tolist() == [[2, 2, 2]] * 3  # area floor(6)
    big = _sampler(2, scale=(1.0, 1.0), aspect_ratio=(4.0, 4.0))
    assert big.sample_sides(2, torch.Generator().manual_seed(0)).tolist() == [[8, 3]] * 2  # clamped to the grid


def test_grid_sampler_leading_keep_removes_late_steps_from_the_context():
    sampler = _sampler(1, num_blocks=1, scale=(0.1, 0.1), leading_keep=0.5)
    assert sampler.num_context_leading == 20
    masks = sampler(8, torch.Generator().manual_seed(0))
    assert int(masks.context_idx_BK.max()) < 20
    assert bool((masks.target_idx_BMT >= 0).all())


def test_grid_sampler_is_deterministic_given_the_generators_only():
    sampler = _sampler(3, "random")
    torch.manual_seed(0)
    a = sampler(4, torch.Generator().manual_seed(7))
    torch.manual_seed(1)  # the global RNG plays no part
    b = sampler(4, torch.Generator().manual_seed(7))
    assert torch.equal(a.context_idx_BK, b.context_idx_BK) and torch.equal(a.target_idx_BMT, b.target_idx_BMT)
    c = sampler(4, torch.Generator().manual_seed(8))
    assert not (torch.equal(a.context_idx_BK, c.context_idx_BK) and torch.equal(a.target_idx_BMT, c.target_idx_BMT))
    step = [sampler.sample_blocks(4, torch.Generator().manual_seed(s), torch.Generator().manual_seed(99)).sides
            for s in range(4)]
    assert all(torch.equal(step[0], s) for s in step)  # the step generator alone sets the block size


def test_grid_sampler_raises_instead_of_hanging():
    sampler = GridBlockMaskSampler((4, 4), BlockSpec(num_blocks=1, scale=(1.0, 1.0), aspect_ratio=(1.0, 1.0)))
    with pytest.raises(RuntimeError, match="4x4 token grid.*lower num_blocks or scale, or min_keep"):
        sampler(2, torch.Generator().manual_seed(0))


def test_grid_sampler_and_spec_reject_bad_arguments():
    with pytest.raises(ValueError, match="1 to 3 non-empty axes"):
        GridBlockMaskSampler((2, 2, 2, 2), BlockSpec())
    with pytest.raises(ValueError, match="1 to 3 non-empty axes"):
        GridBlockMaskSampler((0, 4), BlockSpec())
    with pytest.raises(ValueError, match="collation must be one of first, random, pad"):
        GridBlockMaskSampler((4,), BlockSpec(), collation="cut")
    with pytest.raises(ValueError, match="targets must be one of union, blocks"):
        GridBlockMaskSampler((4,), BlockSpec(), targets="all")
    with pytest.raises(ValueError, match=r"scale=\(0.5, 0.2\)"):
        BlockSpec(scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="num_blocks"):
        BlockSpec(num_blocks=0)
    with pytest.raises(ValueError, match="leading_keep"):
        BlockSpec(leading_keep=0.0)


@pytest.mark.parametrize("mode", ["faithful", "fixed"])
def test_the_video_generator_is_the_core_sampler(mode):
    from jepa.modalities.video.config import MaskGeneratorConfig
    from jepa.modalities.video.masks import BlockMaskGenerator

    cfg = MaskGeneratorConfig(spatial_scale=(0.1, 0.3), temporal_scale=(0.5, 1.0), num_blocks=3, max_temporal_keep=0.75)
    video = BlockMaskGenerator((4, 6, 5), cfg, mode, min_keep=3)
    core = GridBlockMaskSampler((4, 6, 5), BlockSpec(3, (0.1, 0.3), (0.75, 1.5), (0.5, 1.0), 0.75),
                                collation="first" if mode == "faithful" else "random", min_keep=3)
    for seed in range(5):
        a, b = video(5, torch.Generator().manual_seed(seed)), core(5, torch.Generator().manual_seed(seed))
        assert torch.equal(a.context_idx_BK, b.context_idx_BK) and torch.equal(a.target_idx_BMT, b.target_idx_BMT)


# ---------------------------------------------------------------------------- transformer bases
class _SeqEncoder(TransformerEncoder):
    """A minimal subclass, as a plugin writes one: (B, C, L) sequences, one token per step. (This test
    module uses ``from __future__ import annotations``, so the subclass declares no class-level
    attributes: its ``embed_tokens`` reads only modules and buffers.)"""

    def __init__(self, in_chans: int = 3, dim: int = 16, num_tokens: int = 6):
        super().__init__()
        check_sincos_width("_SeqEncoder", dim, num_axes=1)
        self.proj = nn.Linear(in_chans, dim)
        self.register_buffer("pos_embed", sincos_1d(dim, num_tokens).unsqueeze(0))
        self.build_blocks(dim, depth=2, num_heads=2, mlp_dim=32, drop_path=0.0)
        self.apply(init_weights)

    def embed_tokens(self, x: Tensor) -> Tensor:
        return self.proj(x.transpose(1, 2)) + self.pos_embed


class _SeqPredictor(TransformerPredictor):
    def __init__(self, dim: int = 16, pdim: int = 8, num_tokens: int = 6):
        super().__init__()
        self.mask_tokens = nn.Parameter(torch.zeros(2, 1, pdim))
        self.register_buffer("predictor_pos_embed", sincos_1d(pdim, num_tokens).unsqueeze(0))
        self.build_layers(dim, pdim, depth=1, num_heads=2, mlp_ratio=2.0)
        self.apply(init_weights)

    def mask_token_for(self, mask_index: int) -> Tensor:
        return self.mask_tokens[mask_index]


def test_the_subclassing_api_gives_forward_layers_and_export():
    torch.manual_seed(0)
    enc, pred = _SeqEncoder().eval(), _SeqPredictor().eval()
    assert (enc.embed_dim, enc.depth, enc.grad_checkpointing) == (16, 2, False)
    assert (pred.embed_dim, pred.predictor_dim, pred.depth) == (16, 8, 1)
    x, keep, tgt = torch.randn(2, 3, 6), torch.tensor([[0, 2, 3], [1, 4, 5]]), torch.tensor([[1, 5], [0, 3]])
    with torch.no_grad():
        full, kept = enc(x), enc(x, keep)
        assert full.shape == (2, 6, 16) and kept.shape == (2, 3, 16)
        layers = enc.forward_layers(x, 2)
        assert len(layers) == 2 and torch.equal(layers[-1], full)
        assert pred(kept, keep, tgt, mask_index=1).shape == (2, 2, 16)
        scripted = torch.jit.script(enc)
        assert torch.equal(scripted(x), full) and torch.equal(scripted(x, keep), kept)
    assert set(enc.state_dict()) >= {"pos_embed", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.bias", "norm.weight"}
    assert set(pred.state_dict()) >= {"predictor_embed.weight", "predictor_blocks.0.norm1.weight",
                                      "predictor_norm.bias", "predictor_proj.weight"}


def test_missing_hooks_say_which_method_to_write():
    class NoHooks(TransformerEncoder):
        def __init__(self):
            super().__init__()
            self.build_blocks(8, 1, 2, 16, 0.0)

    with pytest.raises(NotImplementedError, match="embed_tokens"):
        NoHooks()(torch.zeros(1, 2, 8))

    class NoToken(TransformerPredictor):
        def __init__(self):
            super().__init__()
            self.register_buffer("predictor_pos_embed", torch.zeros(1, 4, 8))
            self.build_layers(8, 8, 1, 2, 2.0)

    with pytest.raises(NotImplementedError, match="mask_token_for"):
        NoToken()(torch.zeros(1, 2, 8), torch.tensor([[0, 1]]), torch.tensor([[2]]))


# ---------------------------------------------------------------------------- FLOPs
def test_core_flops_are_the_image_and_video_formulas():
    from jepa.modalities.image.flops import encoder_forward_flops as image_encoder_flops

    kw = dict(num_patches=256, embed_dim=1280, depth=32, mlp_dim=5120)
    assert nn_flops.encoder_forward_flops(100, patch_values=3 * 14 ** 2, **kw) == image_encoder_flops(
        100, patch_size=14, in_chans=3, **kw)
    assert nn_flops.block_flops(10, 8, 32) == 2 * 10 * (4 * 64 + 2 * 8 * 32) + 4 * 100 * 8
    assert nn_flops.predictor_forward_flops(4, 2, embed_dim=8, predictor_dim=4, depth=1, mlp_dim=16) == (
        2 * 4 * 8 * 4 + nn_flops.block_flops(6, 4, 16) + 2 * 2 * 4 * 8)
