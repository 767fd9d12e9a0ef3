"""Bad inputs found by an audit of the command line: each gets one clear message naming the problem
and the fix, loses no data, and runs no code from the file.

* error messages keep bracketed text (key lists, paths) instead of losing it to rich markup;
* a file that is no PyTorch file (a recipe, a shard, an empty file) is named as such, without
  torch's advice to turn ``weights_only`` off; a legacy-format (non-zip) torch file loads, safely;
* a ``models.pt`` of ``jepa train`` under another name is read as what it is (eval, export, init_from);
* resuming a checkpoint of another modality says so first, not a micro-batch or shape detail;
* ``jepa export --out`` an existing folder, or under a file, is refused before any work;
* ``jepa bench data`` on broken or empty shards ends with a message (it hung on an empty tar),
  and skips undecodable samples as training does;
* ``jepa shards`` refuses an output folder inside the source, reports broken symbolic links as
  skipped files, and a run that reads nothing leaves nothing behind that blocks the next attempt.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from jepa.cli import app
from jepa.cli.errors import user_error
from jepa.sources import load_source
from jepa.weights import safe_load
from tar_files import labelled_members, write_tar
from tiny_recipes import tiny_image_recipe


def _png(seed: int, size: int = 32) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _tiny_recipe_file(tmp_path: Path, **data) -> Path:
    raw = tiny_image_recipe(0)
    raw["run_dir"] = str(tmp_path / "run")
    raw["data"].update(data)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _labelled_shard(path: Path, images: list[bytes]) -> Path:
    return write_tar(path, labelled_members([(f"s{i:04d}", "png", data, i % 2) for i, data in enumerate(images)]))


@pytest.fixture
def toy_models(toy_recipe):
    """The models.pt of a one-step toy run."""
    from jepa.train import train

    recipe = toy_recipe("toyrun", "max_steps=1")
    train(recipe)
    return next((recipe.resolved_run_dir / "checkpoints").glob("step_*/models.pt"))


# ------------------------------------------------------------------------------------ messages


def test_error_messages_keep_bracketed_text(capsys):
    """rich read "[mask_token]" as a markup tag and printed "missing keys " with the key gone."""
    exit_ = user_error(ValueError("predictor: missing keys [mask_token]; see data/[v1]/x.jpg"))
    assert exit_.exit_code == 2
    err = capsys.readouterr().err
    assert "missing keys [mask_token]" in err and "data/[v1]/x.jpg" in err


# ------------------------------------------------------------------------------- reading weights


def test_files_that_are_not_torch_files_are_named_as_such(tmp_path):
    recipe = _tiny_recipe_file(tmp_path)
    shard = _labelled_shard(tmp_path / "s-000000.tar", [_png(0)])
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "notes.pt").write_text("just some text\n")
    cases = {recipe: "it is YAML text", shard: "it is a tar archive", tmp_path / "empty.pt": "the file is empty",
             tmp_path / "notes.pt": "it is text"}
    for path, kind in cases.items():
        with pytest.raises(ValueError) as info:
            safe_load(path, "weights")
        message = str(info.value)
        assert f"not a PyTorch file ({kind}" in message, message
        assert "weights_only` set to `False`" not in message and "mmap" not in message, message

    # eval / export of a recipe point at random:RECIPE
    with pytest.raises(ValueError, match=rf"a YAML file \(a recipe\?\), not weights; pass random:{recipe}"):
        load_source(str(recipe))
    res = CliRunner().invoke(app, ["export", str(shard), "--out", str(tmp_path / "x.pt")])
    assert res.exit_code == 2 and "not a PyTorch file (it is a tar archive" in res.output, res.output
    assert not (tmp_path / "x.pt").exists()


def test_legacy_format_torch_files_load_and_still_run_no_code(tmp_path, toy_models):
    """torch's non-zip format cannot be memory-mapped; it was refused with advice to re-save it."""
    models = torch.load(toy_models, weights_only=True)
    legacy = tmp_path / "legacy" / "models.pt"
    legacy.parent.mkdir()
    torch.save(models, legacy, _use_new_zipfile_serialization=False)
    assert load_source(str(legacy)).step == 1

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    torch.save({"state": Payload()}, tmp_path / "evil.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="holds objects other than tensors"):
        safe_load(tmp_path / "evil.pt", "weights")
    assert not (tmp_path / "ran").exists()


def test_a_renamed_models_pt_is_read_as_jepa_weights(tmp_path, toy_models, toy_recipe):
    """A models.pt copied out of its run under another name was 'recognised by no modality'."""
    from jepa.train import train

    renamed = tmp_path / "run42.pt"
    shutil.copy(toy_models, renamed)
    src = load_source(str(renamed))
    assert src.kind == "checkpoint" and src.step == 1 and src.modality.name == "toy"
    with pytest.raises(ValueError, match=r"--crop-size: these apply to foreign checkpoints .* only; a run or "
                                         r"checkpoint of `jepa train` carries its recipe"):
        load_source(str(renamed), crop_size=32)
    # init_from: the same file starts a new run
    result = train(toy_recipe("fromfile", "max_steps=1", f"init_from.path={renamed}"))
    assert result.step == 1


def test_resume_from_a_checkpoint_of_another_modality_says_so(tmp_path, toy_models):
    """It said the micro batch differs (or listed every mismatched key); the modality is the problem."""
    from jepa.recipe import load_recipe
    from jepa.train import train

    recipe = load_recipe(_tiny_recipe_file(tmp_path, global_batch_size=16))  # another micro batch, too
    with pytest.raises(ValueError) as info:
        train(recipe, resume=str(toy_models.parent))
    message = str(info.value)
    assert "a checkpoint of a toy run (recipe 'toy'); this recipe trains the image modality" in message, message
    assert "micro batch" not in message and "Resume with the recipe that wrote it" in message
    assert not (recipe.resolved_run_dir / "checkpoints").exists()


def test_init_from_weights_of_another_modality_says_so(tmp_path, toy_models):
    """It listed every mismatched key of every part; the modality is the problem."""
    from jepa.recipe import load_recipe
    from jepa.train import train

    copy = tmp_path / "toy_weights.pt"  # also under another name than models.pt
    copy.write_bytes(toy_models.read_bytes())
    for path in (toy_models, copy):
        recipe = load_recipe(_tiny_recipe_file(tmp_path), overrides=[f"init_from.path={path}"])
        with pytest.raises(ValueError) as info:
            train(recipe)
        message = str(info.value)
        assert f"init_from.path: {path} holds weights of a toy run (recipe 'toy'); this recipe trains the image " \
               "modality" in message, message
        assert "does not fit" not in message


# ------------------------------------------------------------------------------------ jepa export


def test_export_out_that_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch):
    import jepa.export as export_module

    src = load_source(f"random:{_tiny_recipe_file(tmp_path)}")
    monkeypatch.setattr(export_module, "_script", lambda m: pytest.fail("scripted before checking --out"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match=r"--out .*folder is an existing folder; name the file or new folder"):
        export_module.export(src, tmp_path / "folder")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match=r"afile is a file, not a folder"):
        export_module.export(src, tmp_path / "afile" / "enc.pt")
    assert (tmp_path / "afile").read_text() == "x" and list((tmp_path / "folder").iterdir()) == []


# --------------------------------------------------------------------------------- jepa bench data


def test_bench_data_on_empty_or_broken_shards_ends_with_a_message(tmp_path):
    from jepa.cli.data_cmds import _raw_samples

    with tarfile.open(tmp_path / "empty-0.tar", "w"):
        pass  # a valid tar without members: the benchmark cycled over it for ever
    (tmp_path / "garbage-0.tar").write_bytes(b"not a tar file" * 100)
    with pytest.raises(ValueError, match=r"gives nothing to benchmark: the 1 shards hold no samples"):
        _raw_samples([str(tmp_path / "empty-0.tar")], 4)
    with pytest.raises(ValueError, match=r"1 of the 1 shards are broken \(e.g. .*garbage-0.tar: ReadError"):
        _raw_samples([str(tmp_path / "garbage-0.tar")], 4)
    good = _labelled_shard(tmp_path / "good-0.tar", [_png(i) for i in range(3)])
    samples = _raw_samples([str(tmp_path / "garbage-0.tar"), str(good)], 7)  # broken one left out, good read again
    assert len(samples) == 7 and all(s["__url__"] == str(good) for s in samples)

    recipe = _tiny_recipe_file(tmp_path, source="shards", train_shards=str(tmp_path / "garbage-0.tar"), num_workers=0)
    res = CliRunner().invoke(app, ["bench", "data", str(recipe), "--batches", "1", "--repeats", "1"])
    assert res.exit_code == 2 and "Traceback" not in res.output and "gives nothing to benchmark" in res.output, res.output


def test_bench_data_skips_undecodable_samples_as_training_does(tmp_path):
    images = [_png(i) if i % 4 else b"garbage" for i in range(16)]
    shard = _labelled_shard(tmp_path / "mixed-0.tar", images)
    recipe = _tiny_recipe_file(tmp_path, source="shards", train_shards=str(shard), num_workers=0, shuffle_buffer=8)
    res = CliRunner().invoke(app, ["bench", "data", str(recipe), "--batches", "1", "--repeats", "1"])
    assert res.exit_code == 0, res.output
    assert "2 of 8 samples do not decode and were skipped (first: sample 's0000'" in res.output, res.output
    assert "one loader worker" in res.output


# -------------------------------------------------------------------------------------- jepa shards


def test_shards_refuses_an_output_folder_inside_the_source(tmp_path):
    """The output folder became a class ('out', with no samples) of the next run."""
    src = tmp_path / "src"
    for cls in ("a", "b"):
        (src / cls).mkdir(parents=True)
        (src / cls / "x.png").write_bytes(_png(0))
    (src / "out").mkdir()
    for out in (src / "out", src):
        res = CliRunner().invoke(app, ["shards", str(src), str(out), "--workers", "1"])
        assert res.exit_code == 2 and "is inside the source folder" in res.output, res.output
        assert "write them outside" in res.output
    assert sorted(p.name for p in src.rglob("*")) == ["a", "b", "out", "x.png", "x.png"]


def test_shards_reports_broken_symbolic_links_as_skipped(tmp_path):
    """Links into a dataset that is not mounted were dropped silently ('0 skipped, 0 other files ignored')."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.png").write_bytes(_png(0))
    os.symlink(tmp_path / "not-mounted" / "img.png", src / "gone.png")
    res = CliRunner().invoke(app, ["shards", str(src), str(tmp_path / "out"), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "gone.png" in res.output and "a broken symbolic link to" in res.output and "1 skipped" in res.output


def test_shards_that_read_nothing_leave_nothing_behind(tmp_path):
    """A manifest of 0 samples was left, and the next attempt was refused as 'already holds a shard set'."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"bad{i}.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["shards", str(src), str(out), "--workers", "1"])
    assert res.exit_code == 2 and "none of the image files" in res.output and "nothing was written" in res.output
    assert "pass --recipe RECIPE to check them with your recipe's modality section" in res.output, res.output
    assert not out.exists()
    (src / "bad0.png").write_bytes(_png(0))
    res = CliRunner().invoke(app, ["shards", str(src), str(out), "--workers", "1"])
    assert res.exit_code == 0 and "wrote 1 samples" in res.output, res.output
