"""The video modality through the command line: ``jepa shards`` on folders of real video files
(class sub-folders and flat; mp4, webm, avi; a corrupt and a too-short file skipped and counted),
and ``jepa demo-data`` -> ``jepa train`` -> ``jepa export`` -> ``jepa eval`` with a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from jepa import registry
from jepa.cli import app
from jepa.data import read_manifest, read_shard
from jepa.modalities.video.config import VideoConfig
from jepa.recipe import apply_overrides, load_recipe
from jepa.sources import load_source, quiet_jit_deprecation, read_export_metadata
from test_video_data import encode, grey_ramp

ROOT = Path(__file__).resolve().parents[1]
DEMO_RECIPE = ROOT / "recipes" / "video_demo.yaml"

#: recipes/video_demo.yaml cut down to a model that trains two steps in seconds.
TINY = ["modality.encoder.embed_dim=48", "modality.encoder.depth=2", "modality.encoder.num_heads=4",
        "modality.predictor.embed_dim=24", "modality.predictor.depth=1", "modality.predictor.num_heads=4",
        "data.global_batch_size=4", "data.num_workers=0", "data.shuffle_buffer=8", "data.samples_per_epoch=24",
        "max_steps=2", "log.every_steps=1", "checkpoint.every_steps=1000"]


def invoke(*args: str) -> str:
    """Run ``jepa ARGS`` in this process; fail showing its output unless it exits 0."""
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"jepa {' '.join(args)} exited {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result.output


def tiny_recipe(folder: Path, train_shards: Path) -> Path:
    raw = apply_overrides(yaml.safe_load(DEMO_RECIPE.read_text()),
                          [*TINY, f"data.train_shards={train_shards}", f"run_dir={folder / 'run'}"])
    path = folder / "tiny_video.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# ------------------------------------------------------------------------------ jepa shards
def _write_videos(folder: Path, span: int) -> dict[str, bytes]:
    """Class folders ``left``/``right`` of mp4, webm and avi files of ``span + 2`` frames, plus a corrupt
    file, a file one frame too short and a text file. Returns {relative path: bytes} of the valid files."""
    kinds = [("mp4", "mp4", "libx264", {"qp": "10"}), ("webm", "webm", "libvpx", {"b": "500000"}),
             ("avi", "avi", "mpeg4", {"qscale": "3"})]
    valid: dict[str, bytes] = {}
    for c, cls in enumerate(("left", "right")):
        (folder / cls).mkdir(parents=True)
        for i, (suffix, fmt, codec, options) in enumerate(kinds):
            frames = grey_ramp(span + 2, size=16) // (1 + c + i)
            data = encode(frames, fmt=fmt, codec=codec, options=options)
            rel = f"{cls}/clip{i}.{suffix.upper() if i == 2 else suffix}"  # suffixes match case-insensitively
            (folder / rel).write_bytes(data)
            valid[rel] = data
    (folder / "right" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    (folder / "left" / "short.mp4").write_bytes(encode(grey_ramp(span - 1, size=16)))
    (folder / "left" / "notes.txt").write_text("not a video")
    return valid


def test_shards_from_class_folders_of_videos(tmp_path):
    span = load_recipe(DEMO_RECIPE).modality.input.clip_span
    valid = _write_videos(tmp_path / "videos", span)
    out = tmp_path / "shards"
    output = invoke("shards", str(tmp_path / "videos"), str(out), "--recipe", str(DEMO_RECIPE), "--max-count", "4",
                    "--workers", "1")
    assert f"wrote {len(valid)} samples in 2 shards, 2 classes" in output, output
    manifest = read_manifest(out)
    assert manifest.classes == ["left", "right"] and manifest.total == len(valid) == 6
    skipped = {s.path: s.error for s in manifest.skipped}
    assert set(skipped) == {"left/short.mp4", "right/broken.mp4"} and manifest.ignored_files == 1
    assert f"has {span - 1} frames, fewer than the {span}" in skipped["left/short.mp4"]
    assert "not a readable video" in skipped["right/broken.mp4"]
    samples = [s for shard in manifest.shards for s in read_shard(str(out / shard.name))]
    modality = registry.bind(load_recipe(DEMO_RECIPE).modality)
    by_key = {rel.replace("/", "_").rsplit(".", 1)[0]: (rel, data) for rel, data in valid.items()}
    for s in samples:
        rel, data = by_key[s["__key__"]]
        ext = rel.rsplit(".", 1)[1].lower()
        assert s[ext] == data and int(s["cls"]) == ("left", "right").index(rel.split("/")[0])  # bytes as they were
        assert modality.decode(s).num_frames == span + 2


def test_shards_from_a_flat_folder_with_the_default_video_section(tmp_path):
    span = VideoConfig().input.clip_span  # V-JEPA's 16 frames at step 4: 61
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(2):
        (flat / f"v{i}.mp4").write_bytes(encode(grey_ramp(span, size=16)))
    (flat / "short.mp4").write_bytes(encode(grey_ramp(span - 5, size=16)))
    output = invoke("shards", str(flat), str(tmp_path / "out"), "--modality", "video", "--workers", "1")
    assert "1 skipped" in output and "short.mp4" in output, output
    manifest = read_manifest(tmp_path / "out")
    assert manifest.classes is None and manifest.total == 2 and [s.path for s in manifest.skipped] == ["short.mp4"]
    assert all("cls" not in s for s in read_shard(str(tmp_path / "out" / manifest.shards[0].name)))


# ------------------------------------------------------------------------------ train -> export -> eval
def test_demo_data_train_export_and_eval_through_the_cli(tmp_path):
    demo = tmp_path / "demo"
    invoke("demo-data", str(demo), "--modality", "video", "--num-train", "24", "--num-val", "12", "--size", "32",
           "--max-count", "12", "--workers", "1")
    recipe_file = tiny_recipe(tmp_path, demo / "train")
    invoke("train", str(recipe_file))
    run = tmp_path / "run"
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]

    exported, pooled = tmp_path / "encoder.pt", tmp_path / "pooled.pt"
    invoke("export", str(run), "--out", str(exported))
    invoke("export", str(run), "--out", str(pooled), "--pooled")
    meta = read_export_metadata(exported)
    cfg = load_recipe(recipe_file).modality
    assert (meta["num_frames"], meta["tubelet_size"], meta["patch_size"]) == (cfg.input.num_frames, 2, 8)
    assert meta["mean"] == list(cfg.input.mean) and meta["std"] == list(cfg.input.std)
    with quiet_jit_deprecation():
        scripted, scripted_pooled = torch.jit.load(str(exported)), torch.jit.load(str(pooled))
    clip = torch.randn(2, 3, cfg.input.num_frames, 32, 24, generator=torch.Generator().manual_seed(0))  # (B, C, T, H, W)
    eager = load_source(str(run)).encoder
    with torch.no_grad():
        tokens = scripted(clip)
        assert tokens.shape == (2, (cfg.input.num_frames // 2) * 4 * 3, 48)
        torch.testing.assert_close(tokens, eager(clip), atol=1e-4, rtol=0)
        torch.testing.assert_close(scripted_pooled(clip), tokens.mean(1), atol=1e-4, rtol=0)

    split = ["--train-shards", str(demo / "train"), "--val-shards", str(demo / "val")]
    invoke("eval", str(run), *split, "--protocol", "linear,knn,attentive", "--epochs", "2", "--json", str(tmp_path / "run.json"))
    invoke("eval", str(exported), *split, "--protocol", "knn", "--trust-torchscript", "--json", str(tmp_path / "ts.json"))
    report, from_file = (json.loads((tmp_path / name).read_text()) for name in ("run.json", "ts.json"))
    assert (report["num_train"], report["num_val"], report["num_classes"]) == (24, 12, 10)
    top1 = {r["protocol"]: r["top1"] for r in report["results"]}
    assert set(top1) == {"linear", "knn", "attentive"} and all(0 <= v <= 1 for v in top1.values())
    assert from_file["source_kind"] == "torchscript"
    assert [r["top1"] for r in from_file["results"]] == [top1["knn"]]  # the exported encoder gives the same features
