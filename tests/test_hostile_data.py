"""Hostile data and shard specs (issue #27, round three): each gets one clear message, runs no
shell command it should not, and puts no terminal control character on the screen.

* shard URL schemes are decided in one place, case-insensitively and around spaces: with
  ``JEPA_NO_PIPE=1`` no spelling of ``pipe:`` (``PIPE:``, `` pipe:``, ...) and no URL-rewriting
  environment variable opens a shell, also under ``python -O``; unknown schemes (``hf://``,
  ``foo://``) are refused with one line naming the allowed ones;
* a malformed ``manifest.json`` (invalid JSON, a list, a missing, extra or mistyped key, an
  inconsistent total) is one error naming the file and the problem;
* file names with terminal escape sequences are shown escaped by ``jepa shards``;
* two writers into one output folder: the second is refused at once naming the first's pid, and
  a writer that was killed leaves no lock behind.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from jepa.cli import app
from jepa.data import MANIFEST_NAME, expand_shards, read_manifest, read_shard, shard_folder, write_shard_set
from jepa.data.manifest import local_path
from jepa.data.writer import ShardSample
from jepa.errors import DataError
from tar_files import labelled_members, write_tar
from tiny_recipes import tiny_image_recipe

ESC = "\x1b"


def _png(seed: int, size: int = 16) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> Path:
    """A labelled shard of three small PNGs."""
    path = tmp_path_factory.mktemp("shard") / "s-000000.tar"
    return write_tar(path, labelled_members([(f"k{i}", "png", _png(i), i % 2) for i in range(3)]))


def _recipe_file(tmp_path: Path, **data) -> Path:
    raw = tiny_image_recipe(0)
    raw["run_dir"] = str(tmp_path / "run")
    raw["data"].update(data)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def plain_consoles(monkeypatch):
    """The CLI's rich consoles without colours, whatever terminal pytest runs in: any ESC in the
    output then comes from the data, not from styling."""
    from jepa.cli import data_cmds, errors

    monkeypatch.setattr(data_cmds, "console", Console(color_system=None))
    err = Console(stderr=True, color_system=None)
    monkeypatch.setattr(data_cmds, "err_console", err)
    monkeypatch.setattr(errors, "err_console", err)


# ----------------------------------------------------------------------------- shard URL schemes

PIPE_SPELLINGS = ["PIPE:", "Pipe:", " pipe:", "\tpIpE:", "\x00pipe:", "\r\n PiPe:"]


@pytest.mark.parametrize("prefix", PIPE_SPELLINGS, ids=repr)
def test_no_spelling_of_pipe_runs_a_shell_with_no_pipe_set(prefix, tmp_path, monkeypatch):
    monkeypatch.setenv("JEPA_NO_PIPE", "1")
    marker = tmp_path / "ran"
    url = f"{prefix}touch {marker}"
    with pytest.raises(ValueError, match="pipe: shard URLs run shell commands and JEPA_NO_PIPE is set"):
        expand_shards(url)
    with pytest.raises(ValueError, match="JEPA_NO_PIPE is set"):
        expand_shards(f"{{{tmp_path}/a.tar,{url}}}")  # a brace pattern expanding to one
    with pytest.raises(ValueError, match="JEPA_NO_PIPE is set"):
        list(read_shard(url))  # the opener itself checks, whoever calls it
    assert not marker.exists()


def test_pipe_is_a_pipe_in_any_case_when_allowed(shard, monkeypatch):
    monkeypatch.delenv("JEPA_NO_PIPE", raising=False)
    keys = [s["__key__"] for s in read_shard(str(shard))]
    assert [s["__key__"] for s in read_shard(f"PIPE:cat {shard}")] == keys == ["k0", "k1", "k2"]
    assert [s["__key__"] for s in read_shard(f" Pipe:cat {shard}")] == keys


def test_url_rewriting_environment_cannot_turn_a_path_into_a_shell_command(shard, tmp_path, monkeypatch):
    """webdataset's opener rewrites URLs by the GOPEN_REWRITE variable, into pipe: ones too."""
    marker = tmp_path / "ran"
    monkeypatch.setenv("JEPA_NO_PIPE", "1")
    monkeypatch.setenv("GOPEN_REWRITE", f"{shard}=pipe:touch {marker} && cat {shard}")
    assert [s["__key__"] for s in read_shard(str(shard))] == ["k0", "k1", "k2"]
    assert not marker.exists()


def test_no_pipe_holds_under_python_O(shard, tmp_path):
    """The only guard in webdataset's pipe opener is an assert, gone under ``python -O``."""
    marker = tmp_path / "ran"
    script = textwrap.dedent(f"""
        from jepa.data import expand_shards, read_shard
        for prefix in {PIPE_SPELLINGS!r}:
            url = prefix + {f"touch {marker}"!r}
            for call in (lambda: expand_shards(url), lambda: list(read_shard(url))):
                try:
                    call()
                    print("OPENED", repr(url))
                except ValueError as exc:
                    assert "JEPA_NO_PIPE is set" in str(exc), exc  # (no asserts run here under -O anyway)
                    print("REFUSED")
                except Exception as exc:
                    print("OTHER", type(exc).__name__, exc)
    """)
    env = {**os.environ, "JEPA_NO_PIPE": "1", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-O", "-c", script], env=env, capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr
    assert not marker.exists()
    assert res.stdout.split() == ["REFUSED"] * (2 * len(PIPE_SPELLINGS)), res.stdout


@pytest.mark.parametrize("url", ["hf://x", "foo://x", "HF://org/data/s.tar", "gs://bucket/s.tar", "a:b.tar"])
def test_unknown_schemes_are_refused_naming_the_allowed_ones(url):
    for call in (lambda: expand_shards(url), lambda: list(read_shard(url))):
        with pytest.raises(ValueError) as info:
            call()
        msg = str(info.value)
        assert repr(url) in msg and "are not supported" in msg and "http://, https:// or pipe:" in msg, msg
        assert "\n" not in msg


def test_local_paths_with_a_colon_and_file_urls_are_local(shard, tmp_path, monkeypatch):
    monkeypatch.chdir(shard.parent)
    colon = Path("a:b.tar")
    colon.write_bytes(shard.read_bytes())
    assert [s["__key__"] for s in read_shard("./a:b.tar")] == ["k0", "k1", "k2"]
    with pytest.raises(ValueError, match=r"write it as \./NAME"):
        expand_shards("a:b.tar")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x:1.tar").write_bytes(shard.read_bytes())
    assert expand_shards(f"{tmp_path}/sub/x:1.tar") == [f"{tmp_path}/sub/x:1.tar"]
    for url in (f"file:{shard}", f"file://{shard}", f"FILE:{shard}"):
        assert local_path(url) == str(shard)
        assert expand_shards(url) == [url]
        assert len(list(read_shard(url))) == 3


def test_cli_refuses_unknown_schemes_and_pipes_in_one_line(tmp_path, monkeypatch, plain_consoles):
    marker = tmp_path / "ran"
    for spec, env, expected in [("hf://x", {}, "are not supported"), ("foo://x::bar://y", {}, "are not supported"),
                                (f"PIPE:touch {marker}", {"JEPA_NO_PIPE": "1"}, "JEPA_NO_PIPE is set")]:
        recipe = _recipe_file(tmp_path, source="shards", train_shards=spec, num_workers=0)
        res = CliRunner().invoke(app, ["bench", "data", str(recipe), "--batches", "1", "--repeats", "1"], env=env)
        assert res.exit_code == 2, res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], res.output
    assert not marker.exists()


# ----------------------------------------------------------------------------------- manifest.json

_GOOD = {"format": "jepa-shards", "version": 1, "prefix": "s", "pattern": "s-000000.tar", "total": 3, "num_shards": 1,
         "classes": ["a", "b"], "shards": [{"name": "s-000000.tar", "count": 3, "bytes": 10240}], "skipped": [],
         "ignored_files": 0}


def _without(key: str) -> dict:
    return {k: v for k, v in _GOOD.items() if k != key}


MALFORMED = {
    "invalid JSON": ('{"format": "jepa-shards", ', "not valid JSON"),
    "a list": (json.dumps([_GOOD]), "holds a JSON array where a manifest object is expected"),
    "a string": (json.dumps("manifest"), "holds a JSON string"),
    "missing key": (json.dumps(_without("shards")), "shards: Field required"),
    "missing key 2": (json.dumps(_without("ignored_files")), "ignored_files: Field required"),
    "extra key": (json.dumps({**_GOOD, "owner": "x"}), "owner: Extra inputs are not permitted"),
    "extra shard key": (json.dumps({**_GOOD, "shards": [{**_GOOD["shards"][0], "md5": "x"}]}), "shards.0.md5: Extra"),
    "count as text": (json.dumps({**_GOOD, "shards": [{**_GOOD["shards"][0], "count": "3"}]}),
                      "shards.0.count: Input should be a valid integer"),
    "shards an object": (json.dumps({**_GOOD, "shards": {"s-000000.tar": 3}}), "shards: Input should be a valid list"),
    "shard entry a list": (json.dumps({**_GOOD, "shards": [["s-000000.tar", 3, 10]]}), "shards.0"),
    "classes a string": (json.dumps({**_GOOD, "classes": "ab"}), "classes"),
    "negative count": (json.dumps({**_GOOD, "shards": [{**_GOOD["shards"][0], "count": -1}]}), "shards.0.count"),
    "shard outside": (json.dumps({**_GOOD, "shards": [{**_GOOD["shards"][0], "name": "../../etc/x.tar"}]}),
                      "shards.0.name"),
    "wrong total": (json.dumps({**_GOOD, "total": 30}), "total is 30 but the shards give 3"),
    "duplicate key": ('{"format": "jepa-shards", "format": "x"}', "key 'format' appears twice"),
    "not UTF-8": (b"\xff\xfe{}", "not UTF-8"),
    "version true": (json.dumps({**_GOOD, "version": True}), "version"),
    "wrong format": (json.dumps({**_GOOD, "format": "other"}), "not a version-1 jepa shard manifest"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_manifest_is_one_clear_error(case, shard, tmp_path):
    content, expected = MALFORMED[case]
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "s-000000.tar").write_bytes(shard.read_bytes())
    manifest = folder / MANIFEST_NAME
    manifest.write_bytes(content if isinstance(content, bytes) else content.encode())
    for call in (lambda: read_manifest(folder), lambda: expand_shards(str(folder))):
        with pytest.raises(ValueError) as info:
            call()
        msg = str(info.value)
        assert type(info.value) is DataError, type(info.value)  # not a JSONDecodeError without the file's name
        assert str(manifest) in msg and expected in msg and "rewrite it with `jepa shards`" in msg, msg
        assert "\n" not in msg


def test_malformed_manifest_through_the_cli(shard, tmp_path, plain_consoles):
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "s-000000.tar").write_bytes(shard.read_bytes())
    (folder / MANIFEST_NAME).write_text(json.dumps(_without("prefix")))
    recipe = _recipe_file(tmp_path, source="shards", train_shards=str(folder), num_workers=0)
    res = CliRunner().invoke(app, ["bench", "data", str(recipe), "--batches", "1", "--repeats", "1"])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert res.output.startswith("error:") and "manifest.json" in res.output and "prefix: Field required" in res.output


def test_a_written_manifest_reads_back(tmp_path):
    jobs = [lambda: [ShardSample(f"k{i}", "png", _png(i), i % 2) for i in range(5)]]
    written = write_shard_set(jobs, tmp_path / "out", prefix="s", max_count=2, max_bytes=1 << 20, workers=1,
                              classes=["a", "b"], show_progress=False)
    assert read_manifest(tmp_path / "out").to_json() == written.to_json()
    assert len(expand_shards(str(tmp_path / "out"))) == 3


# ------------------------------------------------------------------------------ names on the screen

def test_printable_escapes_controls_and_keeps_ordinary_text():
    from jepa.text import printable  # here, not at the top: the module is new (the other tests run without it)

    assert printable("caf\u00e9 \u4e2d\u6587 \U0001F600 a b-c_d.png") == "caf\u00e9 \u4e2d\u6587 \U0001F600 a b-c_d.png"
    assert printable("red\x1b[31mX\x07\r\n\x7f\x9b") == "red\\x1b[31mX\\x07\\x0d\\x0a\\x7f\\x9b"
    assert printable("\u202eevil") == "\\u202eevil"  # bidirectional override
    shown = printable(os.fsdecode(b"bad\xffname"))  # a non-UTF-8 file name: a lone surrogate, not printable
    assert shown.startswith("bad\\") and shown.endswith("name") and shown.encode("utf-8")
    assert printable("") == ""


def test_shards_shows_hostile_file_names_escaped(tmp_path, plain_consoles):
    src = tmp_path / "src"
    src.mkdir()
    (src / f"ok{ESC}[31mred.png").write_bytes(_png(0))
    (src / f"bad{ESC}]0;title\x07.png").write_bytes(b"not an image")
    (src / f"also bad\r{ESC}[2K.png").write_bytes(b"not an image either")
    out = tmp_path / f"out{ESC}[1m"
    res = CliRunner().invoke(app, ["shards", str(src), str(out), "--workers", "1"])
    assert res.exit_code == 0, res.output
    for text in (res.stdout, res.stderr):
        assert ESC not in text and "\x07" not in text and "\r" not in text, repr(text)
    assert "bad\\x1b]0;title\\x07.png" in res.stderr and "also bad\\x0d\\x1b[2K.png" in res.stderr, res.stderr
    assert "wrote 1 samples" in res.stdout and "out\\x1b[1m" in res.stdout, res.stdout
    # the manifest keeps the real names (JSON escapes them)
    assert {s.path for s in read_manifest(out).skipped} == {f"bad{ESC}]0;title\x07.png", f"also bad\r{ESC}[2K.png"}


def test_errors_naming_hostile_paths_are_escaped(tmp_path, plain_consoles):
    src = tmp_path / "src"
    (src / "cls").mkdir(parents=True)
    (src / f"top{ESC}[31m.png").write_bytes(_png(0))  # a file beside class folders: refused, naming it
    for args in (["shards", str(tmp_path / f"missing{ESC}[31m"), str(tmp_path / "o1")],
                 ["shards", str(src), str(tmp_path / "o2")]):
        res = CliRunner().invoke(app, [*args, "--workers", "1"])
        assert res.exit_code == 2 and res.stderr.startswith("error:"), res.stderr
        assert ESC not in res.stderr and "\\x1b[31m" in res.stderr, repr(res.stderr)


# ----------------------------------------------------------------------------- concurrent writers

def test_second_writer_into_one_folder_is_refused_and_the_first_finishes(tmp_path):
    """Two writers into one folder both failed: the second deleted the first's temporary files."""
    out = tmp_path / "out"
    first_writing, second_done = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def slow_job():
        yield ShardSample("a", "png", _png(0), None)
        first_writing.set()
        assert second_done.wait(60)
        yield ShardSample("b", "png", _png(1), None)

    def first():
        try:
            outcome["first"] = write_shard_set([slow_job], out, prefix="s", max_count=10, max_bytes=1 << 20,
                                               workers=1, show_progress=False)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertions below
            outcome["first"] = exc
        finally:
            first_writing.set()

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert first_writing.wait(60)
        with pytest.raises(ValueError) as info:
            write_shard_set([lambda: [ShardSample("c", "png", _png(2), None)]], out, prefix="s", max_count=10,
                            max_bytes=1 << 20, workers=1, show_progress=False)
    finally:
        second_done.set()
        thread.join(60)
    msg = str(info.value)
    assert f"{out} is being written by another writer (jepa shards / jepa demo-data) (pid {os.getpid()})" in msg, msg
    assert "wait for it or choose another folder" in msg
    assert not isinstance(outcome["first"], BaseException), outcome["first"]
    assert outcome["first"].total == 2 and [s["__key__"] for s in read_shard(str(out / "s-000000.tar"))] == ["a", "b"]
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME, "s-000000.tar"]  # no lock or temporary left


def test_shards_cli_refuses_a_folder_being_written(tmp_path, plain_consoles):
    src = tmp_path / "src"
    src.mkdir()
    (src / "x.png").write_bytes(_png(0))
    out = tmp_path / "out"
    writing, release = threading.Event(), threading.Event()

    def held_job():
        writing.set()
        release.wait(60)
        return []

    thread = threading.Thread(target=lambda: write_shard_set([held_job], out, prefix="other", max_count=10,
                                                             max_bytes=1 << 20, workers=1, show_progress=False))
    thread.start()
    try:
        assert writing.wait(60)
        res = CliRunner().invoke(app, ["shards", str(src), str(out), "--workers", "1"])
    finally:
        release.set()
        thread.join(60)
    assert res.exit_code == 2, res.stderr
    assert res.stderr.strip() == (f"error: {out} is being written by another writer (jepa shards / jepa demo-data) "
                                  f"(pid {os.getpid()}); wait for it or choose another folder"), res.stderr
    res = CliRunner().invoke(app, ["shards", str(src), str(tmp_path / "out2"), "--workers", "1"])
    assert res.exit_code == 0, res.output


def test_a_killed_writer_leaves_no_lock_behind(tmp_path):
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import sys, time
        from jepa.data import write_shard_set

        def job():
            print("writing", flush=True)
            time.sleep(600)
            return []

        write_shard_set([job], {str(out)!r}, prefix="s", max_count=10, max_bytes=1 << 20, workers=1, show_progress=False)
    """)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.kill()
        proc.wait(60)
    src = tmp_path / "src"
    src.mkdir()
    (src / "x.png").write_bytes(_png(0))
    from jepa import registry

    manifest = shard_folder(src, out, registry.get("image")(), prefix="s", show_progress=False)
    assert manifest.total == 1
