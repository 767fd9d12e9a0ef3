"""Hostile inputs and real faults: no code runs from checkpoints or TorchScript, crafted images are
skipped and counted, SIGTERM leaves a checkpoint that resumes exactly, one run per directory,
checksummed checkpoints with fallback, one-line errors.

Fast, in-process cases run by default; the ones that start ``jepa train`` processes (signals,
two runs, torchrun) are ``slow``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from jepa import checkpoint
from jepa.checkpoint import complete_checkpoints, load_model_weights
from cli_runner import run_jepa as _cli
from jepa.data import read_shard
from jepa.data import reading as reading_mod
from jepa.modalities.image import ImageModality
from jepa.modalities.image.config import ImageConfig
from jepa.monitor import read_metrics
from jepa.preemption import PreemptedError, Preemption
from jepa.recipe import parse_recipe
from jepa.run_lock import LOCK_FILE
from tar_files import write_tar
from jepa.train import train
from jepa.weights import safe_load

LONG = ("optim.epochs=20", "optim.warmup_epochs=0.05")  # schedules of 2000 steps: the test stops the run


def _losses(run_dir: Path) -> list[float]:
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, len(records) + 1)), "metrics.jsonl has gaps or repeats"
    return [r["loss"] for r in records]


# =========================================================================== nothing executes on load


class _Payload:
    """Unpickling this runs ``touch MARKER`` (what a crafted checkpoint does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(path: Path, marker: Path) -> None:
    """Replace ``path`` by a malicious pickle and make its checkpoint's digests agree (someone who can
    write the run directory can do that too): only the safe loader stands in the way."""
    torch.save({"state": _Payload(marker)}, path)
    directory = next(p for p in path.parents if (p / checkpoint.DIGESTS_FILE).is_file())
    table = json.loads((directory / checkpoint.DIGESTS_FILE).read_text())
    name = path.relative_to(directory).as_posix()
    table["files"][name] = {"size": path.stat().st_size, "sha256": checkpoint.file_digest(path)}
    (directory / checkpoint.DIGESTS_FILE).write_text(json.dumps(table))


def test_the_payload_runs_when_unpickled_unsafely(tmp_path):
    """The payload is real: ``weights_only=False`` (what DeepSpeed and the old loader did) runs it."""
    marker = tmp_path / "ran"
    torch.save({"state": _Payload(marker)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


@pytest.fixture(scope="module")
def zero1_run(tmp_path_factory, toy_recipe_at):
    """A ZeRO-1 run of 2 steps (its DeepSpeed optimiser file holds DeepSpeed's own record types)."""
    run_dir = tmp_path_factory.mktemp("zero1") / "run"
    train(toy_recipe_at(run_dir, *LONG, "engine.zero_stage=1", "max_steps=2"))
    return run_dir


def test_a_real_zero1_checkpoint_resumes_through_the_safe_loader(zero1_run, tmp_path, toy_recipe_at):
    run_dir = tmp_path / "run"
    shutil.copytree(zero1_run, run_dir)
    result = train(toy_recipe_at(run_dir, *LONG, "engine.zero_stage=1", "max_steps=3"))
    assert result.step == 3


@pytest.mark.parametrize("victim", ["models.pt", "rank_00000.pt", "deepspeed/mp_rank_00_model_states.pt",
                                    "deepspeed/zero_pp_rank_0_mp_rank_00_optim_states.pt"])
def test_malicious_pickle_in_any_checkpoint_file_never_runs(victim, zero1_run, tmp_path, toy_recipe_at):
    run_dir = tmp_path / "run"
    shutil.copytree(zero1_run, run_dir)
    marker = tmp_path / "ran"
    _plant(run_dir / "checkpoints" / "step_000002" / victim, marker)
    with pytest.raises(ValueError, match="tensors") as info:
        train(toy_recipe_at(run_dir, *LONG, "engine.zero_stage=1", "max_steps=3"))
    assert Path(victim).name in str(info.value)
    assert not marker.exists(), "the pickle's code ran"
    assert not (run_dir / LOCK_FILE).exists()


def test_malicious_weights_are_refused_by_export_eval_and_the_foreign_reader(zero1_run, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(zero1_run, run_dir)
    marker = tmp_path / "ran"
    _plant(run_dir / "checkpoints" / "step_000002" / "models.pt", marker)
    code, _, err = _cli(monkeypatch, capsys, "export", str(run_dir), "--out", str(tmp_path / "e.pt"))
    assert code == 2 and "weights_only" in err and "Traceback" not in err
    torch.save({"encoder": _Payload(marker)}, tmp_path / "released.pth.tar")
    code, _, err = _cli(monkeypatch, capsys, "export", str(tmp_path / "released.pth.tar"), "--out", str(tmp_path / "f.pt"))
    assert code == 2 and "cannot be read safely" in err
    with pytest.raises(ValueError, match="weights_only"):
        safe_load(tmp_path / "released.pth.tar", "a checkpoint")
    assert not marker.exists() and not (tmp_path / "e.pt").exists()


def _crafted_torchscript(path: Path, marker: Path) -> None:
    """A TorchScript file whose ``__setstate__`` creates ``marker`` when ``torch.jit.load`` reads it."""
    code = f"""
import torch
from typing import Tuple

class Crafted(torch.nn.Module):
    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker

    def forward(self, x):
        return x

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool]:
        return (self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool]) -> None:
        self.marker = state[0]
        written = torch.from_file(self.marker, True, 4, dtype=torch.uint8)
        self.training = state[1] and written.numel() >= 0

torch.jit.save(torch.jit.script(Crafted({str(marker)!r})), {str(path)!r},
               _extra_files={{"jepa_export.json": "{{}}"}})
"""
    script = path.with_suffix(".py")
    script.write_text(code)
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True)


def test_crafted_torchscript_never_runs_without_the_trust_flag(tmp_path, monkeypatch, capsys):
    from jepa.sources import read_export_metadata

    crafted, marker = tmp_path / "crafted.pt", tmp_path / "ran"
    _crafted_torchscript(crafted, marker)
    assert not marker.exists()
    code, _, err = _cli(monkeypatch, capsys, "export", str(crafted), "--out", str(tmp_path / "o.pt"))
    assert code == 2 and "runs the code stored in it" in err
    code, _, err = _cli(monkeypatch, capsys, "eval", str(crafted), "--train-shards", "x.tar", "--val-shards", "y.tar")
    assert code == 2 and "--trust-torchscript" in err
    with pytest.raises(ValueError, match="without readable jepa_export.json metadata"):
        read_export_metadata(crafted)  # the metadata is read as data, and this file's holds none of ours
    assert not marker.exists(), "the TorchScript file's code ran"
    torch.jit.load(str(crafted))  # what the flag allows: the file's code runs
    assert marker.exists()


# =========================================================================== decoding


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def truncated_png(side: int = 32) -> bytes:
    """A well-formed PNG (valid chunks and CRCs) whose image data stops early: torchvision 0.29's
    decoder segfaults on it."""
    rows = b"".join(b"\x00" + np.random.default_rng(0).integers(0, 256, side * 3, dtype=np.uint8).tobytes()
                    for _ in range(side))
    data = zlib.compress(rows)
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data[: len(data) // 3])
            + _png_chunk(b"IEND", b""))


def png_bomb(side: int = 20_000) -> bytes:
    """A ~390 KB PNG that declares side x side pixels (400 M for 20000)."""
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(b"\x00" * (1 + side)) for _ in range(side)) + comp.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def ppm_bomb() -> bytes:
    """A 300-byte PPM that declares 60000 x 60000 pixels."""
    return b"P6\n60000 60000\n255\n" + b"\x00" * 256


def _image(seed: int, fmt: str = "PNG", side: int = 32) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


#: file name -> bytes: what `jepa shards` must skip (and count), and what it must keep.
CRAFTED = {"truncated.png": truncated_png(), "bomb.png": png_bomb(), "bomb.ppm": ppm_bomb(),
           "text.jpg": b"this is not an image\n" * 20, "empty.png": b"", "half.jpg": _image(7, "JPEG")[:300]}
GOOD = {"png_named_jpg.jpg": _image(8, "PNG"), **{f"good{i}.png": _image(i) for i in range(4)}}


@pytest.mark.slow
def test_torchvision_crashes_on_the_truncated_png(tmp_path):
    """Why PNG goes through Pillow: the crash is real (in a child process)."""
    path = tmp_path / "t.png"
    path.write_bytes(truncated_png())
    code = ("import torch, torchvision.io as io, sys; d = open(sys.argv[1], 'rb').read(); "
            "io.decode_image(torch.frombuffer(bytearray(d), dtype=torch.uint8))")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGSEGV, proc.returncode


def test_crafted_images_are_refused_as_value_errors_without_decoding_bombs():
    from jepa.modalities.image.transforms import decode_image

    for name, data in CRAFTED.items():
        start = time.perf_counter()
        with pytest.raises(ValueError, match="not a readable image|is empty"):
            decode_image({"__key__": name, name.rsplit(".", 1)[1]: data})
        assert time.perf_counter() - start < 2, name  # bombs are refused from the header
    assert decode_image({"__key__": "p", "jpg": GOOD["png_named_jpg.jpg"]}).shape == (3, 32, 32)


class CrashingImageModality(ImageModality):
    """The image modality whose decoder segfaults on files starting with b"CRASH" (a stand-in for
    a native decoder bug) and hangs on b"HANG"."""

    def decode(self, sample: dict[str, Any]) -> torch.Tensor:
        data = next(v for k, v in sample.items() if not k.startswith("__"))
        if data.startswith(b"CRASH"):
            os.kill(os.getpid(), signal.SIGSEGV)
        if data.startswith(b"HANG"):
            time.sleep(3600)
        return super().decode(sample)


def test_shards_screens_crafted_files_and_survives_a_decoder_crash(tmp_path, monkeypatch):
    from jepa.data import shard_folder
    from jepa.data import screening

    src = tmp_path / "src"
    src.mkdir()
    for name, data in {**CRAFTED, **GOOD, "crash.png": b"CRASH" + GOOD["good0.png"],
                       "hang.png": b"HANG" + GOOD["good0.png"]}.items():
        (src / name).write_bytes(data)
    monkeypatch.setattr(screening, "DECODE_TIMEOUT_S", 2.0)
    manifest = shard_folder(src, tmp_path / "out", CrashingImageModality(ImageConfig()), max_count=100, workers=1,
                            show_progress=False)
    skipped = {s.path: s.error for s in manifest.skipped}
    assert set(skipped) == {*CRAFTED, "crash.png", "hang.png"}
    assert manifest.total == len(GOOD)
    assert "SIGSEGV" in skipped["crash.png"] and "longer than 2 s" in skipped["hang.png"]
    assert "DecompressionBomb" in skipped["bomb.png"] and "truncated" in skipped["truncated.png"]


@pytest.mark.slow
def test_cli_shards_reports_the_crafted_files(tmp_path, monkeypatch, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for name, data in {**CRAFTED, **GOOD}.items():
        (src / name).write_bytes(data)
    code, out, err = _cli(monkeypatch, capsys, "shards", str(src), str(tmp_path / "out"), "--workers", "1")
    assert code == 0, err
    assert f"wrote {len(GOOD)} samples" in out and f"({len(CRAFTED)} skipped" in out
    assert all(name in err for name in CRAFTED) and "Traceback" not in err


def _image_recipe(tmp_path: Path, run: str, shards: str, *extra: str):
    from jepa.recipe import apply_overrides

    raw = {
        "name": "faults", "run_dir": str(tmp_path / run),
        "modality": {"name": "image", "encoder": {"arch": "vit_tiny", "patch_size": 8, "embed_dim": 64, "depth": 2,
                                                  "num_heads": 2},
                     "predictor": {"embed_dim": 32, "depth": 1, "num_heads": 2},
                     "mask": {"mode": "fixed", "min_keep": 2}, "input": {"crop_size": 32}},
        "data": {"train_shards": shards, "samples_per_epoch": 64, "global_batch_size": 8, "num_workers": 0,
                 "shuffle_buffer": 8},
        "optim": {"epochs": 100, "warmup_epochs": 0.5}, "engine": {"precision": "fp32"},
        "log": {"every_steps": 1}, "checkpoint": {"every_steps": 1000},
    }
    return parse_recipe(apply_overrides(raw, list(extra)), "faults recipe")


def test_training_skips_and_counts_crafted_images(tmp_path):
    """A shard of 32 good images and the crafted ones (under their own and wrong extensions): the
    run goes on, and the loader state saved with the checkpoint counts every crafted sample."""
    members = {f"good{i:03d}.png": _image(i) for i in range(32)}
    members.update({f"bad{i:03d}.{name.rsplit('.', 1)[1]}": data for i, (name, data) in enumerate(CRAFTED.items())})
    members["wrongext.jpg"] = _image(99, "PNG")  # readable: a PNG stored as .jpg
    shard = write_tar(tmp_path / "crafted-000000.tar", members)
    recipe = _image_recipe(tmp_path, "run", str(shard), "max_steps=5", "data.max_skip_rate=0.5",
                           "data.min_samples_for_skip_check=1000")
    result = train(recipe)  # 5 batches of 8 need 40 images: more than one pass over the shard's 33
    assert result.step == 5
    state = safe_load(result.checkpoint / "rank_00000.pt", "rank state")
    worker = state["loader"]["workers"][0]
    assert worker["seen"] > len(members) and worker["skipped"] >= len(CRAFTED)
    assert worker["seen"] - worker["skipped"] == 5 * 8  # every other sample made it into a batch


def test_oversized_members_and_streams_are_bounded(tmp_path, monkeypatch):
    import gzip

    shard = write_tar(tmp_path / "s.tar", {"a.png": _image(0), "big.png": b"\x00" * 5000, "c.png": _image(1)})
    monkeypatch.setattr(reading_mod, "MAX_MEMBER_BYTES", 4096)
    samples = list(read_shard(str(shard)))
    assert [s["__key__"] for s in samples] == ["a", "big", "c"]
    assert "larger than 4,096 bytes" in samples[1]["__error__"] and "__error__" not in samples[2]

    bomb = tmp_path / "bomb.tar"  # a small gzip stream that expands to many members
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for i in range(200):
            info = tarfile.TarInfo(f"x{i:04d}.bin")
            info.size = 2048
            tar.addfile(info, io.BytesIO(b"\x00" * 2048))
    bomb.write_bytes(gzip.compress(raw.getvalue()))
    assert bomb.stat().st_size < 10_000
    monkeypatch.setattr(reading_mod, "MAX_SHARD_BYTES", 100_000)
    with pytest.raises(tarfile.ReadError, match="MAX_SHARD_BYTES"):
        list(read_shard(str(bomb)))


def test_pipe_urls_can_be_turned_off(tmp_path, monkeypatch):
    from jepa.data import expand_shards

    spec = f"pipe:touch {tmp_path / 'ran'}"
    assert expand_shards(spec) == [spec]
    monkeypatch.setenv("JEPA_NO_PIPE", "1")
    with pytest.raises(ValueError, match="pipe: shard URLs run shell commands and JEPA_NO_PIPE is set"):
        expand_shards(spec)
    assert not (tmp_path / "ran").exists()


def test_data_health_stops_are_one_line_errors(tmp_path, monkeypatch, capsys):
    shard = write_tar(tmp_path / "bad-000000.tar", {f"x{i:03d}.png": truncated_png() for i in range(40)})
    recipe_file = tmp_path / "r.yaml"
    recipe = _image_recipe(tmp_path, "run", str(shard), "max_steps=4", "data.min_samples_for_skip_check=10")
    recipe_file.write_text(recipe.to_yaml())
    code, _, err = _cli(monkeypatch, capsys, "train", str(recipe_file))
    assert code == 1 and "could not be decoded, more than data.max_skip_rate" in err and "Traceback" not in err
    empty = write_tar(tmp_path / "empty-000000.tar", {})
    recipe_file.write_text(_image_recipe(tmp_path, "run2", str(empty), "max_steps=4").to_yaml())
    code, _, err = _cli(monkeypatch, capsys, "train", str(recipe_file))
    assert code == 1 and "gave no sample" in err and "Traceback" not in err


# =========================================================================== run directory


def test_refused_commands_leave_the_run_directory_untouched(toy_recipe, toy_recipe_file, monkeypatch, capsys):
    recipe = toy_recipe("run", *LONG, "max_steps=2")
    train(recipe)
    run_dir = recipe.resolved_run_dir

    def snapshot() -> dict[str, tuple[int, bytes]]:
        return {str(p.relative_to(run_dir)): (p.stat().st_mtime_ns, p.read_bytes())
                for p in sorted(run_dir.rglob("*")) if p.is_file()}

    before = snapshot()
    for change in ("seed=1", "optim.lr=0.002", "data.num_workers=1", "data.global_batch_size=16"):
        with pytest.raises(ValueError):
            train(toy_recipe("run", *LONG, "max_steps=3", change), resume="auto")
    code, _, err = _cli(monkeypatch, capsys, "train", str(toy_recipe_file("run", *LONG, "max_steps=3", "seed=5")))
    assert code == 2 and "seed: 0 -> 5" in err
    assert snapshot() == before, "a refused command modified the run directory"


def test_a_live_lock_refuses_and_a_stale_one_is_named_and_taken_over(toy_recipe, caplog):
    recipe = toy_recipe("run", *LONG, "max_steps=1")
    run_dir = recipe.resolved_run_dir
    run_dir.mkdir(parents=True)
    lock = run_dir / LOCK_FILE
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": sleeper.pid, "started": time.time() - 1}))
        with pytest.raises(ValueError, match=rf"in use by another `jepa train` \(pid {sleeper.pid} on"):
            train(recipe)
        assert lock.exists() and not (run_dir / "recipe.yaml").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    with caplog.at_level(logging.WARNING):
        assert train(recipe).step == 1  # the holder is gone: its lock is stale
    assert f"taking over a stale lock (pid {sleeper.pid}" in caplog.text and "no longer running" in caplog.text
    assert not lock.exists(), "the lock is released when the run ends"


def test_run_dir_that_is_a_file_and_a_full_disk_are_one_line_errors(tmp_path, toy_recipe_file, monkeypatch, capsys):
    (tmp_path / "afile").write_text("x")
    code, _, err = _cli(monkeypatch, capsys, "train", str(toy_recipe_file("x", f"run_dir={tmp_path / 'afile'}")))
    assert code == 2 and "is a file, not a directory" in err and "Traceback" not in err

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "run" / "checkpoints"))

    import jepa.checkpoint.save as checkpoint_save

    monkeypatch.setattr(checkpoint_save.torch, "save", full)
    code, _, err = _cli(monkeypatch, capsys, "train", str(toy_recipe_file("run", "max_steps=1")))
    assert code == 2 and "No space left on device; free some space" in err and "Traceback" not in err
    assert not (tmp_path / "run" / LOCK_FILE).exists()


# =========================================================================== checkpoint integrity


def _flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def reference_losses(tmp_path_factory, toy_recipe_at) -> list[float]:
    result = train(toy_recipe_at(tmp_path_factory.mktemp("ref") / "run", *LONG, "max_steps=6"))
    return _losses(result.run_dir)


@pytest.mark.parametrize("damage", ["bit flip in models.pt", pytest.param("truncated optimiser state", marks=pytest.mark.slow),
                                    pytest.param("missing rank file", marks=pytest.mark.slow)])
def test_a_corrupted_newest_checkpoint_falls_back_to_the_previous_valid_one(damage, toy_recipe, reference_losses, caplog):
    common = (*LONG, "checkpoint.every_steps=2", "checkpoint.keep_last=2")
    run_dir = train(toy_recipe("run", *common, "max_steps=4")).run_dir
    newest = run_dir / "checkpoints" / "step_000004"
    if damage.startswith("bit flip"):
        _flip_a_bit(newest / "models.pt")
    elif damage.startswith("truncated"):
        victim = next((newest / "deepspeed").glob("*model_states.pt"))
        victim.write_bytes(victim.read_bytes()[:100])
    else:
        (newest / "rank_00000.pt").unlink()
    assert checkpoint.verify_checkpoint(newest) != []
    if damage.startswith("bit flip"):  # export and eval read models.pt only
        with pytest.raises(ValueError, match="the checkpoint is invalid"):
            load_model_weights(newest)
        assert load_model_weights(run_dir).step == 2  # the run's newest valid weights

    with caplog.at_level(logging.WARNING):
        result = train(toy_recipe("run", *common, "max_steps=6"), resume="auto")
    assert "skipped step_000004" in caplog.text and "resuming from" in caplog.text
    assert result.step == 6 and _losses(run_dir) == reference_losses


def test_pruning_after_a_fallback_keeps_the_newest_valid_checkpoint(toy_recipe):
    common = (*LONG, "checkpoint.every_steps=3", "checkpoint.keep_last=2")
    run_dir = train(toy_recipe("run", *common, "max_steps=6")).run_dir
    _flip_a_bit(run_dir / "checkpoints" / "step_000006" / "models.pt")
    train(toy_recipe("run", *common, "max_steps=5"), resume="auto")  # falls back to 3, saves 5 (its end)
    names = [p.name for _, p in complete_checkpoints(run_dir)]
    assert names == ["step_000003", "step_000005", "step_000006"]  # the good 3 stays; 6 (a later step) is left
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_000005"
    assert checkpoint.resume_candidates(run_dir)[0].name == "step_000005"  # latest is read: 5 before 6
    train(toy_recipe("run", *common, "max_steps=8"), resume="auto")  # from 5; saves 6 (replacing the bad one), 8
    names = [p.name for _, p in complete_checkpoints(run_dir)]
    assert names == ["step_000006", "step_000008"]
    assert all(checkpoint.verify_checkpoint(run_dir / "checkpoints" / n) == [] for n in names)


# =========================================================================== preemption


def test_second_sigterm_raises_at_once_and_a_stalled_data_wait_within_the_grace_period():
    preemption = Preemption()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert preemption.requested  # the first asks for a checkpoint at the end of the step
        with pytest.raises(PreemptedError, match="second SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        preemption.close()
    preemption = Preemption()
    try:
        with preemption.waiting_for_data():  # data that comes within the grace period is still used
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
        assert preemption.requested
    finally:
        preemption.close()
    preemption = Preemption()
    monkey = pytest.MonkeyPatch()
    monkey.setattr("jepa.preemption.DATA_WAIT_GRACE_S", 0.5)
    try:
        start = time.monotonic()
        with pytest.raises(PreemptedError, match=r"while waiting for data \(none came within 0.5 s\)"):
            with preemption.waiting_for_data():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)  # a stalled read: the grace timer interrupts it
        assert time.monotonic() - start < 5
    finally:
        preemption.close()
        monkey.undo()


def _demo_shards(root: Path) -> list[Path]:
    from jepa.modalities.image.demo_data import write_demo_dataset

    write_demo_dataset(root, num_images=64, num_val=0, size=32, max_count=16, show_progress=False)
    return sorted((root / "train").glob("*.tar"))


def _start_group(recipe_file: Path, *args: str) -> subprocess.Popen:
    """``jepa train`` in a new process group (what Slurm, ``timeout`` and systemd signal)."""
    return subprocess.Popen([sys.executable, "-m", "jepa.cli", "train", str(recipe_file), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_for(proc: subprocess.Popen, condition, what: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"training exited (rc {proc.returncode}) before {what}:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_loader_workers_resumes_exactly(tmp_path):
    shards = "::".join(str(s) for s in _demo_shards(tmp_path / "data"))
    workers = ("data.num_workers=2", "data.shuffle_buffer=16")
    straight = train(_image_recipe(tmp_path, "straight", shards, *workers, "max_steps=12"))
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(_image_recipe(tmp_path, "run", shards, *workers, "max_steps=1000").to_yaml())
    proc = _start_group(recipe_file)
    run_dir = tmp_path / "run"
    _wait_for(proc, lambda: len(read_metrics(run_dir)) >= 3, "step 3")
    os.killpg(proc.pid, signal.SIGTERM)  # the main process and its loader workers
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output[-3000:]
    assert "preempted (SIGTERM): checkpoint saved" in output and "Traceback" not in output
    [(k, _)] = complete_checkpoints(run_dir)
    assert 3 <= k <= 9, k
    train(_image_recipe(tmp_path, "run", shards, *workers, "max_steps=12"), resume="auto")
    assert _losses(run_dir) == _losses(straight.run_dir)


@pytest.mark.slow
def test_sigterm_during_a_data_stall_exits_in_bounded_time_and_resumes_exactly(tmp_path):
    """Each shard is read through a pipe that, while a STALL file exists, hangs after the shard
    (ignoring SIGTERM, like a stuck network mount): the loader runs dry and waits for data that
    never comes. SIGTERM ends the run within the grace period, exit 143, with the last periodic
    checkpoint intact; without the stall, resuming matches an uninterrupted run."""
    shards = _demo_shards(tmp_path / "data")
    stall = tmp_path / "STALL"
    spec = "::".join(f"pipe:cat {s}; trap '' TERM; while [ -e {stall} ]; do sleep 0.1; done" for s in shards)
    common = ("data.num_workers=1", "data.shuffle_buffer=16", "checkpoint.every_steps=2")
    straight = train(_image_recipe(tmp_path, "straight", spec, *common, "max_steps=10"))
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(_image_recipe(tmp_path, "run", spec, *common, "max_steps=1000").to_yaml())
    log = tmp_path / "train.log"
    with open(log, "w") as out:  # a file, not a pipe: the stalled shells outlive the run and keep it open
        proc = subprocess.Popen([sys.executable, "-m", "jepa.cli", "train", str(recipe_file)], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    run_dir = tmp_path / "run"
    try:
        deadline = time.monotonic() + 240
        while not complete_checkpoints(run_dir):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        stall.write_text("")  # from now on every shard's pipe hangs at its end: the loader runs dry
        steps = -1
        while steps != len(read_metrics(run_dir)):
            steps = len(read_metrics(run_dir))
            time.sleep(3)
        start = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=90)
        elapsed = time.monotonic() - start
    finally:
        stall.unlink(missing_ok=True)  # lets the stalled shells end
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text()
    assert proc.returncode == 143, output[-3000:]
    assert elapsed < 30, elapsed  # the 10 s grace period, then the loader workers shut down
    assert "stopped by SIGTERM while waiting for data (none came within" in output and "Traceback" not in output
    k, newest = complete_checkpoints(run_dir)[-1]
    assert k == steps // 2 * 2 and checkpoint.verify_checkpoint(newest) == []
    train(_image_recipe(tmp_path, "run", spec, *common, "max_steps=10"), resume="auto")
    assert _losses(run_dir) == _losses(straight.run_dir)


@pytest.mark.slow
def test_sigterm_to_torchrun_checkpoints_on_every_rank_and_resumes_exactly(toy_recipe_file):
    common = (*LONG, "engine.zero_stage=2", "log.every_steps=1")

    def torchrun(recipe_file: Path) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "jepa.cli", "train", str(recipe_file)]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    straight = torchrun(toy_recipe_file("straight", *common, "max_steps=14"))
    output, _ = straight.communicate(timeout=600)
    assert straight.returncode == 0, output[-3000:]
    recipe_file = toy_recipe_file("run", *common, "max_steps=1000")
    run_dir = recipe_file.parent / "run"
    proc = torchrun(recipe_file)
    _wait_for(proc, lambda: len(read_metrics(run_dir)) >= 3, "step 3", timeout=400)
    proc.send_signal(signal.SIGTERM)  # to torchrun only: it forwards the signal to its workers
    output, _ = proc.communicate(timeout=120)
    assert "preempted (SIGTERM): checkpoint saved" in output, output[-3000:]
    [(k, path)] = complete_checkpoints(run_dir)
    assert {p.name for p in path.glob("rank_*.pt")} == {"rank_00000.pt", "rank_00001.pt"} and k <= 11
    resumed = torchrun(toy_recipe_file("run", *common, "max_steps=14"))
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output[-3000:]
    assert _losses(run_dir) == _losses(recipe_file.parent / "straight")


@pytest.mark.slow
def test_two_runs_into_one_directory_the_second_is_refused(toy_recipe_file):
    recipe_file = toy_recipe_file("run", *LONG, "max_steps=1000")
    run_dir = recipe_file.parent / "run"
    first = _start_group(recipe_file)
    try:
        _wait_for(first, lambda: len(read_metrics(run_dir)) >= 1, "step 1")
        recipe_before = (run_dir / "recipe.yaml").read_bytes()
        second = subprocess.run([sys.executable, "-m", "jepa.cli", "train",
                                 str(toy_recipe_file("run", *LONG, "max_steps=1000", "optim.lr=0.002"))],
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr[-3000:]
        assert "is in use by another `jepa train`" in second.stderr and f"pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        assert (run_dir / "recipe.yaml").read_bytes() == recipe_before
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate(timeout=60)
    assert (run_dir / LOCK_FILE).exists()  # kill -9 leaves the lock behind ...
    third = subprocess.run([sys.executable, "-m", "jepa.cli", "train", str(toy_recipe_file("run", *LONG, "max_steps=3"))],
                           capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"taking over a stale lock (pid {first.pid}" in third.stderr  # ... which the next run names and takes
