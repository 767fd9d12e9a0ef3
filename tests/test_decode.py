"""Decoding options of the image modality (jepa.modalities.image.decode): reduced-size JPEG
decoding, JPEGs left encoded for the GPU, and the batch made in shared memory in a loader worker."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from jepa.modalities.image.config import InputConfig
from jepa.modalities.image.decode import (
    EncodedJPEG, ReducedImage, decode_image, jpeg_reduction, smallest_crop_side,
)
from jepa.modalities.image.transforms import eval_batch, finish_batch, snap_boxes, train_batch
from jepa.vision.crops import eval_resize_size, sample_crop_boxes
from jepa.vision.pixels import normalize_uint8

CFG = InputConfig(crop_size=32)
REDUCED = CFG.model_copy(update={"jpeg_reduced_decode": True})


def _smooth(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB image (low-frequency content, as photos are at the scale of a few pixels)."""
    g = np.random.default_rng(seed)
    small = g.integers(0, 256, (height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC))


def _jpeg(array: np.ndarray, orientation: int | None = None) -> bytes:
    image = Image.fromarray(array)
    buf = io.BytesIO()
    if orientation is None:
        image.save(buf, format="JPEG", quality=92)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(buf, format="JPEG", quality=92, exif=exif)
    return buf.getvalue()


def _psnr(a: torch.Tensor, b: torch.Tensor, std: tuple[float, ...]) -> float:
    """PSNR (dB) of two normalised batches, in [0, 1] pixels."""
    s = torch.tensor(std).view(1, -1, 1, 1)
    return 10 * math.log10(1 / (((a - b) * s) ** 2).mean().item())


@pytest.fixture(scope="module")
def big() -> bytes:
    return _jpeg(_smooth(400, 300))


# --------------------------------------------------------------------------- the bound


@pytest.mark.parametrize("height,width,scale", [(300, 400, 0.3), (375, 500, 0.08), (50, 800, 0.3),
                                                (800, 45, 0.5), (97, 101, 1.0), (1000, 10, 0.9)])
def test_smallest_crop_side_bounds_every_box_drawn(height, width, scale):
    n = 4000
    boxes = sample_crop_boxes(torch.full((n,), height), torch.full((n,), width), (scale, 1.0),
                              torch.Generator().manual_seed(0))
    side = smallest_crop_side(height, width, scale)
    assert boxes[:, 2:].min() >= side
    assert boxes[:, 2:].min() <= 1.1 * side + 2 or scale == 1.0  # a bound, and not a loose one


@pytest.mark.parametrize("height,width", [(300, 400), (375, 500), (1500, 2000), (640, 4000), (4000, 640), (271, 271)])
def test_reduction_never_enlarges_a_training_crop_or_the_eval_resize(height, width):
    cfg = InputConfig(crop_size=32)
    scale = jpeg_reduction(height, width, cfg)
    n = 4000
    boxes = sample_crop_boxes(torch.full((n,), height), torch.full((n,), width), cfg.crop_scale,
                              torch.Generator().manual_seed(1))
    snapped = snap_boxes(boxes, torch.full((n,), scale))
    assert snapped[:, 2:].min() >= cfg.crop_size
    assert min(height, width) / scale >= eval_resize_size(cfg.crop_size)
    reduced_size = torch.tensor([math.ceil(height / scale), math.ceil(width / scale)])
    assert (snapped[:, :2] + snapped[:, 2:] <= reduced_size).all()
    if scale < 8:  # the next scale would enlarge some crop (or the eval resize)
        bigger = 2 * scale
        assert smallest_crop_side(height, width, cfg.crop_scale[0]) < bigger * (cfg.crop_size + 1) or \
            min(height, width) < bigger * (eval_resize_size(cfg.crop_size) + 1)


def test_imagenet_size_never_qualifies_at_224():
    assert jpeg_reduction(375, 500, InputConfig()) == 1
    assert jpeg_reduction(1200, 1600, InputConfig()) == 2


def test_snap_boxes():
    boxes = torch.tensor([[10, 21, 100, 63], [0, 0, 300, 400]])
    assert torch.equal(snap_boxes(boxes, torch.tensor([1, 1])), boxes)
    # scale 4: edges 10 -> 2 (2.5 rounds to even), 110 -> 28 (27.5 -> 28); 21 -> 5, 84 -> 21
    assert snap_boxes(boxes, torch.tensor([4, 4])).tolist() == [[2, 5, 26, 16], [0, 0, 75, 100]]


# --------------------------------------------------------------------------- reduced-size decoding


def test_reduced_decode_only_when_allowed(big):
    full = decode_image({"__key__": "b", "jpg": big}, CFG)
    assert isinstance(full, torch.Tensor) and full.shape == (3, 300, 400)  # the option is off by default
    item = decode_image({"__key__": "b", "jpg": big}, REDUCED)
    assert isinstance(item, ReducedImage) and (item.height, item.width, item.scale) == (300, 400, 4)
    assert item.pixels.shape == (3, 75, 100) and item.pixels.dtype == torch.uint8
    small = decode_image({"__key__": "s", "jpg": _jpeg(_smooth(120, 90))}, REDUCED)
    assert isinstance(small, torch.Tensor) and small.shape == (3, 90, 120)
    png = io.BytesIO()
    Image.fromarray(_smooth(400, 300)).save(png, format="PNG")
    assert isinstance(decode_image({"__key__": "p", "png": png.getvalue()}, REDUCED), torch.Tensor)


def test_reduced_views_use_the_same_boxes_and_stay_close(big):
    samples = [{"__key__": str(i), "jpg": _jpeg(_smooth(400, 300, seed=i))} for i in range(6)]
    full = [decode_image(s, CFG) for s in samples]
    reduced = [decode_image(s, REDUCED) for s in samples]
    out = train_batch(reduced, REDUCED, torch.Generator().manual_seed(5))
    # the same draws from the full sizes, snapped to the reduced grid
    boxes = sample_crop_boxes(torch.full((6,), 300), torch.full((6,), 400), CFG.crop_scale,
                              torch.Generator().manual_seed(5))
    boxes = snap_boxes(boxes, torch.full((6,), 4)).tolist()
    manual = torch.stack([TF.resized_crop(r.pixels, *b, [32, 32], antialias=True) for r, b in zip(reduced, boxes)])
    assert torch.equal(out, normalize_uint8(manual, CFG.mean, CFG.std))
    assert _psnr(out, train_batch(full, CFG, torch.Generator().manual_seed(5)), CFG.std) > 30
    assert _psnr(eval_batch(reduced, REDUCED), eval_batch(full, CFG), CFG.std) > 30


def test_reduced_decode_skips_a_truncated_jpeg(big):
    with pytest.raises(ValueError, match="'t'.*not a readable image"):
        decode_image({"__key__": "t", "jpg": big[: len(big) // 2]}, REDUCED)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_reduced_decode_applies_exif_orientation(orientation):
    data = _jpeg(_smooth(480, 320), orientation=orientation)
    full = decode_image({"__key__": "o", "jpg": data}, CFG)
    item = decode_image({"__key__": "o", "jpg": data}, REDUCED)
    assert isinstance(item, ReducedImage) and (item.height, item.width) == tuple(full.shape[1:])
    down = TF.resize(full, list(item.pixels.shape[1:]), antialias=True)
    assert (down.float() - item.pixels.float()).abs().mean() < 3  # the same orientation, not a rotated copy


# --------------------------------------------------------------------------- the default path


def test_default_views_are_bitwise_the_unfused_computation():
    """Normalising each row as it is written gives exactly the batch-at-once result."""
    g = torch.Generator().manual_seed(0)
    items = [torch.randint(0, 256, (3, 40 + 9 * i, 70 - 4 * i), generator=g, dtype=torch.uint8) for i in range(5)]
    items.append(items[0].permute(1, 2, 0).contiguous().permute(2, 0, 1))  # channels-last, as decoders return
    boxes = sample_crop_boxes(torch.tensor([x.shape[1] for x in items]), torch.tensor([x.shape[2] for x in items]),
                              CFG.crop_scale, torch.Generator().manual_seed(3)).tolist()
    crops = torch.stack([TF.resized_crop(x, *b, [32, 32], antialias=True) for x, b in zip(items, boxes)])
    expected = normalize_uint8(crops, CFG.mean, CFG.std)
    assert torch.equal(train_batch(items, CFG, torch.Generator().manual_seed(3)), expected)
    r = eval_resize_size(32)
    evals = torch.stack([TF.center_crop(TF.resize(x, [r], antialias=True), [32, 32]) for x in items])
    assert torch.equal(eval_batch(items, CFG), normalize_uint8(evals, CFG.mean, CFG.std))


class _Batches(torch.utils.data.IterableDataset):
    def __init__(self, items, cfg=CFG):
        self.items, self.cfg = items, cfg

    def __iter__(self):
        yield train_batch(self.items, self.cfg, torch.Generator().manual_seed(0))


def test_worker_batches_are_made_in_shared_memory():
    items = [torch.randint(0, 256, (3, 50, 60), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
             for i in range(4)]
    loader = torch.utils.data.DataLoader(_Batches(items), batch_size=None, num_workers=1,
                                         multiprocessing_context="fork")
    (batch,) = list(loader)
    assert batch.is_shared() and batch.is_contiguous()
    assert torch.equal(batch, train_batch(items, CFG, torch.Generator().manual_seed(0)))


UINT8 = CFG.model_copy(update={"batch_dtype": "uint8"})


def test_uint8_batches_finish_to_the_float_batch_bitwise():
    """batch_dtype uint8: the same crops handed over as uint8, and finish_batch gives exactly the float batch."""
    g = torch.Generator().manual_seed(0)
    items = [torch.randint(0, 256, (3, 40 + 9 * i, 70 - 4 * i), generator=g, dtype=torch.uint8) for i in range(5)]
    compact = train_batch(items, UINT8, torch.Generator().manual_seed(3))
    expected = train_batch(items, CFG, torch.Generator().manual_seed(3))
    assert compact.dtype == torch.uint8 and compact.shape == expected.shape
    assert torch.equal(finish_batch(compact, UINT8), expected)
    assert finish_batch(expected, CFG) is expected  # float batches pass through
    loader = torch.utils.data.DataLoader(_Batches(items, UINT8), batch_size=None, num_workers=1,
                                         multiprocessing_context="fork")
    (batch,) = list(loader)  # made in shared memory in the worker, a quarter of the float batch's bytes
    assert batch.is_shared() and batch.dtype == torch.uint8
    assert torch.equal(batch, train_batch(items, UINT8, torch.Generator().manual_seed(0)))


# --------------------------------------------------------------------------- GPU decoding

GPU = CFG.model_copy(update={"decode_device": "cuda"})


def test_decode_device_cuda_leaves_plain_jpegs_encoded(big):
    item = decode_image({"__key__": "e", "jpg": big}, GPU)
    assert isinstance(item, EncodedJPEG) and (item.height, item.width) == (300, 400) and "'e'" in item.where
    rotated = decode_image({"__key__": "r", "jpg": _jpeg(_smooth(400, 300), orientation=6)}, GPU)
    assert isinstance(rotated, torch.Tensor) and rotated.shape == (3, 400, 300)  # nvjpeg applies no EXIF orientation
    with pytest.raises(ValueError, match="not a readable image"):
        decode_image({"__key__": "c", "jpg": b"\xff\xd8\xff\xe0" + b"\x00" * 64}, GPU)  # the header is still checked
    with pytest.raises(ValueError, match="'t'.*not a readable image"):  # no end marker: decoded (and skipped) here
        decode_image({"__key__": "t", "jpg": big[: len(big) // 2]}, GPU)
    padded = decode_image({"__key__": "p", "jpg": big + b"\x00" * 10}, GPU)
    assert isinstance(padded, EncodedJPEG)
    appended = decode_image({"__key__": "a", "jpg": big + b"trailer"}, GPU)
    assert isinstance(appended, torch.Tensor) and appended.shape == (3, 300, 400)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_decode_device_cuda_without_cuda_is_a_clear_error(big):
    item = decode_image({"__key__": "e", "jpg": big}, GPU)
    with pytest.raises(ValueError, match="no CUDA device"):
        train_batch([item], GPU, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="decode_device is 'cpu'"):
        train_batch([item], CFG, torch.Generator().manual_seed(0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_decode_matches_the_cpu_views():
    samples = [{"__key__": str(i), "jpg": _jpeg(_smooth(400, 300, seed=i))} for i in range(6)]
    samples.append({"__key__": "png", "png": _png_bytes()})
    cpu = [decode_image(s, CFG) for s in samples]
    gpu = [decode_image(s, GPU) for s in samples]
    assert sum(isinstance(x, EncodedJPEG) for x in gpu) == 6
    out = train_batch(gpu, GPU, torch.Generator().manual_seed(2))
    assert out.is_cuda and out.shape == (7, 3, 32, 32)
    assert _psnr(out.cpu(), train_batch(cpu, CFG, torch.Generator().manual_seed(2)), CFG.std) > 35
    assert _psnr(eval_batch(gpu, GPU).cpu(), eval_batch(cpu, CFG), CFG.std) > 35
    broken = decode_image({"__key__": "cut", "jpg": samples[0]["jpg"][:2000]}, GPU)
    with pytest.raises(ValueError, match="'cut'"):
        train_batch([gpu[1], broken], GPU, torch.Generator().manual_seed(0))


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_smooth(64, 48)).save(buf, format="PNG")
    return buf.getvalue()


def test_bench_jpeg_tool_runs(tmp_path):
    """tools/bench_jpeg.py end to end on a few small JPEGs (what it reports, not how fast)."""
    from tool_module import load_tool

    tool = load_tool("bench_jpeg")  # registered by name: its JPEG writers are pickled to worker processes
    threads = torch.get_num_threads()
    try:
        out = tool.main(["--folder", str(tmp_path / "jpegs"), "--num-images", "6", "--size", "480x360",
                         "--crop-size", "32", "--batch", "3", "--repeats", "1", "--pixel-batches", "2", "--stages",
                         "--json", str(tmp_path / "r.json")])
    finally:
        torch.set_num_threads(threads)
    assert set(out["in-process"]) == {"old", "new", "new, batch_dtype uint8", "new, jpeg_reduced_decode"}
    assert out["pixels"]["new"]["old"]["max_abs"] == 0  # the default path is bitwise the old one
    assert out["pixels"]["new, batch_dtype uint8"]["old"]["max_abs"] == 0  # and so is the uint8 hand-over
    assert out["pixels"]["new, jpeg_reduced_decode"]["old"]["psnr_db"] > 25
    assert (tmp_path / "r.json").exists() and len(list((tmp_path / "jpegs").glob("*.jpg"))) == 6
