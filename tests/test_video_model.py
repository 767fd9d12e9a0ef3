"""The video ViT encoder/predictor against the V-JEPA architecture: sizes in closed form, the
authors' 3-D sin-cos layout, a plain-PyTorch float64 reference forward, any frame count and
resolution, TorchScript, gradient checkpointing, init, and the FLOPs model."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from jepa.modalities.image.flops import encoder_forward_flops, predictor_forward_flops
from jepa.modalities.video.config import VideoConfig
from jepa.modalities.video.flops import expected_mask_tokens, train_flops_per_clip
from jepa.modalities.video.vit import TubeletEmbed, VideoViTEncoder, VideoViTPredictor
from jepa.nn.config import VIT_ARCHS
from jepa.nn.pos_embed import sincos_3d

SMALL = dict(num_frames=4, img_size=16, patch_size=8, tubelet_size=2, in_chans=3, embed_dim=48, depth=2,
             num_heads=4, mlp_dim=80)  # 2 x 2 x 2 = 8 tokens
PRED = dict(grid_t=2, grid_size=2, embed_dim=48, predictor_dim=24, depth=2, num_heads=4, mlp_ratio=3.0,
            num_mask_tokens=2)


def script(module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated, still supported
        return torch.jit.script(module)


def perturbed(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Randomise every parameter (biases, norms, mask tokens) so the reference covers them all."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module


# ---------------------------------------------------------------------- reference, from the authors' layout
def authors_sincos(dim: int, gt: int, gh: int, gw: int, uniform_power: bool) -> np.ndarray:
    """numpy table in the authors' convention: meshgrid(h, d, w) with 'xy' indexing, codes d | h | w."""
    grid_h, grid_d, grid_w = np.meshgrid(np.arange(gh, dtype=float), np.arange(gt, dtype=float),
                                         np.arange(gw, dtype=float))

    def one_axis(width, pos):
        omega = 1.0 / 10000 ** (np.arange(width // 2, dtype=float) / (width / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    if uniform_power:
        wd = wh = ww = int(np.ceil(dim / 6) * 2)
    else:
        wd, wh, ww = dim // 2, dim // 4, dim // 4
    table = np.concatenate([one_axis(wd, grid_d), one_axis(wh, grid_h), one_axis(ww, grid_w)], axis=1)
    return table[:, :dim]


def ref_block(sd: dict, prefix: str, x: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, n, d = x.shape
    hd = d // num_heads
    h = F.layer_norm(x, (d,), sd[prefix + "norm1.weight"], sd[prefix + "norm1.bias"], eps=1e-6)
    qkv = h @ sd[prefix + "attn.qkv.weight"].T + sd[prefix + "attn.qkv.bias"]
    q, k, v = qkv.view(b, n, 3, num_heads, hd).permute(2, 0, 3, 1, 4)
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
    x = x + (attn @ v).transpose(1, 2).reshape(b, n, d) @ sd[prefix + "attn.proj.weight"].T + sd[prefix + "attn.proj.bias"]
    h = F.layer_norm(x, (d,), sd[prefix + "norm2.weight"], sd[prefix + "norm2.bias"], eps=1e-6)
    h = F.gelu(h @ sd[prefix + "mlp.fc1.weight"].T + sd[prefix + "mlp.fc1.bias"])
    return x + h @ sd[prefix + "mlp.fc2.weight"].T + sd[prefix + "mlp.fc2.bias"]


def ref_encoder(sd: dict, x: torch.Tensor, num_heads: int, keep=None, pos=None) -> torch.Tensor:
    """float64 encoder: conv3d tubelets (stride = kernel), positions, blocks, final norm."""
    sd = {k: v.double() for k, v in sd.items()}
    d = sd["norm.weight"].shape[0]
    tokens = F.conv3d(x.double(), sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"],
                      stride=sd["patch_embed.proj.weight"].shape[2:]).flatten(2).transpose(1, 2)
    tokens = tokens + (sd["pos_embed"] if pos is None else torch.as_tensor(pos).double())
    if keep is not None:
        tokens = torch.stack([tokens[i, keep[i]] for i in range(x.shape[0])])
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        tokens = ref_block(sd, f"blocks.{i}.", tokens, num_heads)
    return F.layer_norm(tokens, (d,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)


def ref_predictor(sd: dict, ctx, ctx_idx, tgt_idx, num_heads: int, mask_index: int) -> torch.Tensor:
    sd = {k: v.double() for k, v in sd.items()}
    k = ctx_idx.shape[1]
    pos = sd["predictor_pos_embed"][0]
    x_ctx = ctx.double() @ sd["predictor_embed.weight"].T + sd["predictor_embed.bias"] + pos[ctx_idx]
    x_tgt = sd["mask_tokens"][mask_index] + pos[tgt_idx]
    x = torch.cat([x_ctx, x_tgt], 1)
    depth = len({k.split(".")[1] for k in sd if k.startswith("predictor_blocks.")})
    for i in range(depth):
        x = ref_block(sd, f"predictor_blocks.{i}.", x, num_heads)
    x = F.layer_norm(x, (x.shape[-1],), sd["predictor_norm.weight"], sd["predictor_norm.bias"], eps=1e-6)[:, k:]
    return x @ sd["predictor_proj.weight"].T + sd["predictor_proj.bias"]


# ---------------------------------------------------------------------- positions
@pytest.mark.parametrize("dim, grid, uniform", [(1024, (8, 14, 14), True), (48, (2, 3, 5), True),
                                                (50, (3, 2, 2), True), (64, (2, 3, 4), False)])
def test_sincos_3d_matches_the_authors_layout(dim, grid, uniform):
    ours = sincos_3d(dim, *grid, uniform_power=uniform)
    assert ours.shape == (math.prod(grid), dim) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, torch.from_numpy(authors_sincos(dim, *grid, uniform)).float(), atol=1e-6, rtol=0)
    # the first code is the time step: tokens of one time step share it
    width = 2 * math.ceil(dim / 6) if uniform else dim // 2
    per_step = ours.view(grid[0], -1, dim)[:, :, :width]
    assert torch.equal(per_step, per_step[:, :1].expand_as(per_step))


def test_sincos_3d_scriptable_and_validates():
    assert torch.equal(script(sincos_3d)(48, 2, 3, 4, True, None), sincos_3d(48, 2, 3, 4))
    with pytest.raises(ValueError, match="multiple of 8"):
        sincos_3d(44, 2, 2, 2, uniform_power=False)
    with pytest.raises(ValueError, match="non-empty"):
        sincos_3d(48, 0, 2, 2)


# ---------------------------------------------------------------------- parameter counts
def closed_form_encoder(d, depth, mlp, patch, tubelet=2, frames=16, img=224, c=3):
    """(trainable parameters, stored position table) of the video ViT."""
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * mlp + mlp) + (mlp * d + d)
    n = (frames // tubelet) * (img // patch) ** 2
    return c * tubelet * patch * patch * d + d + depth * block + 2 * d, n * d


def closed_form_predictor(d, n, p=384, depth=12, ratio=4, mask_tokens=2):
    h = p * ratio
    block = 4 * p + (3 * p * p + 3 * p) + (p * p + p) + (p * h + h) + (h * p + p)
    return (d * p + p) + mask_tokens * p + depth * block + 2 * p + (p * d + d), n * p


def trainable(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("arch", list(VIT_ARCHS))
def test_parameter_counts(arch):
    d, depth, heads, mlp = VIT_ARCHS[arch]
    with torch.device("meta"):
        enc = VideoViTEncoder(16, 224, 16, 2, 3, d, depth, heads, mlp)
        pred = VideoViTPredictor(8, 14, d, 384, 12, heads if 384 % heads == 0 else 12, num_mask_tokens=2)
    assert (trainable(enc), enc.pos_embed.numel()) == closed_form_encoder(d, depth, mlp, 16)
    assert (trainable(pred), pred.predictor_pos_embed.numel()) == closed_form_predictor(d, 8 * 14 * 14)


def test_vit_large_literal_sizes():
    """V-JEPA ViT-L/16, 16 frames at 224, tubelet 2: 1568 tokens."""
    cfg = VideoConfig()
    from jepa.modalities.video import VideoModality

    with torch.device("meta"):
        enc, pred = VideoModality(cfg).build_encoder(), VideoModality(cfg).build_predictor()
    assert enc.num_patches == 1568 and enc.patch_embed.proj.kernel_size == (2, 16, 16)
    assert trainable(enc) == 303_885_312 and enc.pos_embed.numel() == 1_605_632
    assert trainable(pred) == 22_082_944 and pred.predictor_pos_embed.numel() == 602_112
    assert pred.num_heads == 16 and pred.mask_tokens.shape == (2, 1, 384)


def test_init_follows_the_authors():
    torch.manual_seed(0)
    enc = VideoViTEncoder(4, 32, 8, 2, 3, 96, 2, 4, 384)
    pred = VideoViTPredictor(2, 4, 96, 48, 2, 4)
    assert torch.equal(pred.mask_tokens, torch.zeros_like(pred.mask_tokens))  # zero_init_mask_tokens
    for name, p in list(enc.named_parameters()) + list(pred.named_parameters()):
        if "norm" in name:
            assert torch.all(p == (1 if name.endswith("weight") else 0)), name
        elif name.endswith("bias"):
            assert torch.all(p == 0), name
        elif name != "mask_tokens":
            assert abs(p.std().item() - 0.02) < 0.2 * 0.02 and p.abs().max() < 0.2, name


def test_constructor_validates():
    with pytest.raises(ValueError, match="num_heads=5"):
        VideoViTEncoder(**{**SMALL, "num_heads": 5})
    with pytest.raises(ValueError, match="tubelet_size=2"):
        VideoViTEncoder(**{**SMALL, "num_frames": 5})
    with pytest.raises(ValueError, match="patch_size=8"):
        VideoViTEncoder(**{**SMALL, "img_size": 20})
    with pytest.raises(ValueError, match="num_heads=5"):
        VideoViTPredictor(**{**PRED, "num_heads": 5})


# ---------------------------------------------------------------------- forward vs reference
def test_tubelet_embed_equals_conv3d():
    torch.manual_seed(0)
    emb = perturbed(TubeletEmbed(3, 16, 2, 4))
    x = torch.randn(2, 3, 6, 8, 12)
    expected = emb.proj(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(emb(x), expected, atol=1e-5, rtol=1e-5)


def test_encoder_matches_reference_full_and_kept():
    torch.manual_seed(0)
    enc = perturbed(VideoViTEncoder(**SMALL)).eval()
    x = torch.randn(3, 3, 4, 16, 16)
    keep = torch.stack([torch.randperm(8)[:5].sort().values for _ in range(3)])
    sd = enc.state_dict()
    with torch.no_grad():
        full, kept = enc(x), enc(x, keep)
    assert full.shape == (3, 8, 48) and kept.shape == (3, 5, 48)
    torch.testing.assert_close(full.double(), ref_encoder(sd, x, 4), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(kept.double(), ref_encoder(sd, x, 4, keep=keep), atol=2e-5, rtol=1e-5)
    assert not torch.allclose(kept, full[torch.arange(3)[:, None], keep], atol=1e-3)  # attention saw only the context


@pytest.mark.parametrize("mask_index", [0, 1])
def test_predictor_matches_reference(mask_index):
    torch.manual_seed(1)
    pred = perturbed(VideoViTPredictor(**PRED), seed=1).eval()
    ctx = torch.randn(2, 3, 48)
    perm = torch.stack([torch.randperm(8) for _ in range(2)])
    ctx_idx, tgt_idx = perm[:, :3], perm[:, 3:8]
    with torch.no_grad():
        out = pred(ctx, ctx_idx, tgt_idx, mask_index)
    assert out.shape == (2, 5, 48)
    torch.testing.assert_close(out.double(), ref_predictor(pred.state_dict(), ctx, ctx_idx, tgt_idx, 4, mask_index),
                               atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="mask_index=2"):
        pred(ctx, ctx_idx, tgt_idx, 2)


def test_forward_layers():
    torch.manual_seed(2)
    enc = perturbed(VideoViTEncoder(**{**SMALL, "depth": 3})).eval()
    x = torch.randn(2, 3, 4, 16, 16)
    with torch.no_grad():
        layers = enc.forward_layers(x, num_last=2)
        torch.testing.assert_close(layers[-1], enc(x))
        two_blocks = {k: v for k, v in enc.state_dict().items() if not k.startswith("blocks.2.")}
        torch.testing.assert_close(layers[0].double(), ref_encoder(two_blocks, x, 4), atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="num_last=4"):
        enc.forward_layers(x, num_last=4)


@pytest.mark.parametrize("frames, h, w", [(6, 16, 16), (2, 24, 16), (8, 8, 32)])
def test_other_frame_counts_and_sizes_use_their_grid_table(frames, h, w):
    torch.manual_seed(3)
    enc = perturbed(VideoViTEncoder(**SMALL)).eval()
    x = torch.randn(1, 3, frames, h, w)
    with torch.no_grad():
        out = enc(x)
    grid = (frames // 2, h // 8, w // 8)
    assert out.shape == (1, math.prod(grid), 48)
    pos = authors_sincos(48, *grid, True)
    torch.testing.assert_close(out.double(), ref_encoder(enc.state_dict(), x, 4, pos=pos), atol=2e-5, rtol=1e-5)


def test_bad_clip_sizes_raise():
    enc = VideoViTEncoder(**SMALL).eval()
    with pytest.raises(ValueError, match="5 frames at 16x16"):
        enc(torch.randn(1, 3, 5, 16, 16))
    with pytest.raises(ValueError, match="divisible by 8"):
        enc(torch.randn(1, 3, 4, 16, 12))
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        enc(torch.randn(1, 3, 16, 16))


def test_scripted_equals_eager():
    torch.manual_seed(4)
    enc, pred = perturbed(VideoViTEncoder(**SMALL)).eval(), perturbed(VideoViTPredictor(**PRED)).eval()
    s_enc, s_pred = script(enc), script(pred)
    with torch.no_grad():
        for shape in ((2, 3, 4, 16, 16), (1, 3, 6, 24, 16)):
            x = torch.randn(shape)
            torch.testing.assert_close(s_enc(x), enc(x), atol=1e-6, rtol=1e-6)
        keep = torch.tensor([[0, 3, 5]])
        x = torch.randn(1, 3, 4, 16, 16)
        torch.testing.assert_close(s_enc(x, keep), enc(x, keep), atol=1e-6, rtol=1e-6)
        ctx, ci, ti = torch.randn(2, 3, 48), torch.randint(0, 8, (2, 3)), torch.randint(0, 8, (2, 4))
        torch.testing.assert_close(s_pred(ctx, ci, ti, 1), pred(ctx, ci, ti, 1), atol=1e-6, rtol=1e-6)


def test_grad_checkpointing_same_grads():
    torch.manual_seed(5)
    enc, pred = perturbed(VideoViTEncoder(**SMALL)).train(), perturbed(VideoViTPredictor(**PRED)).train()
    x, keep = torch.randn(2, 3, 4, 16, 16), torch.tensor([[0, 2, 4], [1, 3, 5]])
    ctx, ti = torch.randn(2, 3, 48), torch.tensor([[6, 7], [0, 7]])
    for module, run in ((enc, lambda: enc(x, keep)), (pred, lambda: pred(ctx, keep, ti, 1))):
        grads = []
        for enable in (False, True):
            module.set_grad_checkpointing(enable)
            module.zero_grad()
            run().square().sum().backward()
            grads.append({n: p.grad.clone() for n, p in module.named_parameters()})
        for name in grads[0]:
            torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)
    assert pred.mask_tokens.grad[0].abs().sum() == 0 and pred.mask_tokens.grad[1].abs().sum() > 0


# ---------------------------------------------------------------------- FLOPs
def _measured(module, fn) -> int:
    for m in module.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False  # explicit matmuls, so FlopCounterMode sees the attention
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def test_flop_formulas_match_flop_counter():
    enc, pred = VideoViTEncoder(**SMALL).eval(), VideoViTPredictor(**PRED).eval()
    x, keep = torch.randn(1, 3, 4, 16, 16), torch.arange(5)[None]
    kw = dict(num_patches=8, embed_dim=48, depth=2, mlp_dim=80, patch_size=8, in_chans=3 * 2)  # C * tubelet
    assert _measured(enc, lambda: enc(x)) == encoder_forward_flops(8, **kw)
    assert _measured(enc, lambda: enc(x, keep)) == encoder_forward_flops(5, **kw)
    ctx, ti = torch.randn(1, 5, 48), torch.arange(5, 8)[None]
    assert _measured(pred, lambda: pred(ctx, keep, ti)) == predictor_forward_flops(
        5, 3, embed_dim=48, predictor_dim=24, depth=2, mlp_dim=72)


def test_train_flops_vit_large():
    cfg = VideoConfig()
    (k1, t1), (k2, t2) = expected_mask_tokens(cfg.grid, cfg.mask)
    assert k1 + t1 == k2 + t2 == 1568
    assert 0.3 < k1 / 1568 < 0.45 and 0.12 < k2 / 1568 < 0.25, (k1, k2)  # short-range / long-range masks
    enc = dict(num_patches=1568, embed_dim=1024, depth=24, mlp_dim=4096, patch_size=16, in_chans=6)
    pred = dict(embed_dim=1024, predictor_dim=384, depth=12, mlp_dim=1536)
    expected = encoder_forward_flops(1568, **enc) + sum(
        3 * (encoder_forward_flops(k, **enc) + predictor_forward_flops(k, t, **pred)) for k, t in ((k1, t1), (k2, t2)))
    assert train_flops_per_clip(cfg) == pytest.approx(expected)
    assert 3.4e12 < expected < 3.8e12  # ~3.6 TFLOPs per clip
