"""Hostile input, round three: the leftovers (issue #27).

* scratch folders we remove again (resharding's ``step_N.reshard.tmp``, the shard writer's
  ``.PREFIX-partial``) may be symbolic links: the link goes, never what it points to;
* ``jepa bench train --json / --trace`` are checked before any work;
* JSON read from an export's metadata, a timm export's header and ``metrics.jsonl`` is one line
  naming the file whatever is in it (nested too deeply included);
* a broken modality plugin does not stop foreign checkpoints from being recognised;
* running out of memory in online evaluation stays a memory error, on every rank;
* ``jepa eval``'s loader and probe sizes have the recipe fields' bounds;
* a data-loader worker killed by the OOM killer is one line naming the knobs;
* the shard writer's lock names every writer that takes it.
"""

from __future__ import annotations

import json
import os
import signal
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cli_runner import run_jepa as _cli, one_error_line as _one_error_line
from jepa.errors import DataError

pytestmark = pytest.mark.usefixtures("one_thread")

NESTED = "[" * 100_000 + "]" * 100_000  # json.loads raises RecursionError on it


# --------------------------------------------------------------------------- 1. scratch folders that are links


def _outside(tmp_path: Path) -> Path:
    """A folder the scratch link points to, with a file that must survive."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    return outside


@pytest.mark.parametrize("dangling", [False, True], ids=["link-to-folder", "dangling-link"])
def test_reshard_scratch_that_is_a_link_is_replaced_not_followed(tmp_path, toy_recipe_at, dangling):
    """A ``step_N.reshard.tmp`` that is a symbolic link: DeepSpeed's conversion used to fail on it
    ("Cannot call rmtree on a symbolic link", or mkdir on a dangling one); now the link goes and the
    load works, and the folder it pointed to is untouched."""
    from jepa import checkpoint
    from jepa.engine import Engine
    from jepa.objectives.ijepa import IJEPAConfig, IJEPAObjective
    from jepa.recipe import EngineConfig, OptimConfig
    from jepa.train import train
    from jepa.weights import safe_load

    from toy_modality import ToyConfig, ToyModality

    run = train(toy_recipe_at(tmp_path / "run", "engine.zero_stage=2", "max_steps=1",
                              "checkpoint.every_steps=1")).run_dir
    ckpt = run / "checkpoints" / "step_000001"
    scratch = ckpt.with_name(ckpt.name + checkpoint.RESHARD_SUFFIX)
    outside = tmp_path / "gone" if dangling else _outside(tmp_path)
    scratch.symlink_to(outside, target_is_directory=True)
    objective = IJEPAObjective(IJEPAConfig(), ToyModality(ToyConfig()), total_steps=10)
    model = objective.build_model()
    engine = Engine(model, frozen=objective.build_frozen(model), engine_cfg=EngineConfig(precision="fp32", zero_stage=2),
                    optim_cfg=OptimConfig(), global_batch_size=8, requested_micro_batch=8)
    try:
        target = safe_load(ckpt / "models.pt", "models.pt")["target_encoder"]
        engine.load_state(ckpt, {"target_encoder": target}, reshard_dir=scratch)
    finally:
        engine.close()
    assert not scratch.exists() and not scratch.is_symlink()
    if not dangling:
        assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"] and (outside / "keep.txt").read_text() == "mine"


def test_reshard_scratch_removal_failure_is_a_warning(tmp_path, caplog, monkeypatch):
    """The scratch folder that cannot be removed after loading is a warning naming it (a leftover is
    removed by the next attempt), never an exception hiding the one being raised."""
    from jepa.engine import reshard

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(reshard, "remove_tree", refuse)
    with caplog.at_level("WARNING", logger="jepa.engine.reshard"):
        reshard.remove_scratch(tmp_path / "step_000001.reshard.tmp")
    assert "could not remove the resharding scratch folder" in caplog.text and "step_000001.reshard.tmp" in caplog.text


def test_shard_writer_partial_folder_that_is_a_link_is_replaced_not_followed(tmp_path):
    from jepa.data import ShardSample, write_shard_set

    out = tmp_path / "out"
    out.mkdir()
    outside = _outside(tmp_path)
    (out / ".s-partial").symlink_to(outside, target_is_directory=True)
    manifest = write_shard_set([lambda: [ShardSample("a", "bin", b"x"), ShardSample("b", "bin", b"y")]], out,
                               prefix="s", max_count=10, max_bytes=1 << 20, workers=1, show_progress=False)
    assert manifest.total == 2
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "s-000000.tar"]
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]


def test_shard_writer_lock_names_every_writer(tmp_path):
    from jepa.data import ShardSample, write_shard_set
    from jepa.data.writer import folder_lock

    out = tmp_path / "out"
    out.mkdir()
    with folder_lock(out), pytest.raises(ValueError) as info:
        write_shard_set([lambda: [ShardSample("a", "bin", b"x")]], out, prefix="s", max_count=10, max_bytes=1 << 20,
                        workers=1, show_progress=False)
    assert (f"{out} is being written by another writer (jepa shards / jepa demo-data) (pid {os.getpid()}); wait for "
            "it or choose another folder") == str(info.value)


# --------------------------------------------------------------------------- 2. bench train outputs


@pytest.fixture
def no_training(monkeypatch):
    """Training fails the test: the outputs must be refused before it. Patched where the bench calls
    it (patching ``jepa.train.train`` would leak into ``jepa.bench`` if this test imported it first)."""
    import jepa.bench

    def train(*args, **kwargs):
        raise AssertionError("trained before checking the outputs")

    monkeypatch.setattr(jepa.bench, "train", train)


@pytest.mark.parametrize("flag", ["--json", "--trace"])
@pytest.mark.parametrize("kind", ["folder", "fifo", "under-a-file"])
def test_bench_train_outputs_are_checked_before_training(flag, kind, tmp_path, toy_recipe_file, no_training,
                                                         monkeypatch, capsys):
    target = tmp_path / "target"
    if kind == "folder":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        (tmp_path / "file").write_text("")
        target = tmp_path / "file" / "out.json"
    code, _, err = _cli(monkeypatch, capsys, "bench", "train", str(toy_recipe_file("b")), "--steps", "1", "--profile",
                        flag, str(target))
    assert code == 2, err
    line = _one_error_line(err)
    assert f"{flag} {target}" in line, line
    assert {"folder": "is an existing folder", "fifo": "named pipe", "under-a-file": "is a file, not a folder"}[kind] in line


# --------------------------------------------------------------------------- 3. JSON read from files


def _torchscript_like(path: Path, metadata: str) -> Path:
    """A zip laid out as TorchScript with ``metadata`` as its jepa export metadata."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("model/code/__torch__.py", "")
        zf.writestr("model/extra/jepa_export.json", metadata)
    return path


@pytest.mark.parametrize("metadata, problem", [
    (NESTED[:20_000] + NESTED[-20_000:], "nested too deeply"),
    ("[1, 2]", "where an object belongs"),
    ('{"model": "m", "modality_name": ["image"], "modality": {}, "encoder": "target"}', "modality_name"),
    ('{"model": "m", "modality_name": "image", "encoder": "target"}', "modality"),
])
def test_export_metadata_is_a_json_object_or_one_error(tmp_path, metadata, problem):
    from jepa.sources import read_export_metadata

    path = _torchscript_like(tmp_path / "enc.pt", metadata)
    with pytest.raises(ValueError) as info:
        read_export_metadata(path)
    message = str(info.value)
    assert message.startswith(f"{path}: a TorchScript file without readable jepa_export.json metadata (")
    assert problem in message and "\n" not in message, message


@pytest.mark.parametrize("key, value, problem", [
    ("timm_kwargs", NESTED[:20_000] + NESTED[-20_000:], "nested too deeply"),
    ("timm_kwargs", "[1]", "where an object belongs"),
    ("jepa_export", "{not json", "not JSON"),
    ("jepa_export", None, "missing"),
])
def test_timm_export_header_is_a_json_object_or_one_error(tmp_path, key, value, problem):
    from safetensors.torch import save_file

    from jepa.modalities.image.export_timm import load_timm_export

    header = {"timm_model": "vit_tiny_patch16_224", "timm_kwargs": "{}", "jepa_export": "{}"}
    if value is None:
        del header[key]
    else:
        header[key] = value
    path = tmp_path / "enc.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata=header)
    with pytest.raises(ValueError) as info:
        load_timm_export(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and f"metadata {key}: " in message and problem in message, message


@pytest.mark.parametrize("text, problem", [
    ('{"step": 1}\n' + NESTED[:20_000] + NESTED[-20_000:] + "\n", ":2: not a JSON record (JSON nested too deeply)"),
    ('{"step": 1}\n[1]\n', ":2: not a JSON record (not an object with an integer step)"),
    ('{"loss": 1.0}\n', ":1: not a JSON record (not an object with an integer step)"),
    ('{"step": 1}\n\xff\n', ": not UTF-8 text"),
])
def test_metrics_file_is_records_or_one_error(tmp_path, text, problem):
    from jepa.monitor import METRICS_FILE, _truncate_metrics, read_metrics

    path = tmp_path / METRICS_FILE
    path.write_bytes(text.encode("utf-8", "surrogateescape") if "\xff" not in text else text.encode("latin-1"))
    for read in (lambda: read_metrics(tmp_path), lambda: _truncate_metrics(path, 1)):
        with pytest.raises(ValueError) as info:
            read()
        assert str(info.value).startswith(f"{path}{problem}"), str(info.value)


def test_metrics_file_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    from jepa.monitor import METRICS_FILE, read_metrics

    os.mkfifo(tmp_path / METRICS_FILE)
    with pytest.raises(ValueError, match="not a regular file"):
        read_metrics(tmp_path)


def test_manifest_nested_too_deeply_is_one_error(tmp_path):
    """Already so after the manifest rewrite; pinned here with the other JSON readers."""
    from jepa.data import Manifest

    (tmp_path / "manifest.json").write_text(NESTED[:20_000] + NESTED[-20_000:])
    with pytest.raises(ValueError, match=r"manifest.json: not a jepa shard manifest \(nested too deeply\)"):
        Manifest.load(tmp_path / "manifest.json")


# --------------------------------------------------------------------------- 4. foreign checkpoints beside a broken plugin


def test_foreign_checkpoint_is_not_stopped_by_a_broken_plugin(tmp_path, monkeypatch):
    import importlib.metadata

    from jepa import registry
    from jepa.sources import _foreign_source

    (tmp_path / "followup_boom_mod.py").write_text("raise RuntimeError('this plugin cannot start')\n")
    info = tmp_path / "followup_boom-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: followup-boom\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[jepa.modalities]\naaa_boom = followup_boom_mod:Boom\n")
    dist = importlib.metadata.PathDistribution(info)
    monkeypatch.syspath_prepend(str(tmp_path))
    installed = importlib.metadata.entry_points
    monkeypatch.setattr(registry, "entry_points", lambda *, group: [
        *installed(group=group), *(ep for ep in dist.entry_points if ep.group == group)])
    monkeypatch.setattr(registry.MODALITIES, "_cache", dict(registry.MODALITIES._cache))
    monkeypatch.setattr(registry.MODALITIES, "_broken", {})
    with pytest.raises(ValueError) as error:
        _foreign_source({"something": 1}, tmp_path / "other.pth", "target", {})
    message = str(error.value)
    assert "no installed modality recognises this checkpoint" in message, message
    assert "aaa_boom" in message and "jepa modalities" in message, message


# --------------------------------------------------------------------------- 5. memory in online evaluation


class _Engine:
    """What OnlineKNN._features uses of the engine; ``others`` are the gathered results of the other ranks."""

    def __init__(self, rank: int, others: list):
        self.dist = SimpleNamespace(rank=rank, device=torch.device("cpu"), world_size=1 + len(others))
        self.others, self.gathered = others, None

    def autocast(self):
        from contextlib import nullcontext

        return nullcontext()

    def all_gather_object(self, obj):
        self.gathered = obj
        return [obj, *self.others] if self.dist.rank == 0 else [*self.others, obj]


def _knn(engine: _Engine, failure: BaseException | None):
    from jepa.online_eval import OnlineKNN

    knn = object.__new__(OnlineKNN)
    knn.cfg, knn.engine = SimpleNamespace(train_shards="bank"), engine

    def batches(name, skipped):
        if failure is not None:
            raise failure
        yield torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.int64)

    knn._my_batches = batches
    return knn


GPU_OOM = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.1 GiB of which 1.2 GiB "
           "is free.\nOf the allocated memory 70 GiB is allocated by PyTorch")
CPU_OOM = ("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate "
           "68719476736 bytes. Error code 12 (Cannot allocate memory)")


@pytest.mark.parametrize("failure, raised, said", [
    (torch.OutOfMemoryError(GPU_OOM), torch.OutOfMemoryError,
     "out of GPU memory (online evaluation of eval.train_shards on rank 0: CUDA out of memory. Tried to allocate 2.00 GiB)"),
    (RuntimeError(CPU_OOM), MemoryError, "out of host memory (DefaultCPUAllocator: can't allocate memory: you tried to "
                                         "allocate 68719476736 bytes"),
    (MemoryError(), MemoryError, "out of host memory (online evaluation of eval.train_shards on rank 0)"),
    (DataError("bad shard"), DataError, "online evaluation failed: eval.train_shards: bad shard"),
], ids=["gpu", "cpu-allocator", "memory-error", "other"])
def test_online_eval_memory_failure_is_a_memory_error_on_every_rank(failure, raised, said):
    from jepa.cli.errors import exit_code_for, message_of

    engine = _Engine(0, [(None, (torch.empty(0), torch.empty(0, dtype=torch.int64)))])
    with pytest.raises(raised) as on_rank0:
        _knn(engine, failure)._features(None, "eval.train_shards")
    other = _Engine(1, [engine.gathered])  # rank 1 encoded its part without trouble
    with pytest.raises(raised) as on_rank1:
        _knn(other, None)._features(lambda x: x, "eval.train_shards")
    for exc in (on_rank0.value, on_rank1.value):
        assert type(exc) is raised and str(exc) == str(on_rank0.value)
        assert exit_code_for(exc) == 2
        assert said in message_of(exc) and "\n" not in message_of(exc), message_of(exc)


# --------------------------------------------------------------------------- 6. jepa eval bounds


@pytest.mark.parametrize("flag, section, field, reason", [
    ("--shuffle-buffer", "data", "shuffle_buffer", "every worker fills its buffer"),
    ("--num-workers", "data", "num_workers", "each is a process"),
    ("--batch-size", "eval", "batch_size", "the batch and its activations"),
    ("--k", "eval", "k", "every query keeps its k nearest"),
])
def test_eval_sizes_have_the_recipe_bounds(flag, section, field, reason, tmp_path, monkeypatch, capsys):
    from jepa.recipe import DataConfig, EvalConfig

    most = next(m.le for m in {"data": DataConfig, "eval": EvalConfig}[section].model_fields[field].metadata
                if getattr(m, "le", None) is not None)
    args = ["eval", str(tmp_path / "no-such-source"), "--train-data", str(tmp_path), "--val-data", str(tmp_path)]
    code, _, err = _cli(monkeypatch, capsys, *args, flag, str(most + 1))
    assert code == 2, err
    line = _one_error_line(err)
    assert f"{flag} {most + 1} is more than the {most:,} allowed (as for the recipe's {section}.{field}): " in line, line
    assert reason in line, line
    code, _, err = _cli(monkeypatch, capsys, *args, flag, str(most))  # the bound itself passes this check
    assert code == 2 and "is more than" not in err and "no-such-source" in err, err


# --------------------------------------------------------------------------- 7. loader worker killed


class _KillsItsWorker(torch.utils.data.IterableDataset):
    def __iter__(self):
        os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does
        yield 0


def test_loader_worker_killed_by_the_oom_killer_is_one_line():
    from jepa.cli.errors import exit_code_for, message_of

    with pytest.raises(RuntimeError) as info:
        list(torch.utils.data.DataLoader(_KillsItsWorker(), num_workers=1))
    exc = info.value
    assert exit_code_for(exc) == 2
    message = message_of(exc)
    assert "\n" not in message and message.startswith("a data-loading worker (pid "), message
    assert "killed by signal Killed: likely out of host memory" in message, message
    assert all(knob in message for knob in ("data.num_workers", "data.prefetch_factor", "data.shuffle_buffer")), message


@pytest.mark.parametrize("text, expected", [
    ("DataLoader worker (pid 77) is killed by signal: Killed. ", "killed by signal Killed"),
    ("DataLoader worker (pid 77) is killed by signal: Bus error. ", "out of shared memory (/dev/shm"),
    ("DataLoader worker (pid 77) is killed by signal: Segmentation fault. ", None),  # a crash: a bug
    ("DataLoader worker (pid(s) 77) exited unexpectedly", None),
    ("some other RuntimeError", None),
])
def test_only_workers_killed_for_memory_are_user_errors(text, expected):
    from jepa.cli.errors import exit_code_for, message_of

    exc = RuntimeError(text)
    if expected is None:
        assert exit_code_for(exc) is None
    else:
        assert exit_code_for(exc) == 2 and expected in message_of(exc) and "pid 77" in message_of(exc)
