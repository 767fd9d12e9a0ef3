"""The video demo's clips (jepa.modalities.video.demo_shapes): a still shape under per-frame noise."""

from __future__ import annotations

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


def test_the_noise_is_fresh_every_frame_and_the_clip_mean_recovers_the_shape():
    """Without noise every frame is the same picture; with the demo's noise one frame is far from it and
    the mean over the clip's frames is close: what the clip tells and one frame does not."""
    clean, _ = ShapeClips(noise=0.0, size=64, num_frames=32).render(7, seed=0)
    noisy, _ = ShapeClips(size=64, num_frames=32).render(7, seed=0)  # the same shape, place and grey levels
    assert (clean == clean[:1]).all()
    truth = clean[0].astype(np.float64)
    one_frame = np.abs(noisy[16].astype(np.float64) - truth).mean()
    clip_mean = np.abs(noisy.astype(np.float64).mean(0) - truth).mean()
    assert one_frame > 60 and clip_mean < one_frame / 2.5, (one_frame, clip_mean)
    frame_diff = noisy[1].astype(np.float64) - noisy[0]
    assert frame_diff.std() > 60  # independent noise in consecutive frames


def test_mp4_bytes_are_the_same_in_every_process():
    """encode_mp4 gave other bytes for the same frames from process to process until it converted to yuv420p
    itself (4 digests in 4 processes before); the bytes must not depend on the process or its thread count."""
    import os
    import subprocess
    import sys

    code = ("import hashlib; from jepa.modalities.video.demo import encode_mp4; "
            "from jepa.modalities.video.demo_shapes import ShapeClips; "
            "print(hashlib.sha256(encode_mp4(ShapeClips(num_frames=8).render(4, 7)[0])).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                              capture_output=True, text=True, check=True).stdout.strip() for threads in (1, 2, 1, 4)}
    assert len(digests) == 1, digests


def test_settings_are_checked():
    for bad in (dict(num_classes=11), dict(num_classes=1), dict(size=15), dict(num_frames=1), dict(noise=-0.1),
                dict(open_p=0.0), dict(cell=0)):
        with pytest.raises(ConfigError):
            ShapeClips(**bad)
    assert "screen" not in GENERATOR and "screen of 8 px cells" in ShapeClips(open_p=0.35).generator


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
