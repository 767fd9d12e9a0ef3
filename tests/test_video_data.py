"""Video data: PyAV decoding (valid, corrupt, too short, three containers), clip sampling and the
training / evaluation views, the motion demo clips, and the VideoModality contract pieces."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import torch

from jepa import registry
from jepa.modalities.video import VideoModality
from jepa.modalities.video.config import VideoConfig, VideoInputConfig
from jepa.modalities.video.decode import VideoItem, probe_video, read_frames
from jepa.modalities.video.demo import class_names, demo_clip, render_clip
from jepa.modalities.video.pyav_io import read_in_order, read_seeking
from jepa.modalities.video.transforms import eval_batch, finish_batch, train_batch

TINY = {"encoder": {"arch": "vit_tiny", "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 4},
        "predictor": {"embed_dim": 24, "depth": 1, "num_heads": 4},
        "input": {"num_frames": 8, "frame_step": 2, "crop_size": 32}}


@pytest.fixture
def video_modality():
    """VideoModality as the registry finds it: through the ``jepa.modalities`` entry point."""
    return registry.get("video")


def encode(frames: np.ndarray, fmt: str = "mp4", codec: str = "libx264", options: dict | None = None,
           pix_fmt: str = "yuv420p") -> bytes:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.options = {"threads": "1", **(options or {})}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def grey_ramp(num_frames: int, size: int = 32) -> np.ndarray:
    """Frame i is flat grey 5 * i (so a decoded frame tells its index)."""
    return np.repeat((5 * np.arange(num_frames, dtype=np.uint8))[:, None, None, None], size, 1).repeat(size, 2).repeat(3, 3)


@pytest.fixture(scope="module")
def ramp_mp4() -> bytes:
    return encode(grey_ramp(48), options={"g": "8", "qp": "0"})  # key frame every 8 frames, lossless


def frame_numbers(clips_BCFSS: torch.Tensor, cfg: VideoInputConfig) -> torch.Tensor:
    """(B, F) frame numbers of grey-ramp clips, read back through the normalisation."""
    mean, std = torch.tensor(cfg.mean).view(1, 3, 1), torch.tensor(cfg.std).view(1, 3, 1)
    grey = (clips_BCFSS.flatten(3).mean(3) * std + mean) * 255  # (B, 3, F)
    return (grey.mean(1) / 5).round().long()


# ---------------------------------------------------------------------------- decoding
def test_decode_demo_clip_matches_the_rendered_frames():
    data, label = demo_clip(3, seed=0, size=64, num_frames=16)
    frames, params = render_clip(3, seed=0, size=64, num_frames=16)
    assert label == params.label == 3
    item = probe_video({"__key__": "c3", "mp4": data}, min_frames=16)
    assert (item.num_frames, item.height, item.width) == (16, 64, 64) and item.frame_pts is not None
    decoded = read_frames(item, range(16))
    assert decoded.shape == (16, 64, 64, 3) and decoded.dtype == torch.uint8
    assert (decoded.int() - torch.from_numpy(frames).int()).abs().float().mean() < 4  # H.264 at CRF 10


@pytest.mark.parametrize("fmt, codec", [("webm", "libvpx"), ("avi", "mpeg4")])
def test_decode_webm_and_avi(fmt, codec):
    data = encode(grey_ramp(12), fmt=fmt, codec=codec, options={"b": "2000000"} if codec == "libvpx" else {"qscale": "2"})
    item = probe_video({"__key__": "k", fmt: data}, min_frames=12)
    assert item.num_frames == 12
    got = read_frames(item, [0, 5, 11]).float().mean((1, 2, 3))
    assert torch.allclose(got, torch.tensor([0.0, 25.0, 55.0]), atol=3)


@pytest.mark.parametrize("payload", [b"", b"not a video at all" * 20, b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200])
def test_corrupt_video_raises_value_error_naming_the_sample(payload):
    with pytest.raises(ValueError, match="'bad7'.*'mp4'"):
        probe_video({"__key__": "bad7", "mp4": payload}, min_frames=1)


def test_truncated_and_damaged_videos_raise_or_stay_usable(ramp_mp4):
    """Any damage either fails decode() with ValueError, or train_batch works on the result."""
    cfg = VideoInputConfig(num_frames=4, frame_step=2, crop_size=16)
    with pytest.raises(ValueError, match="not a readable video"):
        probe_video({"__key__": "t", "mp4": ramp_mp4[: len(ramp_mp4) // 2]}, min_frames=1)
    rng = np.random.default_rng(0)
    outcomes = []
    for start in np.linspace(64, len(ramp_mp4) - 300, 8).astype(int):
        damaged = bytearray(ramp_mp4)
        damaged[start:start + 200] = rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
        try:
            item = probe_video({"__key__": "d", "mp4": bytes(damaged)}, min_frames=cfg.clip_span)
        except ValueError:
            outcomes.append("rejected")
            continue
        for seed in range(4):
            assert train_batch([item], cfg, torch.Generator().manual_seed(seed)).shape == (1, 3, 4, 16, 16)
        outcomes.append("usable")
    assert "rejected" in outcomes, outcomes


def test_too_short_video_raises():
    data = encode(grey_ramp(10))
    with pytest.raises(ValueError, match="has 10 frames, fewer than the 16"):
        probe_video({"__key__": "s", "mp4": data}, min_frames=16)
    with pytest.raises(ValueError, match=r"no video.*\['cls', 'txt'\]"):
        probe_video({"__key__": "x", "txt": b"hi", "cls": b"1"}, min_frames=1)


def test_seeking_reads_the_same_frames_as_decoding_in_order(ramp_mp4):
    item = probe_video({"__key__": "r", "mp4": ramp_mp4}, min_frames=1)
    assert item.num_frames == 48
    wanted = [21, 25, 29, 33]
    seek = read_seeking(item.data, item.height, item.width, item.frame_pts, wanted)
    assert seek is not None
    in_order = read_in_order(item.data, item.height, item.width, wanted)
    for i in wanted:
        assert np.array_equal(seek[i], in_order[i]) and abs(float(seek[i].mean()) - 5 * i) <= 1  # YUV rounding
    # frames come back in the order asked, repeats allowed; without timestamps, in decode order
    no_pts = VideoItem(item.data, item.num_frames, item.height, item.width, None, item.where)
    for it in (item, no_pts):
        got = read_frames(it, [40, 3, 3, 17]).float().mean((1, 2, 3))
        assert torch.allclose(got, torch.tensor([200.0, 15.0, 15.0, 85.0]), atol=1)


# ---------------------------------------------------------------------------- views
def test_train_batch_picks_frames_frame_step_apart_from_a_uniform_start(ramp_mp4):
    cfg = VideoInputConfig(num_frames=4, frame_step=3, crop_size=16)  # span 10 of 48 frames: 39 starts
    item = probe_video({"__key__": "r", "mp4": ramp_mp4}, min_frames=cfg.clip_span)
    starts = []
    for seed in range(12):
        x = train_batch([item] * 8, cfg, torch.Generator().manual_seed(seed))
        assert x.shape == (8, 3, 4, 16, 16) and x.dtype == torch.float32
        idx = frame_numbers(x, cfg)
        assert bool((idx.diff(dim=1) == 3).all()), idx
        starts += idx[:, 0].tolist()
    assert min(starts) >= 0 and max(starts) <= 38
    assert len(set(starts)) > 25 and abs(np.mean(starts) - 19) < 3


def test_train_batch_uses_one_crop_per_clip():
    noise = np.random.default_rng(1).integers(0, 256, (1, 48, 64, 3), dtype=np.uint8)
    data = encode(np.repeat(noise, 12, 0), options={"qp": "0"}, pix_fmt="yuv444p")  # static and lossless
    item = probe_video({"__key__": "n", "mp4": data}, min_frames=1)
    cfg = VideoInputConfig(num_frames=4, frame_step=2, crop_size=24)
    x = train_batch([item] * 6, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(x, x[:, :, :1].expand_as(x))  # every frame of a clip got the same box (and flip)
    assert not torch.allclose(x[0], x[1])  # different clips got different boxes


def test_train_batch_is_a_function_of_the_seed(ramp_mp4):
    items = [probe_video({"__key__": str(i), "mp4": demo_clip(i, 0, 32, 12)[0]}, min_frames=7) for i in range(3)]
    cfg = VideoInputConfig(num_frames=4, frame_step=2, crop_size=16)
    torch.manual_seed(0)
    a = train_batch(items, cfg, torch.Generator().manual_seed(5))
    torch.manual_seed(1)  # the global RNG plays no part
    b = train_batch(items, cfg, torch.Generator().manual_seed(5))
    c = train_batch(items, cfg, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs(float(a.mean())) < 3 and float(a.std()) > 0.1


def test_uint8_batches_finish_to_the_float_batch_bitwise():
    """batch_dtype uint8: the clips' frames handed over as uint8, finish_batch gives exactly the float batch."""
    items = [probe_video({"__key__": str(i), "mp4": demo_clip(i, 0, 32, 12)[0]}, min_frames=7) for i in range(3)]
    cfg = VideoInputConfig(num_frames=4, frame_step=2, crop_size=16)
    compact_cfg = cfg.model_copy(update={"batch_dtype": "uint8"})
    expected = train_batch(items, cfg, torch.Generator().manual_seed(5))
    compact = train_batch(items, compact_cfg, torch.Generator().manual_seed(5))
    assert compact.dtype == torch.uint8 and compact.shape == (3, 4, 3, 16, 16)  # (B, F, C, S, S)
    m = VideoModality(VideoConfig.model_validate({**TINY, "input": {**TINY["input"], "batch_dtype": "uint8"}}))
    assert torch.equal(finish_batch(compact, compact_cfg), expected) and torch.equal(m.finish_batch(compact), expected)
    assert finish_batch(expected, cfg) is expected


def test_eval_batch_is_the_centre_clip(ramp_mp4):
    cfg = VideoInputConfig(num_frames=4, frame_step=3, crop_size=16)
    item = probe_video({"__key__": "r", "mp4": ramp_mp4}, min_frames=cfg.clip_span)
    x = eval_batch([item, item], cfg)
    assert torch.equal(x, eval_batch([item, item], cfg)) and x.shape == (2, 3, 4, 16, 16)
    assert frame_numbers(x, cfg)[0].tolist() == [19, 22, 25, 28]  # start (48 - 10) // 2


# ---------------------------------------------------------------------------- demo clips
def test_demo_clips_are_deterministic_and_balanced():
    # the frames, not the MP4 bytes: libx264 gives other bytes for a few clips from run to run (docs/video_demo.md)
    (a, pa), (b, pb) = render_clip(5, seed=3, size=32, num_frames=8), render_clip(5, seed=3, size=32, num_frames=8)
    np.testing.assert_array_equal(a, b)
    assert pa == pb and demo_clip(5, seed=3, size=32, num_frames=8)[1] == pa.label == 1
    assert not np.array_equal(render_clip(5, seed=4, size=32, num_frames=8)[0], a)
    assert [demo_clip(i, 0, 16, 2, num_classes=8)[1] for i in range(16)] == list(range(8)) * 2
    assert class_names(8)[3] == "left-cw" and class_names(4) == ["right", "left", "down", "up"]
    assert class_names(2) == ["right", "left"] and class_names(5)[-1] == "down-ccw"
    with pytest.raises(ValueError, match="2..4 .* or 5..8"):
        demo_clip(0, 0, num_classes=9)


def _pooled(frames: np.ndarray) -> np.ndarray:
    """(n, S, S, 3) -> (n, 48) 4x4 average-pooled colours."""
    n, s = frames.shape[0], frames.shape[1]
    return frames.reshape(n, 4, s // 4, 4, s // 4, 3).mean((2, 4)).reshape(n, -1) / 255


def _linear_probe_accuracy(features: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Ridge regression on one-hot labels, trained on 3/4, accuracy on the last 1/4."""
    x = np.concatenate([features, np.ones((len(features), 1))], 1)
    cut = len(x) * 3 // 4
    y = np.eye(num_classes)[labels[:cut]]
    w = np.linalg.solve(x[:cut].T @ x[:cut] + 1e-2 * np.eye(x.shape[1]), x[:cut].T @ y)
    return float(((x[cut:] @ w).argmax(1) == labels[cut:]).mean())


def _centroid(frames: np.ndarray) -> np.ndarray:
    """(n, S, S, 3) -> (n, 2) circular (torus) centroid of the pixels far from the median colour."""
    s = frames.shape[1]
    far = np.linalg.norm(frames - np.median(frames, axis=(1, 2), keepdims=True), axis=-1) > 60  # (n, S, S)
    angle = 2 * np.pi * np.arange(s) / s
    cy = np.angle((far * np.exp(1j * angle)[None, :, None]).sum((1, 2)))
    cx = np.angle((far * np.exp(1j * angle)[None, None, :]).sum((1, 2)))
    return np.stack([cy, cx], 1) * s / (2 * np.pi)


@pytest.mark.parametrize("num_classes", [4, 8])
def test_demo_label_is_in_the_motion_not_in_any_single_frame(num_classes):
    n, size = 480, 32
    clips, labels = zip(*((f, p.label) for f, p in (render_clip(i, 11, size, 4, num_classes) for i in range(n))))
    frames, labels = np.stack(clips).astype(np.float64), np.array(labels)  # (n, 4, S, S, 3)
    chance = 1 / num_classes
    for f in (0, 3):  # a single frame (pooled colours + shape centroid) is at chance
        feats = np.concatenate([_pooled(frames[:, f]), _centroid(frames[:, f]) / size], 1)
        assert _linear_probe_accuracy(feats, labels, num_classes) < chance + 0.1
    # two frames tell the direction: the centroid moves along the labelled axis
    shift = (_centroid(frames[:, 3]) - _centroid(frames[:, 0]) + size / 2) % size - size / 2  # (n, 2) as (dy, dx)
    direction = np.select([np.abs(shift[:, 1]) >= np.abs(shift[:, 0]), True],
                          [np.where(shift[:, 1] > 0, 0, 1), np.where(shift[:, 0] > 0, 2, 3)])
    truth = labels if num_classes == 4 else labels // 2
    assert (direction == truth).mean() > 0.95


# ---------------------------------------------------------------------------- the modality
def test_registered_modality_contract_pieces(video_modality):
    assert video_modality is VideoModality and video_modality.name == "video"
    m = registry.bind(VideoConfig())
    assert isinstance(m, VideoModality) and m.check() == []
    assert m.describe() == "ViT-L/16 16x224 t2"
    assert m.file_suffixes() == {".mp4": "mp4", ".webm": "webm", ".avi": "avi"}
    assert 3.4e12 < m.train_flops_per_sample() < 3.8e12
    assert m.example_input(2, torch.Generator().manual_seed(0)).shape == (2, 3, 16, 224, 224)
    meta = m.export_metadata(None)  # type: ignore[arg-type]
    assert (meta["num_frames"], meta["tubelet_size"], meta["patch_size"], meta["arch"]["depth"]) == (16, 2, 16, 24)
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["std"] == [0.229, 0.224, 0.225]


@pytest.mark.parametrize("update, field", [
    ({"input": {"num_frames": 15}}, "input.num_frames"),
    ({"input": {"crop_size": 230}}, "input.crop_size"),
    ({"input": {"in_chans": 1}}, "input.in_chans"),
    ({"encoder": {"num_heads": 10}}, "encoder.num_heads"),
    ({"predictor": {"embed_dim": 100}}, "predictor.num_heads"),
    ({"encoder": {"uniform_power": False, "embed_dim": 100, "num_heads": 4}}, "encoder.uniform_power"),
    ({"mask": {"generators": [{"spatial_scale": [1.0, 1.0], "aspect_ratio": [1.0, 1.0], "num_blocks": 1}]}},
     "mask.generators.0.spatial_scale"),
])
def test_check_names_the_bad_field(update, field):
    assert field in [f for f, _ in VideoModality(VideoConfig.model_validate(update)).check()]


def test_tiny_model_trains_on_demo_clips():
    """decode -> train_batch -> one (context, target) pair per generator -> encoder + predictor -> loss."""
    m = VideoModality(VideoConfig.model_validate(TINY))
    assert m.check() == [] and m.describe() == "ViT-Ti/8 8x32 t2"
    items = [m.decode({"__key__": str(i), "mp4": demo_clip(i, 0, 32, 16)[0]}) for i in range(4)]
    gen = torch.Generator().manual_seed(0)
    x = m.train_batch(items, gen)
    mask_sets = m.build_mask_sampler()(4, gen)
    encoder, predictor = m.build_encoder(), m.build_predictor()
    assert x.shape == (4, 3, 8, 32, 32) and len(mask_sets) == 2
    with torch.no_grad():
        targets = torch.nn.functional.layer_norm(encoder(x), (48,))
    loss = 0.0
    for i, masks in enumerate(mask_sets):
        pred = predictor(encoder(x, masks.context_idx_BK), masks.context_idx_BK, masks.target_idx_BMT[:, 0], i)
        target = targets.gather(1, masks.target_idx_BMT[:, 0, :, None].expand(-1, -1, 48))
        loss = loss + (pred - target).abs().mean() / len(mask_sets)  # V-JEPA's L1, averaged over generators
    loss.backward()
    assert torch.isfinite(loss) and predictor.mask_tokens.grad.abs().sum(dim=(1, 2)).gt(0).all()
    for shape_input in m.export_inputs(encoder, torch.Generator().manual_seed(0)):
        t, h, w = shape_input.shape[2:]
        assert encoder(shape_input).shape[1] == (t // 2) * (h // 8) * (w // 8)
    assert [tuple(s.shape) for s in m.export_inputs(encoder, gen)] == [(2, 3, 8, 32, 32), (1, 3, 6, 32, 24)]
    assert m.eval_batch(items).shape == (4, 3, 8, 32, 32)
