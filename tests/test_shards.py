"""Shard writing from an image folder (jepa.data.folder, `jepa shards`) and the image demo dataset
(jepa.modalities.image.demo_data, `jepa demo-data`)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from jepa.cli import app
from jepa.data import MANIFEST_NAME, Manifest, read_manifest, read_shard, sample_keys, shard_folder
from jepa.modalities.image import ImageModality
from jepa.modalities.image.demo_data import CLASS_NAMES, write_demo_dataset
from jepa.modalities.image.transforms import decode_image


def shard_image_folder(src: Path, out: Path, **kw) -> Manifest:
    return shard_folder(src, out, ImageModality(), **kw)


def _image_bytes(seed: int, fmt: str, size: tuple[int, int] = (12, 16)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture()
def class_folder(tmp_path: Path) -> tuple[Path, dict[str, tuple[bytes, int]]]:
    """A folder of 3 classes (one nested), mixed formats, one corrupt image and one text file.

    Returns the folder and {relative path: (bytes, label)} of the valid images.
    """
    src = tmp_path / "src"
    expected: dict[str, tuple[bytes, int]] = {}
    layout = {"cat": 4, "dog": 5, "zebra": 3}
    seed = 0
    for label, (cls, n) in enumerate(sorted(layout.items())):
        for i in range(n):
            fmt, ext = [("JPEG", ".jpg"), ("PNG", ".png"), ("JPEG", ".JPEG")][i % 3]
            rel = f"{cls}/{'sub/' if cls == 'dog' and i == 0 else ''}img.{i}{ext}"
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            data = _image_bytes(seed, fmt)
            seed += 1
            (src / rel).write_bytes(data)
            expected[rel] = (data, label)
    (src / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (src / "cat" / "notes.txt").write_text("not an image")
    return src, expected


def _read_all(out: Path, manifest: Manifest) -> list[dict]:
    samples = []
    for shard in manifest.shards:
        got = list(read_shard(str(out / shard.name)))
        assert len(got) == shard.count
        samples += got
    return samples


def test_folder_round_trip_with_labels(class_folder, tmp_path):
    src, expected = class_folder
    out = tmp_path / "out"
    manifest = shard_image_folder(src, out, prefix="ds", max_count=4, workers=1, show_progress=False)
    assert manifest.classes == ["cat", "dog", "zebra"]
    assert manifest.total == len(expected) == 12
    assert [s.path for s in manifest.skipped] == ["dog/broken.jpg"]
    assert manifest.ignored_files == 1
    assert all(s.count <= 4 for s in manifest.shards) and len(manifest.shards) >= 3
    assert [s.name for s in manifest.shards] == [f"ds-{i:06d}.tar" for i in range(len(manifest.shards))]
    assert read_manifest(out).to_json() == manifest.to_json() == json.loads((out / MANIFEST_NAME).read_text())

    samples = _read_all(out, manifest)
    keys = {s["__key__"] for s in samples}
    assert len(keys) == len(samples)
    by_key = dict(zip(sample_keys([Path(p) for p in expected]), expected.values()))
    for s in samples:
        data, label = by_key[s["__key__"]]
        ext = next(k for k in ("jpg", "jpeg", "png") if k in s)
        assert s[ext] == data  # original bytes, not re-encoded
        assert int(s["cls"]) == label


def test_parallel_writing_gives_identical_shards(class_folder, tmp_path):
    src, _ = class_folder
    one = shard_image_folder(src, tmp_path / "one", max_count=3, workers=1, show_progress=False)
    two = shard_image_folder(src, tmp_path / "two", max_count=3, workers=2, show_progress=False)
    assert one.to_json() == two.to_json()
    for shard in one.shards:
        assert (tmp_path / "one" / shard.name).read_bytes() == (tmp_path / "two" / shard.name).read_bytes()
    assert not list((tmp_path / "two").glob(".*"))  # temporary folder removed


def test_max_size_bounds_shards(class_folder, tmp_path):
    src, _ = class_folder
    manifest = shard_image_folder(src, tmp_path / "out", max_count=1000, max_bytes=20480, workers=1, show_progress=False)
    assert len(manifest.shards) > 1 and manifest.total == 12
    assert all(s.bytes <= 20480 for s in manifest.shards)


def test_flat_folder_has_no_labels(tmp_path):
    src = tmp_path / "flat"
    src.mkdir()
    for i in range(3):
        (src / f"p{i}.png").write_bytes(_image_bytes(i, "PNG"))
    manifest = shard_image_folder(src, tmp_path / "out", workers=1, show_progress=False)
    assert manifest.classes is None and manifest.total == 3
    assert all("cls" not in s for s in _read_all(tmp_path / "out", manifest))


def test_folder_errors(tmp_path, class_folder):
    src, _ = class_folder
    (src / "stray.png").write_bytes(_image_bytes(0, "PNG"))
    with pytest.raises(ValueError, match="mixes"):
        shard_image_folder(src, tmp_path / "o1", show_progress=False)
    (src / "stray.png").unlink()
    shard_image_folder(src, tmp_path / "o2", show_progress=False)
    with pytest.raises(ValueError, match="already holds"):
        shard_image_folder(src, tmp_path / "o2", show_progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no files of modality 'image'"):
        shard_image_folder(tmp_path / "empty", tmp_path / "o3", show_progress=False)


def test_sample_keys_are_unique_and_dot_free():
    keys = sample_keys([Path("a/b.c.jpg"), Path("a_b_c.png"), Path("a/b_c.jpg")])
    assert len(set(keys)) == 3 and all("." not in k for k in keys)


def test_cli_reports_and_skips_corrupt_files(class_folder, tmp_path):
    src, expected = class_folder
    result = CliRunner().invoke(app, ["shards", str(src), str(tmp_path / "out"), "--max-count", "5", "--workers", "2",
                                      "--prefix", "train"])
    assert result.exit_code == 0, result.output
    assert "broken.jpg" in result.output and "skipped" in result.output
    manifest = read_manifest(tmp_path / "out")
    assert manifest.total == len(expected) and manifest.pattern == "train-{000000..000002}.tar"


def test_cli_user_error_exits_2(tmp_path):
    result = CliRunner().invoke(app, ["shards", str(tmp_path / "missing"), str(tmp_path / "out")])
    assert result.exit_code == 2 and "not a folder" in result.output


# --------------------------------------------------------------------------- demo data


def test_demo_dataset_is_deterministic_and_labelled(tmp_path):
    a = write_demo_dataset(tmp_path / "a", num_images=60, num_val=20, size=32, num_classes=4, max_count=25,
                           workers=1, show_progress=False)
    write_demo_dataset(tmp_path / "b", num_images=60, num_val=20, size=32, num_classes=4, max_count=25,
                       workers=2, show_progress=False)
    assert a["train"].total == 60 and a["val"].total == 20 and a["train"].classes == list(CLASS_NAMES[:4])
    for split, m in a.items():
        for shard in m.shards:
            assert (tmp_path / "a" / split / shard.name).read_bytes() == (tmp_path / "b" / split / shard.name).read_bytes()
    samples = _read_all(tmp_path / "a" / "train", a["train"])
    labels = [int(s["cls"]) for s in samples]
    assert sorted(set(labels)) == [0, 1, 2, 3] and labels.count(0) == 15
    assert decode_image(samples[0]).shape == (3, 32, 32)
    val = _read_all(tmp_path / "a" / "val", a["val"])
    assert not {s["jpg"] for s in val} & {s["jpg"] for s in samples}  # a held-out split, not a copy


def test_demo_classes_are_not_readable_from_mean_colour(tmp_path):
    """Nearest-centroid on mean colour is near chance."""
    m = write_demo_dataset(tmp_path, num_images=1000, num_val=0, size=32, max_count=1000, workers=1, show_progress=False)
    samples = _read_all(tmp_path / "train", m["train"])
    x = torch.stack([decode_image(s).float().mean(dim=(1, 2)) for s in samples])  # (N, 3) mean colour
    y = torch.tensor([int(s["cls"]) for s in samples])
    fit, test = slice(0, 700), slice(700, None)
    centroids = torch.stack([x[fit][y[fit] == c].mean(0) for c in range(10)])
    accuracy = (torch.cdist(x[test], centroids).argmin(1) == y[test]).float().mean().item()
    assert accuracy < 0.25  # chance: 0.10



def test_demo_shapes_differ_in_outline_not_in_area():
    """The class is in the outline: perimeter^2 / area (rotation-, position- and size-free) is smallest
    for the disc and far larger for the flower and the plus."""
    from jepa.modalities.image.demo_data import CLASS_NAMES, shape_masks

    labels = torch.arange(500) % 10
    masks = shape_masks(labels, 64, torch.Generator().manual_seed(0))
    perimeter = (masks[:, :, 1:] - masks[:, :, :-1]).abs().sum((1, 2)) + (masks[:, 1:] - masks[:, :-1]).abs().sum((1, 2))
    ratio = perimeter ** 2 / masks.sum((1, 2))
    per_class = {name: ratio[labels == c].mean().item() for c, name in enumerate(CLASS_NAMES)}
    assert min(per_class, key=per_class.get) == "disc", per_class
    assert per_class["flower"] > 1.5 * per_class["disc"] and per_class["plus"] > 1.5 * per_class["disc"], per_class


def test_demo_objects_are_large_whole_and_the_same_size_in_every_class():
    """Foreground area does not tell the class (drawn by area, one range for all), and no object is cut."""
    from jepa.vision.shapes import AREA_RANGE, shape_masks

    labels = torch.arange(2000) % 10
    masks = shape_masks(labels, 64, torch.Generator().manual_seed(0))  # (N, 64, 64)
    area = masks.mean(dim=(1, 2))
    lo, hi = AREA_RANGE
    per_class = torch.stack([area[labels == c].mean() for c in range(10)])
    assert ((area > lo - 0.03) & (area < hi + 0.03)).float().mean() > 0.95, (area.min(), area.max())
    assert (per_class - per_class.mean()).abs().max() < 0.015, per_class  # clamped tee / ell stay close
    border = torch.cat([masks[:, 0], masks[:, -1], masks[:, :, 0], masks[:, :, -1]], 1)
    assert border.max() == 0  # every object fits whole inside the image


def test_demo_images_are_a_function_of_the_generator():
    from jepa.modalities.image.demo_data import render_images

    labels = torch.arange(20) % 10
    a, b = (render_images(labels, 32, torch.Generator().manual_seed(1)) for _ in range(2))
    c = render_images(labels, 32, torch.Generator().manual_seed(2))
    assert a.dtype == torch.uint8 and a.shape == (20, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)


def test_demo_palette_is_two_grey_levels_with_random_polarity():
    """Object and background are grey (equal channels up to noise), at least 0.2 apart, and the object
    is the lighter one in about half of every class: brightness says nothing about the class."""
    from jepa.modalities.image.demo_data import render_images, shape_masks

    labels = torch.arange(1000) % 10
    masks = shape_masks(labels, 32, torch.Generator().manual_seed(3)) > 0.99  # same draws as render_images
    images = render_images(labels, 32, torch.Generator().manual_seed(3)).float() / 255  # (N, 3, S, S)
    inside, outside = masks[:, None].expand_as(images), (~masks)[:, None].expand_as(images)
    fg = (images * inside).sum((2, 3)) / inside.sum((2, 3))  # (N, 3) mean colour of the object
    bg = (images * outside).sum((2, 3)) / outside.sum((2, 3))
    assert (fg.max(1).values - fg.min(1).values).max() < 0.03 and (bg.max(1).values - bg.min(1).values).max() < 0.03
    contrast = fg.mean(1) - bg.mean(1)
    assert contrast.abs().min() > 0.1, contrast.abs().min()  # levels 0.2 apart, less the background gradient
    lighter = torch.stack([(contrast[labels == c] > 0).float().mean() for c in range(10)])
    assert ((lighter > 0.3) & (lighter < 0.7)).all(), lighter


def test_demo_dataset_names_its_generator(tmp_path):
    from jepa.modalities.image.demo_data import GENERATOR, GENERATOR_FILE

    write_demo_dataset(tmp_path, num_images=4, num_val=2, size=16, workers=1, show_progress=False)
    assert (tmp_path / GENERATOR_FILE).read_text().strip() == GENERATOR


@pytest.mark.parametrize("modality", ["image", "video"])
def test_demo_script_moves_data_of_another_generator_aside(tmp_path, modality):
    """tools/demo.sh's check, run as the script runs it (its ``fresh_data`` function with the generator and runs
    the script passes): data without the current generator's name is moved (with the runs trained on it) to
    ``*.old-<time>``, nothing is deleted; current data stays."""
    import os
    import re
    import subprocess
    import sys

    if modality == "image":
        from jepa.modalities.image.demo_data import GENERATOR
    else:
        from jepa.modalities.video.demo_shapes import GENERATOR
    script = (Path(__file__).resolve().parents[1] / "tools" / "demo.sh").read_text()
    start = script.index("fresh_data() {")
    function = script[start:script.index("\n}\n", start) + 3]
    module = "jepa.modalities.image.demo_data" if modality == "image" else "jepa.modalities.video.demo_shapes"
    call = re.search(rf"generator=\$\(python -c 'from {re.escape(module)} import GENERATOR; print\(GENERATOR\)'\)\n"
                     r"\s*(fresh_data [^\n]*(?:\\\n[^\n]*)*)", script).group(1).replace("$data", "data/video_demo")
    data, run_dir = ("data/demo", "runs/image_demo_lejepa") if modality == "image" else ("data/video_demo",
                                                                                         "runs/video_demo_lejepa")
    assert call.split()[1] == data and run_dir in call, call
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run = lambda: subprocess.run(["bash", "-ec", f"{function}\ngenerator='{GENERATOR}'\n{call}"], cwd=tmp_path,  # noqa: E731
                                 env=env, capture_output=True, text=True, check=True)
    (tmp_path / data / "train").mkdir(parents=True)
    (tmp_path / data / "train" / "manifest.json").write_text("{}")
    (tmp_path / run_dir).mkdir(parents=True)
    assert "another demo generator" in run().stdout
    moved = list((tmp_path / data).parent.glob(f"{Path(data).name}.old-*"))
    assert len(moved) == 1 and (moved[0] / "train" / "manifest.json").read_text() == "{}"
    assert not (tmp_path / data).exists() and len(list((tmp_path / "runs").glob(f"{Path(run_dir).name}.old-*"))) == 1
    (tmp_path / data).mkdir()
    (tmp_path / data / "generator.txt").write_text(GENERATOR + "\n")
    assert run().stdout == "" and (tmp_path / data / "generator.txt").exists()
    (tmp_path / data / "generator.txt").write_text("an older generator\n")  # and no run to move
    assert "another demo generator" in run().stdout and len(list((tmp_path / data).parent.glob("*.old-*"))) >= 2


def test_demo_cli(tmp_path):
    result = CliRunner().invoke(app, ["demo-data", str(tmp_path), "--num-images", "30", "--num-val", "10",
                                      "--size", "24", "--classes", "3", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert read_manifest(tmp_path / "train").total == 30 and read_manifest(tmp_path / "val").classes == list(CLASS_NAMES[:3])
    result = CliRunner().invoke(app, ["demo-data", str(tmp_path / "x"), "--classes", "11"])
    assert result.exit_code == 2 and "num_classes" in result.output
