"""Hostile outputs and run-directory files (issue #27, round three): output paths that are no
regular file are refused before any work, a full disk while writing a checkpoint is one line and
keeps the previous checkpoint, damaged JSON files of a run directory (digests, meta, best record,
run lock) are one line naming the file (digests: the checkpoint is skipped with a warning), and a
checkpoint folder that is a symbolic link is pruned as a link.

FIFOs are opened from the reading side without blocking wherever old code would write into them,
so a regression fails instead of hanging.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import sys
from pathlib import Path

import pytest
import torch

from jepa import checkpoint
from jepa.checkpoint import complete_checkpoints, load_model_weights
from cli_runner import run_jepa as _cli, one_error_line as _one_error_line
from jepa.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

LONG = ("optim.epochs=20", "optim.warmup_epochs=0.05")  # schedules of 2000 steps: max_steps stops the run
NESTED = "[" * 100_000 + "]" * 100_000  # json.loads raises RecursionError on it


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, toy_recipe_at) -> Path:
    """A toy run directory with checkpoints at steps 2 and 4 (copy it before changing it)."""
    return train(toy_recipe_at(tmp_path_factory.mktemp("two") / "run", *LONG, "checkpoint.every_steps=2",
                               "max_steps=4")).run_dir


@pytest.fixture
def run_copy(two_checkpoints, tmp_path) -> Path:
    shutil.copytree(two_checkpoints, tmp_path / "run", symlinks=True)
    return tmp_path / "run"


# =========================================================================== 1. outputs that clobber


def _no_work(*args, **kwargs):
    pytest.fail("the source was loaded before the output path was checked")


@pytest.mark.parametrize("kind", ["fifo", "link to a fifo", "folder"])
def test_export_and_eval_refuse_outputs_that_are_no_regular_file_before_any_work(kind, tmp_path, monkeypatch, capsys):
    import jepa.sources

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    target = {"fifo": fifo, "link to a fifo": tmp_path / "link.pt", "folder": tmp_path / "folder"}[kind]
    if kind == "link to a fifo":
        target.symlink_to(fifo)
    elif kind == "folder":
        target.mkdir()
    monkeypatch.setattr(jepa.sources, "load_source", _no_work)
    code, _, err = _cli(monkeypatch, capsys, "export", "random:whatever.yaml", "--out", str(target))
    line = _one_error_line(err)
    assert code == 2 and str(target) in line, err
    assert ("an existing folder; name the file" if kind == "folder" else "a named pipe (FIFO), not a regular file") in line
    code, _, err = _cli(monkeypatch, capsys, "eval", "random:whatever.yaml", "--train-data", "x", "--val-data", "y",
                        "--json", str(target))
    line = _one_error_line(err)
    assert code == 2 and f"--json {target}" in line, err
    assert stat.S_ISFIFO(fifo.stat().st_mode) and (kind != "folder" or list(target.iterdir()) == [])


def test_the_eval_report_is_never_written_into_a_fifo_or_a_folder(tmp_path):
    from jepa.eval.report import EvalReport

    report = EvalReport(source="s", source_kind="random", model="m", step=None, encoder="target", num_classes=2,
                        num_train=4, num_val=4, low_shot=None, feature_seconds=0.0)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # old code wrote into it (and blocked without a reader)
    try:
        with pytest.raises(ValueError, match=r"--json .*pipe is a named pipe \(FIFO\), not a regular file"):
            report.write_json(fifo)
        assert os.read(reader, 100) == b""
    finally:
        os.close(reader)
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match=r"folder is an existing folder; name the file to write, "
                                         r"e\.g\. --json .*folder/report\.json"):
        report.write_json(tmp_path / "folder")
    report.write_json(tmp_path / "report.json")
    assert json.loads((tmp_path / "report.json").read_text())["source"] == "s"


def test_check_output_file_takes_new_paths_files_and_links_to_files_only(tmp_path):
    from jepa.outputs import check_output_file

    (tmp_path / "file").write_text("x")
    (tmp_path / "to_file").symlink_to(tmp_path / "file")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for ok in ("new.pt", "new/dir/out.pt", "file", "to_file", "dangling"):
        assert check_output_file(tmp_path / ok, "--out") == tmp_path / ok
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "to_pipe").symlink_to(tmp_path / "pipe")
    with pytest.raises(ValueError, match=r"to_pipe \(a symbolic link to .*pipe\) is a named pipe"):
        check_output_file(tmp_path / "to_pipe", "--out")
    with pytest.raises(ValueError, match=r"pipe is a named pipe \(FIFO\), not a folder; write the output elsewhere"):
        check_output_file(tmp_path / "pipe" / "out.pt", "--out")
    with pytest.raises(ValueError, match=r"file is a file, not a folder"):
        check_output_file(tmp_path / "file" / "a" / "out.pt", "--out")
    assert (tmp_path / "file").read_text() == "x"


# =========================================================================== 2. a full disk while saving

_FULL_DISK = {  # what torch's zip writer raises when the disk fills up
    "models.pt": "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598",
    "rank_00000.pt": "PytorchStreamWriter failed writing file data/0: file write failed",
    "deepspeed": "[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0",  # DeepSpeed's own torch.save
}


@pytest.mark.parametrize("victim", list(_FULL_DISK))
def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous_checkpoint(victim, toy_recipe_file, toy_recipe,
                                                                                 monkeypatch, capsys):
    real_save = torch.save

    def filling_up(obj, f, *args, **kwargs):
        if "step_000002.tmp" in str(f) and victim in str(f):
            real_save(obj, f, *args, **kwargs)  # the file is there (a full disk leaves a partial one)
            raise RuntimeError(_FULL_DISK[victim])
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", filling_up)
    recipe_file = toy_recipe_file("run", *LONG, "checkpoint.every_steps=1", "max_steps=2")
    code, _, err = _cli(monkeypatch, capsys, "train", str(recipe_file))
    line = _one_error_line(err)
    assert code == 2, err
    assert "step_000002.tmp" in line and "the checkpoint of step 2" in line and "free some space" in line, line
    run_dir = recipe_file.parent / "run"
    ckpts = run_dir / "checkpoints"
    assert [p.name for _, p in complete_checkpoints(run_dir)] == ["step_000001"]
    assert (ckpts / "latest").read_text().strip() == "step_000001"
    assert checkpoint.verify_checkpoint(ckpts / "step_000001") == [] and load_model_weights(run_dir).step == 1
    assert not (run_dir / "run.lock").exists()

    monkeypatch.setattr(torch, "save", real_save)  # space freed: the run resumes from step 1
    assert train(toy_recipe("run", *LONG, "checkpoint.every_steps=1", "max_steps=2"), resume="auto").step == 2
    assert [p.name for p in ckpts.iterdir() if p.name.endswith(".tmp")] == []


def test_other_runtime_errors_of_a_save_stay_bugs(tmp_path):
    from jepa.outputs import write_errors

    with pytest.raises(RuntimeError, match="something else"):
        with write_errors(tmp_path / "x.pt", "the checkpoint", "run_dir"):
            raise RuntimeError("something else")
    with pytest.raises(OSError) as info:
        with write_errors(tmp_path / "x.pt", "the export", "--out"):
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    assert info.value.filename == str(tmp_path / "x.pt") and "point --out elsewhere" in str(info.value)


_REAL_WRITE_FAILURE = """
import resource, signal, sys, torch
from safetensors.torch import save_file
from jepa.outputs import write_errors
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
big = {"w": torch.zeros(100_000)}
for name, write in [("a.pt", torch.save), ("a.safetensors", save_file)]:
    try:
        with write_errors(sys.argv[1] + "/" + name, "the thing", "--out"):
            write(big, sys.argv[1] + "/" + name)
    except OSError as exc:
        print(name, exc.errno, exc.filename, exc.strerror)
"""


def test_real_failed_writes_of_torch_and_safetensors_become_os_errors(tmp_path):
    import subprocess

    done = subprocess.run([sys.executable, "-c", _REAL_WRITE_FAILURE, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and len(lines) == 2, done.stdout + done.stderr
    # torch does not say why (EIO, or ENOSPC on a nearly full filesystem); safetensors does (EFBIG)
    assert re.match(rf"a\.pt (5 {tmp_path}/a\.pt writing|28 {tmp_path}/a\.pt no space left on device while writing) "
                    r"the thing (failed )?\(\[enforce fail at inline_container", lines[0]), lines[0]
    assert lines[1].startswith(f"a.safetensors 27 {tmp_path}/a.safetensors writing the thing failed (Error while "
                               "serializing: I/O error: File too large (os error 27)): the disk is full, over quota or "
                               "failing; free some space or point --out elsewhere"), lines[1]


# =========================================================================== 3. damaged JSON files of a run

_LISTED = '{"format_version": 1, "algorithm": "sha256", "files": %s}'


def _digests_outside(newest: Path) -> str:
    """The real table plus a file outside the checkpoint (with its true size and SHA-256)."""
    outside = newest.parent.parent / "outside.bin"
    outside.write_bytes(b"x" * 10)
    table = json.loads((newest / "digests.json").read_text())
    table["files"]["../../outside.bin"] = {"size": 10, "sha256": checkpoint.file_digest(outside)}
    return json.dumps(table)


@pytest.mark.parametrize("content", ["nested", "a list", "files is a list", "an entry is a string",
                                     "a size is a string", "a file outside"])
def test_a_damaged_digests_file_skips_the_checkpoint_with_a_warning_naming_it(content, run_copy, tmp_path, caplog,
                                                                              monkeypatch, capsys):
    newest = run_copy / "checkpoints" / "step_000004"
    digests = newest / "digests.json"
    digests.write_text({
        "nested": NESTED, "a list": "[]", "files is a list": _LISTED % "[1]",
        "an entry is a string": _LISTED % '{"models.pt": "abc", "meta.json": "abc"}',
        "a size is a string": _LISTED % '{"models.pt": {"size": "1", "sha256": "0"}, "meta.json": {"size": 1}}',
        "a file outside": None,
    }[content] or _digests_outside(newest))
    problems = checkpoint.verify_checkpoint(newest)
    assert len(problems) == 1 and "digests.json" in problems[0], problems
    with caplog.at_level(logging.WARNING):
        assert checkpoint.resolve_resume("auto", run_copy) == run_copy / "checkpoints" / "step_000002"
    assert "skipped step_000004" in caplog.text and "digests.json" in caplog.text
    assert load_model_weights(run_copy).step == 2  # export and eval of the run take the valid one
    code, _, err = _cli(monkeypatch, capsys, "export", str(newest), "--out", str(tmp_path / "enc.pt"))
    line = _one_error_line(err)
    assert code == 2 and str(digests) in line and "the checkpoint is invalid" in line, err


@pytest.mark.parametrize("content", [NESTED, "[1, 2]", '{"world_size": "2"}', '{"world_size": 1, "micro_batch_size": [8]}'])
def test_a_damaged_meta_file_is_one_line_naming_it(content, run_copy, toy_recipe_at):
    newest = run_copy / "checkpoints" / "step_000004"
    (newest / "meta.json").write_text(content)
    recipe = toy_recipe_at(run_copy, *LONG, "checkpoint.every_steps=2", "max_steps=6")
    checkpoint.resume_batch_split(recipe, "auto")  # read before verification: the recipe's split, no traceback
    from jepa.checkpoint.meta import read_meta

    with pytest.raises(ValueError, match=r"step_000004/meta\.json: .*resume from another checkpoint"):
        read_meta(newest)
    assert checkpoint.resolve_resume("auto", run_copy).name == "step_000002"  # its digest no longer matches


@pytest.mark.parametrize("content", [NESTED, "[]", '{"metric": "loss", "mode": "min", "value": "low", "step": 1}'])
def test_a_damaged_best_record_is_one_line_naming_it(content, tmp_path):
    from jepa.best_checkpoint import BestCheckpoint
    from jepa.recipe import KeepBestConfig

    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "best.json").write_text(content)
    with pytest.raises(ValueError, match=r"best/best\.json: .*move the best folder out of the run directory"):
        BestCheckpoint(KeepBestConfig(metric="loss"), tmp_path)


@pytest.mark.parametrize("content", [NESTED, "[]", '{"host": "%s", "pid": -1, "started": "yesterday"}'])
def test_a_damaged_run_lock_is_taken_over_naming_why(content, tmp_path, caplog):
    import socket

    from jepa.run_lock import LOCK_FILE, RunLock

    (tmp_path / LOCK_FILE).write_text(content.replace("%s", socket.gethostname()))
    with caplog.at_level(logging.WARNING):
        lock = RunLock.acquire(tmp_path)
    lock.release()
    assert "taking over a stale lock" in caplog.text and not (tmp_path / LOCK_FILE).exists()


def test_read_json_object_refuses_pipes_and_other_shapes_naming_the_file(tmp_path):
    from jepa.checkpoint.json_file import read_json_object

    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "dir").mkdir()
    (tmp_path / "bytes").write_bytes(b"\xff\xfe{}")
    (tmp_path / "nested").write_text('{"a": ' * 100_000 + "1" + "}" * 100_000)
    for name, why in [("pipe", "not a regular file"), ("dir", "not a regular file"), ("bytes", "not UTF-8"),
                      ("nested", "JSON nested too deeply")]:
        with pytest.raises(ValueError, match=rf"{tmp_path / name}: cannot read the thing \({why}"):
            read_json_object(tmp_path / name, "the thing")
    with pytest.raises(FileNotFoundError):
        read_json_object(tmp_path / "missing", "the thing")


# =========================================================================== 4. checkpoint folders that are links


def test_a_symlinked_checkpoint_is_pruned_as_a_link_and_its_target_kept(run_copy, tmp_path, toy_recipe_at):
    ckpts = run_copy / "checkpoints"
    elsewhere = tmp_path / "restored"
    elsewhere.mkdir()
    shutil.move(ckpts / "step_000002", elsewhere / "step_000002")  # the user restored it with ln -s
    (ckpts / "step_000002").symlink_to(elsewhere / "step_000002")
    shutil.move(ckpts / "step_000004", elsewhere / "step_000004")
    (ckpts / "step_000004").symlink_to(elsewhere / "step_000004")
    leftover = tmp_path / "leftover"
    leftover.mkdir()
    (leftover / "keep.txt").write_text("mine")
    (ckpts / "step_000009.tmp").symlink_to(leftover)
    (ckpts / "gone.tmp").symlink_to(tmp_path / "nowhere")
    before = {p.relative_to(elsewhere): p.read_bytes() for p in elsewhere.rglob("*") if p.is_file()}

    result = train(toy_recipe_at(run_copy, *LONG, "checkpoint.every_steps=2", "checkpoint.keep_last=2", "max_steps=8"),
                   resume="auto")
    assert result.step == 8
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_000006", "step_000008"]
    assert {p.relative_to(elsewhere): p.read_bytes() for p in elsewhere.rglob("*") if p.is_file()} == before
    assert (leftover / "keep.txt").read_text() == "mine"
    assert checkpoint.verify_checkpoint(elsewhere / "step_000004") == []


def test_a_symlinked_best_checkpoint_is_replaced_as_a_link(two_checkpoints, tmp_path):
    from jepa.best_checkpoint import BestCheckpoint, read_best
    from jepa.recipe import KeepBestConfig

    source = two_checkpoints / "checkpoints" / "step_000004"
    kept = tmp_path / "kept_best"
    shutil.copytree(source, kept)
    (kept / "best.json").write_text(json.dumps({"metric": "loss", "mode": "min", "value": 5.0, "step": 4,
                                                "metric_step": 4}))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "best").symlink_to(kept)
    for leftover in ("best.tmp", "best.old"):
        (tmp_path / leftover).mkdir()
        (tmp_path / leftover / "keep.txt").write_text("mine")
        (run_dir / leftover).symlink_to(tmp_path / leftover)
    before = {p.name: p.read_bytes() for p in kept.iterdir() if p.is_file()}

    best = BestCheckpoint(KeepBestConfig(metric="loss"), run_dir)
    assert best.best == 5.0
    best.observe({"step": 4, "loss": 1.0})
    assert best.offer(source, 4)
    assert not (run_dir / "best").is_symlink() and read_best(run_dir)["value"] == 1.0
    assert {p.name: p.read_bytes() for p in kept.iterdir() if p.is_file()} == before
    assert all((tmp_path / leftover / "keep.txt").read_text() == "mine" for leftover in ("best.tmp", "best.old"))
    assert sorted(p.name for p in run_dir.iterdir()) == ["best"]
