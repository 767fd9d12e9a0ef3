"""The video demo's clips (jepa.modalities.video.demo_shapes): a still shape under per-frame noise and colour blobs."""

from __future__ import annotations

import hashlib
import io

import av
import numpy as np
import pytest

from jepa import registry
from jepa.data import read_manifest, read_shard
from jepa.errors import ConfigError
from jepa.interfaces import DemoDataSpec
from jepa.modalities.video.demo_shapes import GENERATOR, GENERATOR_FILE, ShapeClips
from jepa.vision.shapes import CLASS_NAMES


def test_clips_are_a_function_of_seed_and_index_with_balanced_labels():
    clips = ShapeClips(size=32, num_frames=8)
    a, label = clips.render(3, seed=5)
    b, again = clips.render(3, seed=5)
    assert a.shape == (8, 32, 32, 3) and a.dtype == np.uint8 and label == again == 3
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, clips.render(3, seed=6)[0]) and not np.array_equal(a, clips.render(13, seed=5)[0])
    assert [clips.render(i, 0)[1] for i in range(20)] == [i % 10 for i in range(20)]
    assert ShapeClips(num_classes=4).classes == list(CLASS_NAMES[:4])


def _patch_means(frames: np.ndarray) -> np.ndarray:
    """(..., 64, 64, 3) -> (..., 8, 8, 3): what one 8 px patch can average within a frame."""
    return frames.astype(np.float64).reshape(*frames.shape[:-3], 8, 8, 8, 8, 3).mean((-4, -2))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_the_noise_is_fresh_every_frame_and_the_clip_mean_recovers_the_shape():
    """Without noise every frame is the same picture; with the demo's noise the frames differ, and at the scale
    of an 8 px patch (what an encoder averages within one frame) one frame is far from the clean picture while the
    mean of the 8 frames a video view sees (step 2) is close: what the clip tells and one frame does not."""
    one, mean8 = [], []
    for index in range(10):
        clean, _ = ShapeClips(noise=0.0, blob=0.0).render(index, seed=0)
        noisy, _ = ShapeClips().render(index, seed=0)  # the same shape, place and grey levels
        assert (clean == clean[:1]).all()
        assert (noisy[1].astype(np.float64) - noisy[0]).std() > 60  # independent noise in consecutive frames
        truth = _patch_means(clean[0])
        one.append(_corr(_patch_means(noisy[16]), truth))
        mean8.append(_corr(_patch_means(noisy[8:24:2]).mean(0), truth))
    assert np.mean(one) < 0.7 and np.mean(mean8) > 0.8 and min(mean8) > max(one) - 0.05, (one, mean8)


def test_blobs_survive_averaging_within_a_frame_and_pixel_noise_does_not():
    """Why the demo has blobs: pixel noise alone (0.5, the first version of these clips) averages away within an
    8 px patch, so one frame told the shape as well as the clip did (docs/video_demo.md); blobs are smooth at
    the scale of the shape's parts and do not."""
    clean, _ = ShapeClips(noise=0.0, blob=0.0).render(7, seed=0)
    truth = _patch_means(clean[0])
    pixels, _ = ShapeClips(noise=0.5, blob=0.0).render(7, seed=0)
    blobs, _ = ShapeClips(noise=0.0).render(7, seed=0)
    assert _corr(_patch_means(pixels[16]), truth) > 0.9 > 0.75 > _corr(_patch_means(blobs[16]), truth)
    residual = blobs[16].astype(np.float64) - clean[0]
    neighbours = _corr(residual[:, :-1], residual[:, 1:])
    pixel_residual = pixels[16].astype(np.float64) - clean[0]
    assert neighbours > 0.8 and abs(_corr(pixel_residual[:, :-1], pixel_residual[:, 1:])) < 0.2
    # blobs are drawn last, so clips without them are those of the code before blobs (digest taken from it)
    old = hashlib.sha256(ShapeClips(noise=0.5, blob=0.0).render(7, seed=0)[0].tobytes()).hexdigest()
    assert old == "23da79a80f4de9d8977684d770a3db6c99d73e703ea6f0abfc7ebf003bfe2b6b"


def _decoded(mp4: bytes) -> np.ndarray:
    with av.open(io.BytesIO(mp4)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(np.float64)


def test_frames_are_the_same_in_every_process_and_their_mp4s_decode_alike(tmp_path):
    """The rendered frames are a pure function of (seed, index) in any process and at any thread count. The H.264
    bytes are not quite: libx264 (single-threaded, the settings of encode_mp4) gives other bytes for a few clips
    from process to process (docs/video_demo.md: 2-20 of 40 clips over 6 processes), so the MP4s must decode to
    nearly the same frames, not to the same bytes."""
    import os
    import subprocess
    import sys

    code = ("import hashlib, sys; from jepa.modalities.video.demo import encode_mp4; "
            "from jepa.modalities.video.demo_shapes import ShapeClips; "
            "frames = ShapeClips(num_frames=8).render(4, 7)[0]; open(sys.argv[1], 'wb').write(encode_mp4(frames)); "
            "print(hashlib.sha256(frames.tobytes()).hexdigest())")
    digests, decoded = set(), []
    for n, threads in enumerate((1, 2, 1, 4)):
        out = tmp_path / f"{n}.mp4"
        digests.add(subprocess.run([sys.executable, "-c", code, str(out)], check=True, capture_output=True, text=True,
                                   env={**os.environ, "OMP_NUM_THREADS": str(threads)}).stdout.strip())
        decoded.append(_decoded(out.read_bytes()))
    assert len(digests) == 1, digests
    for other in decoded[1:]:
        assert np.abs(other - decoded[0]).mean() < 0.5  # of 255; measured: 0.02-0.15 where the bytes differ


def test_settings_are_checked():
    for bad in (dict(num_classes=11), dict(num_classes=1), dict(size=15), dict(num_frames=1), dict(noise=-0.1),
                dict(open_p=0.0), dict(cell=0), dict(blob=-0.1), dict(blob=2.5), dict(blob_cell=0), dict(blob_cell=65)):
        with pytest.raises(ConfigError):
            ShapeClips(**bad)
    assert "screen" not in GENERATOR and "screen of 8 px cells" in ShapeClips(open_p=0.35).generator
    assert "blobs 0.5 in 8 px cells" in GENERATOR and "blobs" not in ShapeClips(blob=0.0).generator


def test_the_video_modality_writes_them_as_its_demo_data(tmp_path):
    spec = DemoDataSpec(num_train=6, num_val=3, num_classes=3, size=32, max_count=4)
    manifests = registry.get("video")().write_demo_data(tmp_path, spec)
    assert (tmp_path / GENERATOR_FILE).read_text().strip() == GENERATOR
    train = read_manifest(tmp_path / "train")
    assert manifests["train"].total == train.total == 6 and train.classes == list(CLASS_NAMES[:3])
    samples = [s for shard in train.shards for s in read_shard(str(tmp_path / "train" / shard.name))]
    assert sorted(int(s["cls"]) for s in samples) == [0, 0, 1, 1, 2, 2]
    with av.open(io.BytesIO(samples[0]["mp4"])) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 32 and frames[0].shape == (32, 32, 3)
    assert registry.get("video").demo_defaults.num_classes == 10


def test_the_screening_tool_writes_the_demo_clips_and_view_images(tmp_path):
    """tools/video_shape_clips.py: with the demo's settings it writes the clips `jepa demo-data --modality video`
    writes (the same frames); with --view-images the middle frame and the mean of the evaluation view's frames."""
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    tool = Path(__file__).resolve().parents[1] / "tools" / "video_shape_clips.py"

    def run(*args: str) -> None:
        subprocess.run([sys.executable, str(tool), *args, "--num-train", "3", "--num-val", "1"], check=True,
                       capture_output=True)

    run(str(tmp_path / "tool"), "--open", "1", "--noise", "0.4", "--blob", "0.5")
    registry.get("video")().write_demo_data(tmp_path / "demo", DemoDataSpec(num_train=3, num_val=1, num_classes=10,
                                                                             size=64, max_count=250))
    for split in ("train", "val"):
        [shard] = read_manifest(tmp_path / "demo" / split).shards
        ours = list(read_shard(str(tmp_path / "tool" / split / shard.name)))
        demo = list(read_shard(str(tmp_path / "demo" / split / shard.name)))
        assert [(s["__key__"], s["cls"]) for s in ours] == [(s["__key__"], s["cls"]) for s in demo]
        for a, b in zip(ours, demo):  # the same frames; the H.264 bytes of a clip can differ (see above)
            assert np.abs(_decoded(a["mp4"]) - _decoded(b["mp4"])).mean() < 0.5
    assert (tmp_path / "tool" / GENERATOR_FILE).read_text() == (tmp_path / "demo" / GENERATOR_FILE).read_text()

    run(str(tmp_path / "images"), "--open", "1", "--noise", "0.4", "--blob", "0.5", "--view-images")
    from jepa.modalities.video.demo import split_seed

    clip, label = ShapeClips().render(2, split_seed(0, "train"))  # train clip 2
    for kind, expected in (("one", clip[16]), ("mean", clip[8:24:2].astype(np.float64).mean(0).round())):
        [shard] = read_manifest(tmp_path / "images" / kind / "train").shards
        sample = list(read_shard(str(tmp_path / "images" / kind / "train" / shard.name)))[2]
        assert int(sample["cls"]) == label
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(sample["png"]))), expected.astype(np.uint8))
    assert read_manifest(tmp_path / "images" / "mean" / "val").total == 1
