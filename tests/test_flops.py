"""The closed-form FLOP count (docs/flops.md) against torch's own FlopCounterMode on small configs.

FlopCounterMode counts matmuls (mm/addmm/bmm), convolutions and the SDPA kernels it knows;
it does not count norms, softmax, GELU, adds or gathers, and neither does the closed form. On
CPU it has no rule for the fused flash-attention kernel, so attention runs the math kernel here
(it decomposes into the two batched matmuls the closed form counts).
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from jepa.mfu import collated_mask_tokens, flops_per_sample
from jepa.model import JEPA, target_tokens
from jepa.modalities.image import ImageModality
from jepa.modalities.image.config import ImageConfig
from jepa.modalities.image.flops import train_flops_per_image

CONFIGS = [
    # (crop, patch, width, depth, heads, predictor width, predictor depth, batch, mask mode)
    (32, 4, 64, 2, 4, 32, 2, 4, "faithful"),
    (32, 8, 48, 3, 3, 24, 1, 3, "fixed"),
    (48, 8, 96, 1, 6, 48, 2, 2, "faithful"),
]


def _cfg(crop, patch, width, depth, heads, pwidth, pdepth, mode) -> ImageConfig:
    return ImageConfig.model_validate({
        "encoder": {"arch": "vit_tiny", "patch_size": patch, "embed_dim": width, "depth": depth, "num_heads": heads},
        "predictor": {"embed_dim": pwidth, "depth": pdepth, "num_heads": 2 if pwidth % 3 else 3},
        "mask": {"mode": mode, "min_keep": 2},
        "input": {"crop_size": crop},
    })


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c[0]}px-p{c[1]}-w{c[2]}-{c[-1]}")
def test_closed_form_matches_flop_counter(config):
    *dims, batch, mode = config
    cfg = _cfg(*dims, mode)
    modality = ImageModality(cfg)
    torch.manual_seed(0)
    encoder, predictor = modality.build_encoder(), modality.build_predictor()
    target_encoder = modality.build_encoder().requires_grad_(False)
    masks = modality.build_mask_sampler()(batch, torch.Generator().manual_seed(1))
    x = torch.randn(batch, 3, cfg.input.crop_size, cfg.input.crop_size)
    model = JEPA(encoder, predictor)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        targets = target_tokens(target_encoder, x, masks)
        loss = torch.nn.functional.mse_loss(model(x, masks), targets)
        loss.backward()
    counted = counter.get_total_flops()
    k, t = masks.context_idx_BK.shape[1], masks.target_idx_BMT.shape[2]
    closed = batch * train_flops_per_image(cfg, context_tokens=k, target_tokens=t)
    # The closed form counts the patch embedding's backward as 2x its forward, but it needs no
    # input gradient (1x): a small known over-count.
    n, d = cfg.grid_size ** 2, cfg.encoder.dims[0]
    over = batch * 2.0 * n * 3 * cfg.encoder.patch_size ** 2 * d
    assert closed - over == pytest.approx(counted, rel=1e-3), (closed, over, counted)


def test_batch_size_counts_the_collated_tokens():
    cfg = _cfg(32, 4, 64, 2, 4, 32, 2, "faithful")
    modality = ImageModality(cfg)
    (k, t), = collated_mask_tokens(modality.build_mask_sampler(), 16)
    assert flops_per_sample(modality, 16) == pytest.approx(train_flops_per_image(cfg, context_tokens=k, target_tokens=t))
    # faithful collation truncates contexts to the batch minimum: fewer FLOPs than one image's expectation
    assert flops_per_sample(modality, 16) < flops_per_sample(modality)
