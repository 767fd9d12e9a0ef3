"""Compatibility with the released I-JEPA checkpoint layout: strict loading, round trips, safety."""

from __future__ import annotations

import copy

import pytest
import torch

from jepa.modalities.image.released import (RELEASED_KEYS, infer_released_arch, load_released,
                                            released_optimizer_state, save_released)
from jepa.modalities.image.vit import ViTEncoder, ViTPredictor

ENC = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=64, depth=2, num_heads=4, mlp_dim=128)
PRED = dict(grid_size=4, embed_dim=64, predictor_dim=32, depth=2, num_heads=4, mlp_ratio=4.0)


def randomised(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return module


@pytest.fixture
def trained():
    """Context encoder, predictor and a target encoder with different weights."""
    return randomised(ViTEncoder(**ENC), 1), randomised(ViTPredictor(**PRED), 2), randomised(ViTEncoder(**ENC), 3)


def released_dict(encoder, predictor, target):
    """A checkpoint built the way the authors' training script writes it (DDP prefixes, AdamW, 4 groups)."""
    def ddp(m):
        return {"module." + k: v.clone() for k, v in m.state_dict().items()}

    def split(m):
        named = list(m.named_parameters())
        decay = [p for n, p in named if "bias" not in n and p.ndim != 1]
        return decay, [p for n, p in named if "bias" in n or p.ndim == 1]

    (ed, en), (pd, pn) = split(encoder), split(predictor)
    opt = torch.optim.AdamW([{"params": ed}, {"params": pd}, {"params": en, "WD_exclude": True, "weight_decay": 0},
                             {"params": pn, "WD_exclude": True, "weight_decay": 0}], lr=1e-3)
    x = torch.randn(1, 3, 32, 32)
    idx = torch.arange(8)[None]
    predictor(encoder(x, idx), idx, torch.arange(8, 12)[None]).sum().backward()
    opt.step()
    opt.zero_grad()
    return {"encoder": ddp(encoder), "predictor": ddp(predictor), "target_encoder": ddp(target),
            "opt": opt.state_dict(), "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                                "growth_interval": 2000, "_growth_tracker": 0},
            "epoch": 300, "loss": 0.123, "batch_size": 128, "world_size": 16, "lr": 1e-6}


def outputs(encoder, predictor):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 3, 32, 32, generator=g)
    ci, ti = torch.tensor([[0, 1, 2, 5, 6], [3, 7, 8, 9, 12]]), torch.tensor([[10, 11], [14, 15]])
    with torch.no_grad():
        return encoder.eval()(x), predictor.eval()(encoder(x, ci), ci, ti)


def test_load_released_layout_gives_identical_outputs(trained, tmp_path):
    enc, pred, tgt = trained
    ckpt = released_dict(enc, pred, tgt)
    assert len(ckpt["opt"]["param_groups"]) == 4
    path = tmp_path / "IN1K-vit.h.14-300e.pth.tar"
    torch.save(ckpt, path)
    fresh_enc, fresh_pred = ViTEncoder(**ENC), ViTPredictor(**PRED)
    meta = load_released(path, fresh_enc, fresh_pred)
    assert meta == {"epoch": 300, "loss": 0.123, "batch_size": 128, "world_size": 16, "lr": 1e-6}
    for got, want in zip(outputs(fresh_enc, fresh_pred), outputs(tgt, pred)):
        assert torch.equal(got, want)


def test_which_selects_encoder_or_target(trained):
    enc, pred, tgt = trained
    ckpt = released_dict(enc, pred, tgt)
    x = torch.randn(1, 3, 32, 32)
    by_default, context = ViTEncoder(**ENC).eval(), ViTEncoder(**ENC).eval()
    load_released(ckpt, by_default)
    load_released(ckpt, context, which="encoder")
    with torch.no_grad():
        assert torch.equal(by_default(x), tgt.eval()(x))
        assert torch.equal(context(x), enc.eval()(x))
        assert not torch.allclose(by_default(x), context(x))
    with pytest.raises(ValueError, match="which='predictor'"):
        load_released(ckpt, context, which="predictor")


def test_corrupted_checkpoint_names_every_problem_and_loads_nothing(trained, tmp_path):
    enc, pred, tgt = trained
    ckpt = released_dict(enc, pred, tgt)
    del ckpt["target_encoder"]["module.blocks.1.mlp.fc2.bias"]
    ckpt["target_encoder"]["module.cls_token"] = torch.zeros(1, 1, 64)
    ckpt["target_encoder"]["module.blocks.0.attn.qkv.weight"] = torch.zeros(96, 64)
    ckpt["predictor"]["module.predictor_proj.weight"] = torch.zeros(64, 48)
    path = tmp_path / "broken.pth.tar"
    torch.save(ckpt, path)
    fresh_enc, fresh_pred = ViTEncoder(**ENC), ViTPredictor(**PRED)
    before = copy.deepcopy(fresh_enc.state_dict()), copy.deepcopy(fresh_pred.state_dict())
    with pytest.raises(ValueError) as info:
        load_released(path, fresh_enc, fresh_pred)
    msg = str(info.value)
    assert "broken.pth.tar" in msg
    assert "target_encoder: missing keys [blocks.1.mlp.fc2.bias]" in msg
    assert "target_encoder: unexpected keys [cls_token (file shape [1, 1, 64])]" in msg
    assert "target_encoder: shape mismatches [blocks.0.attn.qkv.weight: file [96, 64] vs model [192, 64]]" in msg
    assert "predictor: shape mismatches [predictor_proj.weight: file [64, 48] vs model [64, 32]]" in msg
    # all or nothing: the encoder section's valid tensors were not copied either
    for module, saved in zip((fresh_enc, fresh_pred), before):
        for k, v in module.state_dict().items():
            assert torch.equal(v, saved[k]), k


def test_missing_section_and_missing_file(trained, tmp_path):
    enc, pred, tgt = trained
    ckpt = released_dict(enc, pred, tgt)
    del ckpt["target_encoder"]
    with pytest.raises(ValueError, match="no 'target_encoder' entry"):
        load_released(ckpt, ViTEncoder(**ENC))
    with pytest.raises(ValueError, match="no such file"):
        load_released(tmp_path / "nope.pth.tar", ViTEncoder(**ENC))


def test_save_load_round_trip(trained, tmp_path):
    enc, pred, tgt = trained
    path = tmp_path / "ours.pth.tar"
    save_released(path, enc, pred, tgt, epoch=7, loss=0.5, batch_size=64, world_size=2, lr=3e-4)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert tuple(raw) == RELEASED_KEYS
    for section in ("encoder", "predictor", "target_encoder"):
        assert all(k.startswith("module.") for k in raw[section])
    assert raw["epoch"] == 7 and raw["lr"] == 3e-4 and raw["scaler"] is None
    fresh_enc, fresh_pred = ViTEncoder(**ENC), ViTPredictor(**PRED)
    assert load_released(path, fresh_enc, fresh_pred)["batch_size"] == 64
    for got, want in zip(outputs(fresh_enc, fresh_pred), outputs(tgt, pred)):
        assert torch.equal(got, want)
    # and a released-layout dict re-saved by us loads the same
    ours = ViTEncoder(**ENC)
    load_released(path, ours, which="encoder")
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in ours.state_dict().items())


def test_default_optimizer_state_has_released_groups(trained):
    enc, pred, _ = trained
    groups = released_optimizer_state(enc, pred, lr=1e-3)["param_groups"]
    assert len(groups) == 4
    assert [g.get("WD_exclude", False) for g in groups] == [False, False, True, True]
    assert groups[2]["weight_decay"] == 0 and groups[3]["weight_decay"] == 0
    # decay groups hold every >=2-D weight plus the frozen tables (pos_embed; mask_token + predictor_pos_embed)
    enc_decay = 1 + 1 + 2 * 4  # pos_embed, patch conv, per block qkv/proj/fc1/fc2
    pred_decay = 2 + 1 + 2 * 4 + 1  # mask_token, predictor_pos_embed, embed, blocks, proj
    enc_no_decay = 1 + 2 * 8 + 2  # patch bias, per block 4 biases + 2 norms x 2, final norm
    pred_no_decay = 1 + 2 * 8 + 2 + 1
    assert [len(g["params"]) for g in groups] == [enc_decay, pred_decay, enc_no_decay, pred_no_decay]
    flat = [i for g in groups for i in g["params"]]
    assert flat == list(range(len(flat)))


class _Payload:
    ran = False

    def __reduce__(self):
        return (_mark_ran, ())


def _mark_ran():
    _Payload.ran = True
    return "boom"


def test_weights_only_refuses_arbitrary_objects(trained, tmp_path):
    enc, pred, tgt = trained
    ckpt = released_dict(enc, pred, tgt)
    ckpt["extra"] = _Payload()
    path = tmp_path / "unsafe.pth.tar"
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_released(path, ViTEncoder(**ENC))
    assert not _Payload.ran
    torch.load(path, weights_only=False)  # the file really runs code with a full unpickler
    assert _Payload.ran


def test_non_sincos_table_warns(trained):
    enc, pred, tgt = trained
    ckpt = released_dict(enc, pred, tgt)
    ckpt["target_encoder"]["module.pos_embed"] = torch.randn(1, 16, 64)
    with pytest.warns(UserWarning, match="not the 2-D sin-cos table"):
        load_released(ckpt, ViTEncoder(**ENC))


def test_infer_arch_small_round_trip(trained, tmp_path):
    enc, pred, tgt = trained
    path = tmp_path / "small.pth.tar"
    save_released(path, enc, pred, tgt)
    with pytest.raises(ValueError, match="width 64 is not in the standard ViT table"):
        infer_released_arch(torch.load(path, weights_only=True))
    arch = infer_released_arch(torch.load(path, weights_only=True), num_heads=4)
    assert arch["arch"] is None
    assert arch["encoder"] == ENC and arch["predictor"] == PRED
    load_released(path, ViTEncoder(**arch["encoder"]), ViTPredictor(**arch["predictor"]))


@pytest.mark.parametrize("img, patch, width, depth, heads, mlp, name, pdepth", [
    (224, 14, 1280, 32, 16, 5120, "vit_huge", 12),
    (448, 16, 1280, 32, 16, 5120, "vit_huge", 12),
    (224, 16, 1408, 40, 16, 6144, "vit_giant", 16),
])
def test_infer_arch_released_models(img, patch, width, depth, heads, mlp, name, pdepth):
    with torch.device("meta"):  # shapes only
        enc = ViTEncoder(img, patch, 3, width, depth, heads, mlp)
        pred = ViTPredictor(img // patch, width, 384, pdepth, heads)
    ckpt = {"target_encoder": {"module." + k: v for k, v in enc.state_dict().items()},
            "predictor": {"module." + k: v for k, v in pred.state_dict().items()}}
    arch = infer_released_arch(ckpt)
    assert arch["arch"] == name
    assert arch["encoder"] == dict(img_size=img, patch_size=patch, in_chans=3, embed_dim=width, depth=depth,
                                   num_heads=heads, mlp_dim=mlp)
    assert arch["predictor"] == dict(grid_size=img // patch, embed_dim=width, predictor_dim=384, depth=pdepth,
                                     num_heads=heads, mlp_ratio=4.0)
