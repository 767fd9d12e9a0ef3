"""The image ViT encoder/predictor against the method notes (docs/method/ijepa.md): sizes, a plain-PyTorch reference forward,
any-resolution positions, TorchScript, gradient checkpointing, init, and the FLOPs model."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from jepa.modalities.image.config import ImageConfig, MaskConfig
from jepa.modalities.image.flops import (encoder_forward_flops, expected_mask_tokens, predictor_forward_flops,
                                         train_flops_per_image)
from jepa.modalities.image.masks import MultiBlockMaskSampler
from jepa.modalities.image.pos_embed import sincos_2d
from jepa.modalities.image.vit import ViTEncoder, ViTPredictor
from jepa.nn.config import VIT_ARCHS

SMALL = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=64, depth=2, num_heads=4, mlp_dim=160)
PRED = dict(grid_size=4, embed_dim=64, predictor_dim=32, depth=2, num_heads=4, mlp_ratio=3.0)


def script(module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated, still supported
        return torch.jit.script(module)


def perturbed(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Randomise every parameter (biases, LayerNorm affine) so the reference test covers them all."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module


# ---------------------------------------------------------------------- reference, from docs/method/ijepa.md
def mae_sincos(embed_dim: int, grid_h: int, grid_w: int) -> np.ndarray:
    """The MAE table in numpy: meshgrid with w first, first half of channels from grid[0]."""
    grid = np.stack(np.meshgrid(np.arange(grid_w, dtype=np.float32), np.arange(grid_h, dtype=np.float32)), 0)

    def one_axis(dim, pos):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_axis(embed_dim // 2, grid[0]), one_axis(embed_dim // 2, grid[1])], axis=1)


def ref_block(sd: dict, prefix: str, x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Pre-norm block with explicit softmax attention."""
    b, n, d = x.shape
    hd = d // num_heads
    h = F.layer_norm(x, (d,), sd[prefix + "norm1.weight"], sd[prefix + "norm1.bias"], eps=1e-6)
    qkv = h @ sd[prefix + "attn.qkv.weight"].T + sd[prefix + "attn.qkv.bias"]
    q, k, v = qkv.view(b, n, 3, num_heads, hd).permute(2, 0, 3, 1, 4)
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(b, n, d)
    x = x + out @ sd[prefix + "attn.proj.weight"].T + sd[prefix + "attn.proj.bias"]
    h = F.layer_norm(x, (d,), sd[prefix + "norm2.weight"], sd[prefix + "norm2.bias"], eps=1e-6)
    h = F.gelu(h @ sd[prefix + "mlp.fc1.weight"].T + sd[prefix + "mlp.fc1.bias"])
    return x + h @ sd[prefix + "mlp.fc2.weight"].T + sd[prefix + "mlp.fc2.bias"]


def ref_encoder(sd: dict, x: torch.Tensor, patch: int, num_heads: int, keep=None, pos=None) -> torch.Tensor:
    """float64 encoder straight from docs/method/ijepa.md; ``pos`` defaults to the stored table."""
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    b, c, hh, ww = x.shape
    d = sd["norm.weight"].shape[0]
    patches = x.view(b, c, hh // patch, patch, ww // patch, patch).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * patch * patch)
    tokens = patches @ sd["patch_embed.proj.weight"].reshape(d, -1).T + sd["patch_embed.proj.bias"]
    tokens = tokens + (sd["pos_embed"] if pos is None else pos.double())
    if keep is not None:
        tokens = torch.stack([tokens[i, keep[i]] for i in range(b)])
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        tokens = ref_block(sd, f"blocks.{i}.", tokens, num_heads)
    return F.layer_norm(tokens, (d,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)


def ref_predictor(sd: dict, ctx, ctx_idx, tgt_idx, num_heads: int) -> torch.Tensor:
    sd = {k: v.double() for k, v in sd.items()}
    b, k = ctx_idx.shape
    pos = sd["predictor_pos_embed"][0]
    x_ctx = ctx.double() @ sd["predictor_embed.weight"].T + sd["predictor_embed.bias"] + pos[ctx_idx]
    x_tgt = sd["mask_token"] + pos[tgt_idx]
    x = torch.cat([x_ctx, x_tgt], 1)
    depth = len({k.split(".")[1] for k in sd if k.startswith("predictor_blocks.")})
    for i in range(depth):
        x = ref_block(sd, f"predictor_blocks.{i}.", x, num_heads)
    p = x.shape[-1]
    x = F.layer_norm(x, (p,), sd["predictor_norm.weight"], sd["predictor_norm.bias"], eps=1e-6)[:, k:]
    return x @ sd["predictor_proj.weight"].T + sd["predictor_proj.bias"]


# ---------------------------------------------------------------------- positions
@pytest.mark.parametrize("dim, gh, gw", [(64, 4, 4), (384, 14, 14), (32, 3, 5)])
def test_sincos_matches_mae_convention(dim, gh, gw):
    ours = sincos_2d(dim, gh, gw)
    assert ours.shape == (gh * gw, dim) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, torch.from_numpy(mae_sincos(dim, gh, gw)).float(), atol=1e-6, rtol=0)
    # first half encodes the column: tokens in one column share it
    col0 = ours.view(gh, gw, dim)[:, 0, : dim // 2]
    assert torch.equal(col0, col0[:1].expand_as(col0)) and not torch.equal(ours[0], ours[1])


def test_sincos_scriptable_and_validates():
    scripted = script(sincos_2d)
    assert torch.equal(scripted(64, 5, 7, None), sincos_2d(64, 5, 7))
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_2d(66, 4, 4)


# ---------------------------------------------------------------------- parameter counts
def closed_form_encoder(d, depth, mlp, patch, img=224, c=3):
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * mlp + mlp) + (mlp * d + d)
    n = (img // patch) ** 2
    return c * patch * patch * d + d + n * d + depth * block + 2 * d


def closed_form_predictor(d, n, p=384, depth=12, ratio=4):
    h = p * ratio
    block = 4 * p + (3 * p * p + 3 * p) + (p * p + p) + (p * h + h) + (h * p + p)
    return (d * p + p) + p + n * p + depth * block + 2 * p + (p * d + d)


def count(module: torch.nn.Module) -> int:
    return sum(t.numel() for t in module.state_dict().values())  # parameters + stored tables


@pytest.mark.parametrize("patch", [14, 16])
@pytest.mark.parametrize("arch", list(VIT_ARCHS))
def test_parameter_counts(arch, patch):
    d, depth, heads, mlp = VIT_ARCHS[arch]
    with torch.device("meta"):
        enc = ViTEncoder(224, patch, 3, d, depth, heads, mlp)
        pred = ViTPredictor(224 // patch, d, 384, 12, heads if 384 % heads == 0 else 12)  # ViT-g xformers: 22 heads
    assert count(enc) == closed_form_encoder(d, depth, mlp, patch)
    assert count(pred) == closed_form_predictor(d, (224 // patch) ** 2)
    assert enc.blocks[0].mlp.fc1.out_features == mlp


def test_vit_huge_literal_sizes():
    with torch.device("meta"):
        enc = ViTEncoder(224, 14, 3, 1280, 32, 16, 5120)
        pred = ViTPredictor(16, 1280, 384, 12, 16)
    assert round(count(enc) / 1e6, 1) == 630.8 and count(enc) == 630_762_240
    assert count(enc) - enc.pos_embed.numel() == 630_434_560  # trainable parameters
    assert count(pred) == 22_377_728


RELEASED_ENCODER_KEYS = ["pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"] + [
    f"blocks.{i}.{m}.{w}" for i in range(2) for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
    for w in ("weight", "bias")] + ["norm.weight", "norm.bias"]


def test_state_dict_layout_is_the_released_one():
    enc, pred = ViTEncoder(**SMALL), ViTPredictor(**PRED)
    assert sorted(enc.state_dict()) == sorted(RELEASED_ENCODER_KEYS)
    expected_pred = ["mask_token", "predictor_pos_embed", "predictor_embed.weight", "predictor_embed.bias",
                     "predictor_norm.weight", "predictor_norm.bias", "predictor_proj.weight", "predictor_proj.bias"]
    expected_pred += [k.replace("blocks.", "predictor_blocks.") for k in RELEASED_ENCODER_KEYS if k.startswith("blocks.")]
    assert sorted(pred.state_dict()) == sorted(expected_pred)
    assert "pos_embed" not in dict(enc.named_parameters()) and enc.pos_embed.shape == (1, 16, 64)
    assert pred.mask_token.shape == (1, 1, 32) and pred.predictor_pos_embed.shape == (1, 16, 32)


def test_init_follows_spec():
    torch.manual_seed(0)
    enc = ViTEncoder(img_size=64, patch_size=8, in_chans=3, embed_dim=128, depth=2, num_heads=4, mlp_dim=512)
    pred = ViTPredictor(8, 128, 64, 2, 4)
    for name, p in list(enc.named_parameters()) + list(pred.named_parameters()):
        if "norm" in name:
            assert torch.all(p == (1 if name.endswith("weight") else 0)), name
        elif name.endswith("bias"):
            assert torch.all(p == 0), name
        else:  # Linear / conv weights and the mask token
            assert abs(p.std().item() - 0.02) < 0.2 * 0.02 and p.abs().max() < 0.2, name
    torch.testing.assert_close(enc.pos_embed[0], sincos_2d(128, 8, 8))


def test_constructor_validates():
    with pytest.raises(ValueError, match="num_heads=5"):
        ViTEncoder(**{**SMALL, "num_heads": 5})
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ViTEncoder(**{**SMALL, "img_size": 30})
    with pytest.raises(ValueError, match="num_heads=3"):
        ViTPredictor(**{**PRED, "num_heads": 3})


# ---------------------------------------------------------------------- forward vs reference
def test_encoder_matches_reference_full_and_kept():
    torch.manual_seed(0)
    enc = perturbed(ViTEncoder(**SMALL)).eval()
    x = torch.randn(3, 3, 32, 32)
    keep = torch.stack([torch.randperm(16)[:7].sort().values for _ in range(3)])
    sd = enc.state_dict()
    with torch.no_grad():
        full = enc(x)
        kept = enc(x, keep)
    assert full.shape == (3, 16, 64) and kept.shape == (3, 7, 64)
    torch.testing.assert_close(full.double(), ref_encoder(sd, x, 8, 4), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(kept.double(), ref_encoder(sd, x, 8, 4, keep=keep), atol=2e-5, rtol=1e-5)
    # keeping tokens is not the same as slicing the full output (attention sees only the context)
    assert not torch.allclose(kept, full[torch.arange(3)[:, None], keep], atol=1e-3)


def test_predictor_matches_reference():
    torch.manual_seed(1)
    pred = perturbed(ViTPredictor(**PRED), seed=1).eval()
    ctx = torch.randn(2, 6, 64)
    perm = torch.stack([torch.randperm(16) for _ in range(2)])
    ctx_idx, tgt_idx = perm[:, :6], perm[:, 6:11]
    with torch.no_grad():
        out = pred(ctx, ctx_idx, tgt_idx)
    assert out.shape == (2, 5, 64)
    torch.testing.assert_close(out.double(), ref_predictor(pred.state_dict(), ctx, ctx_idx, tgt_idx, 4),
                               atol=2e-5, rtol=1e-5)


def test_forward_layers():
    torch.manual_seed(2)
    enc = perturbed(ViTEncoder(**{**SMALL, "depth": 3})).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        layers = enc.forward_layers(x, num_last=2)
        assert len(layers) == 2
        torch.testing.assert_close(layers[-1], enc(x))
        # the second-to-last block's output, normed with the final norm
        sd = enc.state_dict()
        two_blocks = {k: v for k, v in sd.items() if not k.startswith("blocks.2.")}
        torch.testing.assert_close(layers[0].double(), ref_encoder(two_blocks, x, 8, 4), atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="num_last=4"):
        enc.forward_layers(x, num_last=4)


# ---------------------------------------------------------------------- any resolution
def test_any_resolution_uses_the_grid_table():
    torch.manual_seed(3)
    enc = perturbed(ViTEncoder(img_size=224, patch_size=14, in_chans=3, embed_dim=32, depth=1, num_heads=2,
                               mlp_dim=64)).eval()
    x = torch.randn(1, 3, 280, 280)
    with torch.no_grad():
        out = enc(x)
    assert out.shape == (1, 400, 32)
    pos = torch.from_numpy(mae_sincos(32, 20, 20)).float()
    torch.testing.assert_close(out.double(), ref_encoder(enc.state_dict(), x, 14, 2, pos=pos), atol=2e-5, rtol=1e-5)
    # a wrong table (e.g. the 16x16 one interpolated or reused) would give different outputs
    wrong = torch.from_numpy(mae_sincos(32, 16, 25)).float()
    assert not torch.allclose(out.double(), ref_encoder(enc.state_dict(), x, 14, 2, pos=wrong), atol=1e-3)


def test_non_square_and_bad_sizes():
    enc = ViTEncoder(**SMALL).eval()
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        out = enc(x)
    torch.testing.assert_close(out.double(), ref_encoder(enc.state_dict(), x, 8, 4,
                                                         pos=torch.from_numpy(mae_sincos(64, 5, 6)).float()),
                               atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not divisible by the patch size 8"):
        enc(torch.randn(1, 3, 36, 32))


def test_other_resolution_in_bfloat16_model():
    enc = ViTEncoder(**SMALL).to(torch.bfloat16).eval()
    with torch.no_grad():
        out = enc(torch.randn(1, 3, 48, 48, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (1, 36, 64)


# ---------------------------------------------------------------------- TorchScript
def test_scripted_equals_eager_at_two_resolutions():
    torch.manual_seed(4)
    enc = perturbed(ViTEncoder(**SMALL)).eval()
    scripted = script(enc)
    keep = torch.tensor([[0, 3, 5, 9, 15]])
    with torch.no_grad():
        for size in (32, 48):
            x = torch.randn(2, 3, size, size)
            torch.testing.assert_close(scripted(x), enc(x), atol=1e-6, rtol=1e-6)
        x = torch.randn(1, 3, 32, 32)
        torch.testing.assert_close(scripted(x, keep), enc(x, keep), atol=1e-6, rtol=1e-6)
        for a, b in zip(scripted.forward_layers(x, 2), enc.forward_layers(x, 2)):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    pred = perturbed(ViTPredictor(**PRED)).eval()
    sp = script(pred)
    ctx, ci, ti = torch.randn(2, 5, 64), torch.randint(0, 16, (2, 5)), torch.randint(0, 16, (2, 3))
    with torch.no_grad():
        torch.testing.assert_close(sp(ctx, ci, ti), pred(ctx, ci, ti), atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------- gradient checkpointing
def _grads(module, run):
    module.zero_grad()
    run().square().sum().backward()
    return {n: p.grad.clone() for n, p in module.named_parameters()}


def test_grad_checkpointing_same_grads():
    torch.manual_seed(5)
    enc, pred = perturbed(ViTEncoder(**SMALL)).train(), perturbed(ViTPredictor(**PRED)).train()
    x = torch.randn(2, 3, 32, 32)
    keep = torch.tensor([[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]])
    ctx, ti = torch.randn(2, 5, 64), torch.tensor([[10, 11], [12, 13]])
    runs = [(enc, lambda: enc(x, keep)), (pred, lambda: pred(ctx, keep, ti))]
    for module, run in runs:
        plain = _grads(module, run)
        module.set_grad_checkpointing(True)
        ckpt = _grads(module, run)
        module.set_grad_checkpointing(False)
        assert plain.keys() == ckpt.keys()
        for n in plain:
            torch.testing.assert_close(ckpt[n], plain[n], atol=1e-6, rtol=1e-5, msg=n)


def test_checkpointing_recomputes_blocks():
    enc = ViTEncoder(**SMALL).train()
    calls = []
    block_forward = enc.blocks[0].forward
    enc.blocks[0].forward = lambda x: calls.append(1) or block_forward(x)  # hooks are muted in recomputation
    enc.set_grad_checkpointing(True)
    enc(torch.randn(1, 3, 32, 32)).sum().backward()
    assert len(calls) == 2  # forward + recomputation in backward


def test_drop_path_schedule():
    enc = ViTEncoder(**{**SMALL, "depth": 3, "drop_path": 0.2})
    assert [getattr(b.drop_path1, "drop_prob", 0.0) for b in enc.blocks] == pytest.approx([0.0, 0.1, 0.2])


# ---------------------------------------------------------------------- FLOPs
def _unfused(module):
    for m in module.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False  # explicit matmuls, so FlopCounterMode sees the attention
    return module


def _measured(fn) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def test_flop_formulas_match_flop_counter():
    enc = _unfused(ViTEncoder(**SMALL)).eval()
    x, keep = torch.randn(1, 3, 32, 32), torch.arange(9)[None]
    kw = dict(num_patches=16, embed_dim=64, depth=2, mlp_dim=160, patch_size=8)
    assert _measured(lambda: enc(x)) == encoder_forward_flops(16, **kw)
    assert _measured(lambda: enc(x, keep)) == encoder_forward_flops(9, **kw)
    pred = _unfused(ViTPredictor(**PRED)).eval()
    ctx, ti = torch.randn(1, 9, 64), torch.arange(9, 14)[None]
    assert _measured(lambda: pred(ctx, keep, ti)) == predictor_forward_flops(
        9, 5, embed_dim=64, predictor_dim=32, depth=2, mlp_dim=96)


@pytest.mark.parametrize("mode", ["faithful", "fixed"])
def test_expected_mask_tokens_match_sampler(mode):
    cfg = MaskConfig(mode=mode)
    k, t = expected_mask_tokens(14, cfg)
    sampler = MultiBlockMaskSampler(14, cfg)
    g = torch.Generator().manual_seed(0)
    draws = [sampler.sample_blocks(4, g) for _ in range(600)]  # one block size per batch
    batch_k = torch.tensor([c.sum(1).double().mean().item() for c, _ in draws])
    batch_t = torch.tensor([float(tt.shape[-1]) for _, tt in draws])
    for expected, samples in ((k, batch_k), (t, batch_t)):
        standard_error = samples.std().item() / len(samples) ** 0.5
        assert abs(expected - samples.mean().item()) < 4 * standard_error + 0.2, (mode, expected, samples.mean())


def test_train_flops_vit_huge():
    cfg = ImageConfig()  # ViT-H/14 @224, predictor 384 x 12, 4 targets
    k, t = expected_mask_tokens(16, cfg.mask)
    enc = dict(num_patches=256, embed_dim=1280, depth=32, mlp_dim=5120, patch_size=14)
    expected = (encoder_forward_flops(256, **enc) + 3 * encoder_forward_flops(k, **enc)
                + 3 * 4 * predictor_forward_flops(k, t, embed_dim=1280, predictor_dim=384, depth=12, mlp_dim=1536))
    total = train_flops_per_image(cfg)
    assert total == pytest.approx(expected, rel=1e-12)
    assert k == pytest.approx(109, abs=2)  # docs/method/ijepa.md, "Collation": the measured single-image context for ViT-H/14
    # target forward alone: 2 * 630.4M weights * 256 tokens plus attention, about 333 GFLOPs
    assert encoder_forward_flops(256, **enc) == pytest.approx(333.2e9, rel=1e-3)
    assert 0.7e12 < total < 1.0e12
    assert train_flops_per_image(cfg, context_tokens=68.0) < total
