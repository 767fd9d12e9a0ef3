"""Folder -> shards for any modality (jepa.data.folder) and `--modality` on `jepa shards` / `jepa demo-data`."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from jepa import registry
from jepa.cli import app
from jepa.config import ModalityConfig
from jepa.data import list_folder, read_manifest, read_shard, shard_folder
from jepa.interfaces import MissingHookError, Modality


class ArrayConfig(ModalityConfig):
    name: Literal["arrays"] = "arrays"


class _NoHooks(Modality):
    """Decodes ``.npy`` arrays of shape (4,); provides none of the optional data hooks."""

    name = "arrays"
    config_model = ArrayConfig

    def build_encoder(self):
        raise NotImplementedError

    def build_predictor(self):
        raise NotImplementedError

    def build_mask_sampler(self):
        raise NotImplementedError

    def decode(self, sample: dict[str, Any]) -> torch.Tensor:
        if "npy" not in sample:
            raise ValueError(f"sample {sample['__key__']!r} has no 'npy' payload")
        array = np.load(io.BytesIO(sample["npy"]), allow_pickle=False)  # ValueError on garbage
        if array.shape != (4,):
            raise ValueError(f"sample {sample['__key__']!r}: shape {array.shape}, expected (4,)")
        return torch.from_numpy(array)

    def train_batch(self, items, generator):
        return torch.stack(items)

    def eval_batch(self, items):
        return torch.stack(items)

    def example_input(self, batch_size, generator=None):
        return torch.randn(batch_size, 4, generator=generator)


class ArrayModality(_NoHooks):
    """A non-image modality whose samples are ``.npy`` files (module level: picklable for writer processes)."""

    def file_suffixes(self) -> dict[str, str]:
        return {".npy": "npy"}


def _npy(values: list[float]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(values, dtype=np.float32))
    return buf.getvalue()


@pytest.fixture()
def array_folder(tmp_path: Path) -> tuple[Path, dict[str, tuple[bytes, int]]]:
    """Two classes of ``.npy`` samples (one nested, one upper-case suffix), a corrupt one, a wrong
    shape, an image file and a hidden file. Returns the folder and {relative path: (bytes, label)}."""
    src = tmp_path / "src"
    expected: dict[str, tuple[bytes, int]] = {}
    for label, cls in enumerate(["down", "up"]):
        for i in range(3):
            rel = f"{cls}/{'deep/' if i == 2 else ''}x{i}{'.NPY' if i == 1 else '.npy'}"
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            data = _npy([label, i, 0.5, -1.0])
            (src / rel).write_bytes(data)
            expected[rel] = (data, label)
    (src / "down" / "garbage.npy").write_bytes(b"not an array")
    (src / "up" / "long.npy").write_bytes(_npy([1.0] * 7))
    (src / "up" / "photo.jpg").write_bytes(b"\xff\xd8\xff")
    (src / "up" / ".hidden.npy").write_bytes(_npy([0.0] * 4))
    return src, expected


def test_any_modality_folder_round_trip(array_folder, tmp_path):
    src, expected = array_folder
    one = shard_folder(src, tmp_path / "one", ArrayModality(), max_count=2, workers=1, show_progress=False)
    two = shard_folder(src, tmp_path / "two", ArrayModality(), max_count=2, workers=2, show_progress=False)
    assert one.to_json() == two.to_json()  # the bound modality travels to the writer processes
    for shard in one.shards:
        assert (tmp_path / "one" / shard.name).read_bytes() == (tmp_path / "two" / shard.name).read_bytes()
    assert one.classes == ["down", "up"] and one.total == len(expected) == 6
    assert sorted(s.path for s in one.skipped) == ["down/garbage.npy", "up/long.npy"]
    assert "shape (7,)" in next(s.error for s in one.skipped if s.path == "up/long.npy")
    assert one.ignored_files == 1  # photo.jpg: not a sample of this modality; hidden files are not counted
    samples = [s for shard in one.shards for s in read_shard(str(tmp_path / "one" / shard.name))]
    assert sorted((s["npy"], int(s["cls"])) for s in samples) == sorted(expected.values())
    assert all(set(s) == {"__key__", "__url__", "npy", "cls"} for s in samples)


def test_list_folder_takes_the_longest_suffix_and_checks_the_table(tmp_path):
    for name in ("a.seq.txt", "b.txt", "c.TXT", "d.csv"):
        (tmp_path / name).write_text("x")
    listing = list_folder(tmp_path, {".txt": "txt", ".seq.txt": "seq"}, "text")
    assert [str(f) for f in listing.files] == ["a.seq.txt", "b.txt", "c.TXT"]
    assert listing.exts == ["seq", "txt", "txt"] and listing.labels is None and listing.ignored_files == 1
    with pytest.raises(ValueError, match="no files of modality 'text' \\(.csv2\\)"):
        list_folder(tmp_path, {".csv2": "csv"}, "text")
    with pytest.raises(ValueError, match="lower-case suffixes with their dot"):
        list_folder(tmp_path, {"txt": "txt"}, "text")


def test_modality_without_the_hook_names_it(array_folder, tmp_path):
    with pytest.raises(MissingHookError, match="'arrays' does not support `jepa shards`.*Modality.file_suffixes"):
        shard_folder(array_folder[0], tmp_path / "out", _NoHooks(), show_progress=False)


# --------------------------------------------------------------------------- --modality on the CLI


@pytest.fixture()
def arrays_registered():
    registry.register("arrays", ArrayModality)
    yield
    registry.unregister("arrays")


def test_cli_shards_with_another_modality(array_folder, tmp_path, arrays_registered):
    src, expected = array_folder
    result = CliRunner().invoke(app, ["shards", str(src), str(tmp_path / "out"), "--modality", "arrays",
                                      "--max-count", "4", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "wrote 6 samples in 2 shards, 2 classes" in result.output and "garbage.npy" in result.output
    assert "image" not in result.output
    assert read_manifest(tmp_path / "out").total == len(expected)


def test_cli_modality_errors_exit_2(array_folder, tmp_path, arrays_registered):
    src, _ = array_folder
    runner = CliRunner()
    result = runner.invoke(app, ["shards", str(src), str(tmp_path / "o1"), "--modality", "nope"])
    assert result.exit_code == 2 and "unknown modality 'nope'" in result.output and "arrays" in result.output
    result = runner.invoke(app, ["demo-data", str(tmp_path / "o2"), "--modality", "arrays"])
    assert result.exit_code == 2 and "Modality.write_demo_data" in result.output
    result = runner.invoke(app, ["shards", str(src), str(tmp_path / "o3")])  # default: image; photo.jpg is corrupt
    assert result.exit_code == 2 and "none of the image files in" in result.output


def test_cli_shards_takes_the_modality_from_a_recipe(array_folder, tmp_path, arrays_registered):
    src, expected = array_folder
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nmodality: {name: arrays}\ndata: {source: synthetic}\n")
    result = CliRunner().invoke(app, ["shards", str(src), str(tmp_path / "out"), "--recipe", str(recipe),
                                      "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert read_manifest(tmp_path / "out").total == len(expected)
    result = CliRunner().invoke(app, ["shards", str(src), str(tmp_path / "o2"), "--recipe", str(recipe),
                                      "--modality", "image"])
    assert result.exit_code == 2 and "contradicts modality.name=arrays" in result.output


def test_cli_demo_data_num_train(tmp_path):
    result = CliRunner().invoke(app, ["demo-data", str(tmp_path), "--modality", "image", "--num-train", "12",
                                      "--num-val", "0", "--size", "16", "--classes", "2", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "train: wrote 12 samples in 1 shards" in result.output
    assert read_manifest(tmp_path / "train").total == 12 and not (tmp_path / "val").exists()
