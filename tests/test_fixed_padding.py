"""``mask.mode: fixed`` keeps every context token: rows are padded to the batch's longest context and
the padding is masked out of attention in the encoder and the predictor, so a real token's output is
that of its image run alone, and the context of an image does not depend on its batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from jepa.interfaces import MaskSet
from jepa.loss import latent_loss
from jepa.model import JEPA, cut_targets, target_representations
from jepa.modalities.image.config import MaskConfig
from jepa.modalities.image.masks import MultiBlockMaskSampler
from jepa.modalities.image.vit import ViTEncoder, ViTPredictor

ENC = dict(img_size=64, patch_size=8, in_chans=3, embed_dim=64, depth=2, num_heads=4, mlp_dim=160)
PRED = dict(grid_size=8, embed_dim=64, predictor_dim=32, depth=2, num_heads=4, mlp_ratio=3.0)
ATOL = 1e-5
"""fp32, padded (SDPA with a boolean mask) against unpadded (SDPA without one: other kernels, other
summation order): measured <= 9.6e-7 (encoder) and <= 8.4e-7 (predictor) over 5 batches, on outputs of
mean magnitude 0.8 and 0.45."""


def perturbed(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Randomise every parameter (biases, LayerNorm affine) so every weight takes part."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module


def padded_masks(batch: int = 8, seed: int = 0) -> MaskSet:
    """Fixed-mode masks on the 8x8 grid of ENC with real padding (rows of different lengths)."""
    sampler = MultiBlockMaskSampler(8, MaskConfig(mode="fixed", min_keep=4))
    gen = torch.Generator().manual_seed(seed)
    while True:
        masks = sampler(batch, gen)
        if masks.context_valid_BK is not None and int(masks.context_valid_BK.sum(1).min()) < masks.context_idx_BK.shape[1] - 3:
            return masks


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return perturbed(ViTEncoder(**ENC)).eval(), perturbed(ViTPredictor(**PRED), seed=1).eval()


def test_context_per_image_does_not_depend_on_the_batch():
    """Mean real context tokens per image at batch 16 and 128 (16x16 grid, paper geometry) agree within
    the sampling error; faithful's collated context shrinks with the batch (the control)."""
    means = {}
    for mode in ("fixed", "faithful"):
        sampler = MultiBlockMaskSampler(16, MaskConfig(mode=mode))
        gen = torch.Generator().manual_seed(0)
        for batch, num_batches in ((16, 400), (128, 50)):
            per_batch = []
            for _ in range(num_batches):
                m = sampler(batch, gen)
                valid = m.context_valid_BK
                per_batch.append(float(valid.sum(1).double().mean()) if valid is not None else float(m.context_idx_BK.shape[1]))
            x = torch.tensor(per_batch, dtype=torch.float64)
            means[mode, batch] = (float(x.mean()), float(x.std() / num_batches ** 0.5))
    (m16, se16), (m128, se128) = means["fixed", 16], means["fixed", 128]
    assert abs(m16 - m128) < 4 * (se16 ** 2 + se128 ** 2) ** 0.5 + 0.5, means
    assert 105 < m16 < 125, means  # ~117: an image's whole context (fixed blocks may touch the last row and column)
    assert means["faithful", 128][0] < means["faithful", 16][0] - 8, means  # ~67 against ~82


def test_padded_encoder_rows_equal_each_image_alone(models):
    enc, _ = models
    masks = padded_masks()
    x = torch.randn(masks.batch_size, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = enc(x, masks.context_idx_BK, keep_valid_BK=masks.context_valid_BK)
        worst = 0.0
        for i, k in enumerate(masks.context_valid_BK.sum(1).tolist()):
            alone = enc(x[i:i + 1], masks.context_idx_BK[i:i + 1, :k])
            worst = max(worst, float((out[i, :k] - alone[0]).abs().max()))
    assert worst <= ATOL, worst


def test_padded_predictor_rows_equal_each_image_alone(models):
    enc, pred = models
    masks = padded_masks()
    valid, idx = masks.context_valid_BK, masks.context_idx_BK
    ctx = torch.randn(*idx.shape, 64, generator=torch.Generator().manual_seed(2))
    targets = masks.target_idx_BMT[:, 0]
    with torch.no_grad():
        out = pred(ctx, idx, targets, context_valid_BK=valid)
        worst = 0.0
        for i, k in enumerate(valid.sum(1).tolist()):
            alone = pred(ctx[i:i + 1, :k], idx[i:i + 1, :k], targets[i:i + 1])
            worst = max(worst, float((out[i] - alone[0]).abs().max()))
    assert worst <= ATOL, worst


def test_jepa_predictions_and_loss_equal_the_unpadded_rows(models):
    """Encoder + predictor over a padded batch: each image's predictions equal those of the image alone,
    and the batch loss equals the mean of the per-image losses (targets are never padded)."""
    enc, pred = models
    jepa = JEPA(enc, pred).eval()
    masks = padded_masks()
    x = torch.randn(masks.batch_size, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    m = masks.num_targets
    with torch.no_grad():
        h = target_representations(enc, x)
        preds, tgts = jepa(x, masks), cut_targets(h, masks)
        loss = latent_loss(preds, tgts, "smooth_l1")
        per_image = []
        for i, k in enumerate(masks.context_valid_BK.sum(1).tolist()):
            alone = MaskSet(masks.context_idx_BK[i:i + 1, :k], masks.target_idx_BMT[i:i + 1])
            p = jepa(x[i:i + 1], alone)
            assert float((preds[i * m:(i + 1) * m] - p).abs().max()) <= ATOL
            per_image.append(latent_loss(p, cut_targets(h[i:i + 1], alone), "smooth_l1"))
    assert float(abs(loss - torch.stack(per_image).mean())) <= ATOL


def test_padding_entries_change_no_real_output_and_get_no_gradient(models):
    enc, pred = models
    masks = padded_masks()
    valid, idx = masks.context_valid_BK, masks.context_idx_BK
    elsewhere = torch.where(valid, idx, masks.target_idx_BMT[:, :1, :1].squeeze(-1).expand_as(idx))  # pad = a target
    x = torch.randn(masks.batch_size, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a = enc(x, idx, keep_valid_BK=valid)
        b = enc(x, elsewhere, keep_valid_BK=valid)
    assert torch.equal(a[valid], b[valid])
    enc.train()
    try:
        tokens = enc.embed_tokens(x)
        gathered = torch.gather(tokens, 1, idx[..., None].expand(-1, -1, 64)).detach().requires_grad_(True)
        out = enc.norm(enc.run_blocks(gathered, valid[:, None, None, :]))
        ctx = out.detach().requires_grad_(True)
        pred(ctx, idx, masks.target_idx_BMT[:, 0], context_valid_BK=valid).square().sum().backward()
        out.backward(ctx.grad)
    finally:
        enc.eval()
        enc.zero_grad(set_to_none=True)
        pred.zero_grad(set_to_none=True)
    assert bool((ctx.grad[~valid] == 0).all()), "the predictor took a gradient through padding"
    assert bool((gathered.grad[~valid] == 0).all()), "the encoder took a gradient through padding"
    assert float(gathered.grad[valid].abs().sum()) > 0


def test_checkpointed_blocks_take_the_mask(models):
    enc, pred = models
    masks = padded_masks()
    x = torch.randn(masks.batch_size, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    enc.train()
    try:
        plain = enc(x, masks.context_idx_BK, keep_valid_BK=masks.context_valid_BK)
        enc.set_grad_checkpointing(True)
        ckpt = enc(x, masks.context_idx_BK, keep_valid_BK=masks.context_valid_BK)
    finally:
        enc.set_grad_checkpointing(False)
        enc.eval()
    assert torch.equal(plain, ckpt)


def test_the_fused_kernel_runs_without_a_mask_unless_a_batch_is_padded(models, monkeypatch):
    enc, pred = models
    jepa = JEPA(enc, pred).eval()
    seen = []
    sdpa = F.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, **kwargs):
        seen.append(None if attn_mask is None else (attn_mask.dtype, tuple(attn_mask.shape)))
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    x = torch.randn(8, 3, 64, 64)
    faithful = MultiBlockMaskSampler(8, MaskConfig(mode="faithful", min_keep=4))(8, torch.Generator().manual_seed(0))
    with torch.no_grad():
        jepa(x, faithful)
    assert seen == [None] * 4, seen  # 2 encoder + 2 predictor blocks, no mask
    seen.clear()
    masks = padded_masks()
    with torch.no_grad():
        jepa(x, masks)
    b, k = masks.context_idx_BK.shape
    m, t = masks.num_targets, masks.target_idx_BMT.shape[-1]
    assert seen == [(torch.bool, (b, 1, 1, k))] * 2 + [(torch.bool, (b * m, 1, 1, k + t))] * 2, seen
