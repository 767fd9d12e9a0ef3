"""Crash isolation of video decoding: PyAV runs in a child process, so a video on which the decoder
raises anything, crashes (SIGSEGV) or hangs is skipped and counted like a corrupt one, in
``decode`` and during ``jepa train`` (inside a data-loader worker), and the next sample decodes.

The misbehaving decoder is the real child program (:mod:`jepa.modalities.video.pyav_io`) with its
probe wrapped to crash, raise or hang on marked bytes: no real file is known to crash FFmpeg.
"""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from jepa.cli import app
from jepa.modalities.video import decoder_process, pyav_io
from jepa.modalities.video.decode import probe_video, read_frames
from jepa.modalities.video.demo import demo_clip
from jepa.recipe import apply_overrides
from tar_files import labelled_members, write_tar

ROOT = Path(__file__).resolve().parents[1]
CRASH, RAISE, HANG = b"CRASH-THE-DECODER", b"RAISE-IN-THE-DECODER", b"HANG-THE-DECODER"
TIMEOUT_S = 3.0  # per request; a child's start-up is not counted


@pytest.fixture
def faulty_decoder(tmp_path, monkeypatch):
    """The decoder child is pyav_io with a probe that crashes / raises / hangs on marked videos and a
    seeking read that crashes; a fresh child for this test and after it."""
    program = tmp_path / "faulty_decoder.py"
    program.write_text(textwrap.dedent(f"""
        import importlib.util, os, signal, sys, time
        spec = importlib.util.spec_from_file_location("pyav_io", {pyav_io.__file__!r})
        pyav_io = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(pyav_io)
        real_probe, real_read = pyav_io.probe, pyav_io.read

        def probe(data):
            if {CRASH!r} in data:
                os.kill(os.getpid(), signal.SIGSEGV)
            if {RAISE!r} in data:
                raise KeyError("an error type PyAV does not document")
            if {HANG!r} in data:
                time.sleep(3600)
            return real_probe(data)

        def read(data, num_frames, height, width, pts, indices):
            if pts is not None:  # the seeking path crashes; reading in decode order works
                os.kill(os.getpid(), signal.SIGSEGV)
            return real_read(data, num_frames, height, width, pts, indices)

        pyav_io.probe, pyav_io.read = probe, read
        pyav_io.serve(float(sys.argv[1]), sys.stdin.buffer, sys.stdout.buffer)
    """))
    monkeypatch.setattr(decoder_process, "CHILD_ARGV", [decoder_process.CHILD_ARGV[0], str(program)])
    monkeypatch.setattr(decoder_process, "DECODE_TIMEOUT_S", TIMEOUT_S)
    decoder_process.decoder().close()
    yield
    decoder_process.decoder().close()


def clip(i: int, marker: bytes = b"") -> bytes:
    """A valid demo clip (16 frames, 32 px); a marker appended after the MP4 boxes still decodes."""
    return demo_clip(i, seed=0, size=32, num_frames=16)[0] + marker


def test_a_crash_an_exception_or_a_hang_of_the_decoder_is_a_value_error(faulty_decoder):
    assert probe_video({"__key__": "ok", "mp4": clip(0)}, 8).num_frames == 16
    for marker, reason in ((CRASH, r"crashed \(SIGSEGV\)"), (RAISE, "KeyError: 'an error type PyAV"),
                           (HANG, f"longer than {TIMEOUT_S:g} s")):
        with pytest.raises(ValueError, match=rf"sample 'bad': 'mp4' is not a readable video \(.*{reason}"):
            probe_video({"__key__": "bad", "mp4": clip(1, marker)}, 8)
        assert probe_video({"__key__": "next", "mp4": clip(2)}, 8).num_frames == 16  # a fresh child goes on
    assert probe_video({"__key__": "inline", "mp4": clip(1, RAISE)}, 8, "in_process").num_frames == 16  # the wrapper is not used


def test_reading_falls_back_to_decode_order_when_seeking_crashes(faulty_decoder):
    item = probe_video({"__key__": "c", "mp4": clip(3)}, 8)
    assert item.frame_pts is not None
    inline = probe_video({"__key__": "c", "mp4": clip(3)}, 8, "in_process")
    assert torch.equal(read_frames(item, [9, 3, 3, 12]), read_frames(inline, [9, 3, 3, 12]))


def _write_shard(path: Path, samples: list[tuple[str, bytes, int]]) -> None:
    write_tar(path, labelled_members([(key, "mp4", data, label) for key, data, label in samples]))


def test_jepa_train_skips_and_counts_videos_that_break_the_decoder(faulty_decoder, tmp_path, caplog):
    """Two steps of recipes/video_demo.yaml (tiny model) in a data-loader worker over a shard where a corrupt
    video, one that crashes the decoder, one on which it raises and one on which it hangs sit between the clips."""
    bad = {"corrupt": b"\x00\x00\x00\x18ftypmp42" + bytes(200), "crash": clip(20, CRASH), "raise": clip(21, RAISE),
           "hang": clip(22, HANG)}
    # Read in this order (shuffle_buffer 1), so the two batches of 4 clips pass every bad sample.
    order = ["g", "crash", "g", "corrupt", "g", "raise", "g", "hang", "g", "g", "g", "g"]
    samples = [(f"s{n:02d}_{kind}", clip(n) if kind == "g" else bad[kind], n % 4) for n, kind in enumerate(order)]
    (tmp_path / "shards").mkdir()
    _write_shard(tmp_path / "shards" / "train-000000.tar", samples)
    raw = apply_overrides(yaml.safe_load((ROOT / "recipes" / "video_demo.yaml").read_text()), [
        f"data.train_shards={tmp_path / 'shards'}", f"run_dir={tmp_path / 'run'}", "max_steps=2",
        "data.global_batch_size=4", "data.num_workers=1", "data.shuffle_buffer=1", "data.samples_per_epoch=8",
        "data.max_skip_rate=0.5", "modality.encoder.embed_dim=48", "modality.encoder.depth=2",
        "modality.encoder.num_heads=4", "modality.predictor.embed_dim=24", "modality.predictor.depth=1",
        "modality.predictor.num_heads=4", "log.every_steps=1", "checkpoint.every_steps=1000"])
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))

    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(app, ["train", str(tmp_path / "recipe.yaml")])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    [ckpt] = (tmp_path / "run" / "checkpoints").glob("step_*")
    [worker] = torch.load(ckpt / "rank_00000.pt", weights_only=True)["loader"]["workers"]
    assert (worker["seen"], worker["skipped"], worker["batches"]) == (12, 4, 2)
    warned = " ".join(r.getMessage() for r in caplog.records)  # the first warning: 3 skips by the first batch
    assert "3 of 7 samples" in warned and "skipped as corrupt" in warned and "s05_raise" in warned, warned
