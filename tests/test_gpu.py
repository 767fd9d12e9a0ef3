"""GPU readiness (marked ``gpu``; every test skips cleanly without CUDA).

Run on a GPU machine with ``python -m pytest -q -m gpu tests/test_gpu.py``. They check the hot
path the CPU suite cannot: a bf16 autocast training step, that attention takes a fused SDPA
kernel (flash only: it refuses an attention mask, so a mask on the hot path fails), that the
blocks compile, and that a training step, and the normalisation of a uint8 batch on the GPU
(``input.batch_dtype: uint8``), make no host synchronisation.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _small_image_parts(device: str = "cuda"):
    from jepa.model import JEPA
    from jepa.modalities.image import ImageModality
    from jepa.modalities.image.config import ImageConfig

    cfg = ImageConfig.model_validate({"encoder": {"arch": "vit_small", "patch_size": 16, "depth": 4},
                                      "predictor": {"embed_dim": 192, "depth": 2}, "input": {"crop_size": 224}})
    modality = ImageModality(cfg)
    torch.manual_seed(0)
    model = JEPA(modality.build_encoder(), modality.build_predictor()).to(device)
    target = modality.build_encoder().requires_grad_(False).to(device)
    masks = modality.build_mask_sampler()(8, torch.Generator().manual_seed(0)).to(device)
    x = torch.randn(8, 3, 224, 224, device=device)
    return model, target, masks, x


def _step(model, target, masks, x, optimizer):
    from jepa.loss import latent_loss
    from jepa.model import target_tokens

    with torch.autocast("cuda", dtype=torch.bfloat16):
        tgt = target_tokens(target, x, masks)
        pred = model(x, masks)
    loss = latent_loss(pred, tgt)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def test_bf16_autocast_step_runs_matmuls_in_bf16_and_keeps_fp32_weights():
    model, target, masks, x = _small_image_parts()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert model.encoder.blocks[0].attn.qkv(torch.randn(2, 4, 384, device="cuda")).dtype == torch.bfloat16
    loss = _step(model, target, masks, x, optimizer)
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_attention_runs_the_flash_kernel_without_a_mask():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model, target, masks, x = _small_image_parts()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):  # refuses masks: a mask on the hot path raises here
        loss = _step(model, target, masks, x, optimizer)
    assert torch.isfinite(loss)


def test_blocks_compile_and_match_eager():
    model, _, masks, x = _small_image_parts()
    block = model.encoder.blocks[0]
    tokens = torch.randn(4, 196, 384, device="cuda")
    compiled = torch.compile(block)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        torch.testing.assert_close(compiled(tokens), block(tokens), rtol=2e-2, atol=2e-2)


def test_training_step_makes_no_host_sync():
    model, target, masks, x = _small_image_parts()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True, capturable=True)
    _step(model, target, masks, x, optimizer)  # warm-up: allocations, lazy state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            _step(model, target, masks, x, optimizer)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_uint8_batches_finish_on_the_gpu_without_a_host_sync():
    """input.batch_dtype uint8: the loop's normalisation on the GPU equals the worker's and does not wait for the GPU."""
    from jepa.modalities.image.config import InputConfig
    from jepa.modalities.image.transforms import finish_batch

    cfg = InputConfig(crop_size=32, batch_dtype="uint8")
    pixels = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    expected = finish_batch(pixels, cfg)
    finish_batch(pixels.cuda(), cfg)  # first call: the constants reach the GPU once
    torch.cuda.synchronize()
    batch = pixels.pin_memory().cuda(non_blocking=True)
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = finish_batch(batch, cfg)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(out.cpu(), expected)
