"""Image decoding and the training / evaluation views (jepa.modalities.image.transforms)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import RandomResizedCrop

from jepa.modalities.image.config import InputConfig
from jepa.modalities.image.transforms import decode_image, eval_batch, train_batch
from jepa.vision.crops import eval_resize_size, sample_crop_boxes


def _encode(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)


@pytest.mark.parametrize("key,fmt,mode", [
    ("png", "PNG", None), ("png", "PNG", "L"), ("png", "PNG", "RGBA"), ("png", "PNG", "P"),
    ("ppm", "PPM", None), ("bmp", "BMP", None), ("webp", "WEBP", None),
])
def test_decode_lossless_formats_to_rgb(rgb, key, fmt, mode):
    data = _encode(rgb, fmt, mode)
    expected = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    out = decode_image({"__key__": "k", key: data})
    assert out.dtype == torch.uint8 and out.shape == (3, 20, 30)
    if fmt != "WEBP":  # PIL's and libwebp's lossy decoders may differ by a few levels
        assert torch.equal(out, torch.from_numpy(expected).permute(2, 0, 1))


def test_decode_jpeg_close_to_pil(rgb):
    data = _encode(rgb, "JPEG")
    out = decode_image({"__key__": "k", "jpg": data}).permute(1, 2, 0).int()
    ref = torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).int()
    assert out.shape == ref.shape and (out - ref).abs().float().mean() < 2.0


@pytest.mark.parametrize("payload", [b"not an image at all" * 5, b"\xff\xd8\xff\xe0" + b"\x00" * 64, b""])
def test_decode_corrupt_raises_value_error_naming_key(payload):
    with pytest.raises(ValueError, match="'sample7'.*'jpg'"):
        decode_image({"__key__": "sample7", "jpg": payload})


def test_decode_truncated_jpeg_raises(rgb):
    data = _encode(np.repeat(np.repeat(rgb, 4, 0), 4, 1), "JPEG")
    with pytest.raises(ValueError, match="jpg"):
        decode_image({"__key__": "t", "jpg": data[: len(data) // 2]})


def test_decode_without_image_key_lists_keys():
    with pytest.raises(ValueError, match=r"no image.*\['cls', 'txt'\]"):
        decode_image({"__key__": "x", "txt": b"hi", "cls": b"1"})


def _images(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sizes = [(40 + 7 * i, 90 - 5 * i) for i in range(n)]
    return [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in sizes]


def test_train_batch_shape_and_determinism():
    cfg = InputConfig(crop_size=32)
    items = _images(6)
    a = train_batch(items, cfg, torch.Generator().manual_seed(3))
    b = train_batch(items, cfg, torch.Generator().manual_seed(3))
    c = train_batch(items, cfg, torch.Generator().manual_seed(4))
    assert a.shape == (6, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_train_batch_uses_only_the_generator():
    cfg = InputConfig(crop_size=24)
    items = _images(4)
    torch.manual_seed(123)
    global_state = torch.get_rng_state()
    first = train_batch(items, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), global_state)  # the global RNG was not drawn from
    torch.manual_seed(999)  # a different global RNG changes nothing
    assert torch.equal(first, train_batch(items, cfg, torch.Generator().manual_seed(0)))


def test_train_batch_normalisation():
    cfg = InputConfig(crop_size=16, mean=(0.5, 0.25, 0.75), std=(0.5, 0.25, 0.125))
    value = torch.tensor([200, 10, 128], dtype=torch.uint8).view(3, 1, 1)
    items = [value.expand(3, 30, 50).clone(), value.expand(3, 64, 20).clone()]
    out = train_batch(items, cfg, torch.Generator().manual_seed(0))
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    expected = (value.float() / 255 - mean) / std
    assert torch.allclose(out, expected.expand(2, 3, 16, 16), atol=1e-5)


def test_crop_boxes_are_valid_and_match_torchvision_distribution():
    h, w, n = 300, 200, 4000
    scale = (0.3, 1.0)
    boxes = sample_crop_boxes(torch.full((n,), h), torch.full((n,), w), scale, torch.Generator().manual_seed(0))
    top, left, bh, bw = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + bh <= h).all() and (left + bw <= w).all()
    area = (bh * bw).double() / (h * w)
    assert area.min() > 0.29 and area.max() <= 1.0
    aspect = (bw / bh).double()
    assert aspect.min() > 0.74 and aspect.max() < 1.35

    torch.manual_seed(0)
    ref = torch.tensor([RandomResizedCrop.get_params(torch.empty(1, h, w), list(scale), [3 / 4, 4 / 3])
                        for _ in range(n)], dtype=torch.float64)
    ref_area = ref[:, 2] * ref[:, 3] / (h * w)
    ref_aspect = ref[:, 3] / ref[:, 2]
    assert abs(area.mean() - ref_area.mean()) < 0.02
    assert abs(aspect.log().mean() - ref_aspect.log().mean()) < 0.02
    assert abs((top.double() / (h - bh + 1)).mean() - 0.5) < 0.03  # offsets uniform over the valid range


def test_crop_boxes_fallback_for_extreme_aspect():
    # A 10x400 strip cannot hold a box of ratio <= 4/3 covering >= 90 % of it: centred fallback.
    boxes = sample_crop_boxes(torch.tensor([10]), torch.tensor([400]), (0.9, 1.0), torch.Generator().manual_seed(0))
    top, left, bh, bw = boxes[0].tolist()
    assert (bh, bw) == (10, round(10 * 4 / 3)) and top == 0 and left == (400 - bw) // 2


def test_eval_batch_resizes_shorter_side_then_centre_crops():
    cfg = InputConfig(crop_size=32)
    assert eval_resize_size(224) == 256 and eval_resize_size(32) == 37
    items = _images(3)
    out = eval_batch(items, cfg)
    assert out.shape == (3, 3, 32, 32)
    x = items[1]
    ref = TF.center_crop(TF.resize(x, [37], antialias=True), [32, 32]).float() / 255
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    assert torch.allclose(out[1], (ref - mean) / std, atol=1e-5)
    assert min(TF.resize(x, [37], antialias=True).shape[1:]) == 37


def test_batches_reject_wrong_channel_count():
    with pytest.raises(ValueError, match="in_chans"):
        train_batch([torch.zeros(1, 8, 8, dtype=torch.uint8)], InputConfig(crop_size=8), torch.Generator())
    with pytest.raises(ValueError, match="zero images"):
        eval_batch([], InputConfig(crop_size=8))


def test_train_view_covers_expected_area():
    """A white square on black: the crop's mean brightness tracks the sampled area (sanity of crop+resize)."""
    cfg = InputConfig(crop_size=16, mean=(0, 0, 0), std=(1, 1, 1), crop_scale=(1.0, 1.0))
    img = torch.zeros(3, 64, 64, dtype=torch.uint8)
    img[:, 16:48, 16:48] = 255
    out = train_batch([img], cfg, torch.Generator().manual_seed(0))
    # scale 1 with a square image: the whole image, so a quarter of it is white.
    assert math.isclose(out.mean().item(), 0.25, abs_tol=0.02)
