"""Resuming on another number of processes: the engine state resharded through DeepSpeed's
universal checkpoint, the data positions re-dealt (no sample of the epoch lost or repeated), the
micro batch kept and the accumulation steps derived.

Multi-process runs are launched the way ``srun`` starts tasks: plain ``python`` processes that
only see ``SLURM_*`` variables (no RANK / WORLD_SIZE / MASTER_*), so these tests also show a
Slurm launch training and resuming (tests/test_slurm.py covers the sbatch example end to end).

Which samples were trained on is read from the inputs themselves: the test shards carry each
sample's id in channel 0 (constant along the sequence, so the toy modality's random roll keeps
it), recorded where the loop hands the batch to the target encoder.
"""

from __future__ import annotations

import io
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from jepa.objectives.ijepa import MaskBatches
from jepa import checkpoint
from jepa.data import ShardSample, expand_shards, write_shard_set
from jepa.data.redeal import carry_shares, redeal
from jepa.data.shard_loader import ShardTrainLoader
from jepa.monitor import read_metrics
from jepa.recipe import DataConfig, parse_recipe
from jepa.train import train

from toy_modality import ToyConfig, ToyModality

NUM_SAMPLES, PER_SHARD = 48, 6  # 8 shards; an epoch is 6 steps of 8
ID_SCALE = 1e-3


# --------------------------------------------------------------------------- data with ids


class _IdChunk:
    """Toy sequences (4 channels x 32 steps: noisy sinusoids) whose channel 0 holds the sample id."""

    def __init__(self, start: int, count: int):
        self.start, self.count = start, count

    def __call__(self):
        rng = np.random.default_rng(self.start)
        t = np.arange(32) / 32
        for i in range(self.start, self.start + self.count):
            x = np.sin(2 * np.pi * rng.uniform(1, 4) * t + rng.uniform(0, 2 * np.pi, (4, 1)))
            x = (x + 0.1 * rng.standard_normal((4, 32))).astype(np.float32)
            x[0] = i * ID_SCALE
            buffer = io.BytesIO()
            np.save(buffer, x, allow_pickle=False)
            yield ShardSample(f"s{i:05d}", "npy", buffer.getvalue(), 0)


def write_id_shards(folder: Path, num: int = NUM_SAMPLES, per_shard: int = PER_SHARD) -> Path:
    write_shard_set([_IdChunk(s, min(per_shard, num - s)) for s in range(0, num, per_shard)], folder, prefix="ids",
                    max_count=per_shard, max_bytes=1 << 40, workers=1, total_items=num, show_progress=False)
    return folder


def ids_of(x: torch.Tensor) -> list[int]:
    return [round(v / ID_SCALE) for v in x[:, 0, 0].tolist()]


# Runs `jepa` commands one after the other in this process (separated by "--then"; one process
# group for all, as a Slurm task would), appending the ids of every micro batch each one trains on
# to ids<command>_rank<R>.txt in $JEPA_TEST_IDS.
RUNNER = '''
import os, sys
import jepa.objectives.ijepa as T
_target, _command = T.target_representations, [0]
def _record(encoder, x, *args, **kwargs):
    rank = os.environ.get("SLURM_PROCID", os.environ.get("RANK", "0"))
    with open(os.path.join(os.environ["JEPA_TEST_IDS"], f"ids{_command[0]}_rank{rank}.txt"), "a") as f:
        f.write(" ".join(str(round(v / %r)) for v in x[:, 0, 0].tolist()) + "\\n")
    return _target(encoder, x, *args, **kwargs)
T.target_representations = _record
from jepa.cli import main
args = sys.argv[1:]
while args:
    cut = args.index("--then") if "--then" in args else len(args)
    sys.argv, args = ["jepa", *args[:cut]], args[cut + 1:]
    try:
        main()
    except SystemExit as exc:
        if exc.code:
            raise
    _command[0] += 1
''' % ID_SCALE


def record_ids_in_process(monkeypatch) -> list[list[int]]:
    """Micro batches (their sample ids) the in-process training loop runs from now on."""
    import jepa.objectives.ijepa as loop

    seen: list[list[int]] = []
    target = loop.target_representations

    def record(encoder, x, *args, **kwargs):
        seen.append(ids_of(x))
        return target(encoder, x, *args, **kwargs)

    monkeypatch.setattr(loop, "target_representations", record)
    return seen


def ids_by_step(per_rank: list[list[list[int]]], accum: int) -> list[list[int]]:
    """Sample ids of each optimiser step, from each rank's micro batches in order."""
    steps = len(per_rank[0]) // accum
    assert all(len(r) == steps * accum for r in per_rank), [len(r) for r in per_rank]
    return [[i for r in per_rank for mb in r[s * accum:(s + 1) * accum] for i in mb] for s in range(steps)]


def read_subprocess_ids(folder: Path, ntasks: int, command: int = 0) -> list[list[list[int]]]:
    return [[[int(v) for v in line.split()] for line in (folder / f"ids{command}_rank{r}.txt").read_text().splitlines()]
            for r in range(ntasks)]


def assert_epoch_once(steps: list[list[int]]) -> None:
    """The first epoch's worth of trained samples is every sample exactly once; so is the second."""
    flat = [i for step in steps for i in step]
    assert len(flat) >= NUM_SAMPLES, len(flat)
    first = flat[:NUM_SAMPLES]
    repeated = sorted({i for i in first if first.count(i) > 1})
    assert not repeated and sorted(first) == list(range(NUM_SAMPLES)), \
        f"first epoch: repeated {repeated}, missing {sorted(set(range(NUM_SAMPLES)) - set(first))}"


# --------------------------------------------------------------------------- srun-style launch


def free_slurm_job_id() -> int:
    """A Slurm job id whose derived rendezvous port (jepa.launch.slurm_port) is free on this host."""
    from jepa.launch import SLURM_PORT_BASE, SLURM_PORT_SPAN

    for _ in range(200):
        port = SLURM_PORT_BASE + random.randrange(SLURM_PORT_SPAN)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return random.randrange(1, 90) * SLURM_PORT_SPAN + port - SLURM_PORT_BASE
    raise RuntimeError("no free port for the rendezvous")


def slurm_task_env(rank: int, ntasks: int, job_id: int, **extra: str) -> dict[str, str]:
    """The environment srun gives task ``rank`` of a one-node step (launcher variables of the test's own process removed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "PMI"))
           and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(SLURM_JOB_ID=str(job_id), SLURM_JOBID=str(job_id), SLURM_STEP_ID="0", SLURM_PROCID=str(rank),
               SLURM_LOCALID=str(rank), SLURM_NODEID="0", SLURM_NTASKS=str(ntasks), SLURM_STEP_NUM_TASKS=str(ntasks),
               SLURM_NNODES="1", SLURM_NODELIST="localhost", SLURM_JOB_NODELIST="localhost",
               SLURM_STEP_NODELIST="localhost", **extra)
    return env


def srun(ntasks: int, args: list[str], *, job_id: int | None = None, timeout: float = 300, **extra: str) -> list[str]:
    """Run ``python ARGS`` as ``ntasks`` srun-style tasks; returns their outputs (fails the test if any fails)."""
    job_id = job_id or free_slurm_job_id()
    procs = [subprocess.Popen([sys.executable, *args], env=slurm_task_env(r, ntasks, job_id, **extra),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(ntasks)]
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs):
        failed = [p for p in procs if p.poll() not in (None, 0)]
        if failed or time.monotonic() > deadline:  # a task died: the others would wait for it at a collective
            for p in procs:
                p.kill()
            break
        time.sleep(0.2)
    outs = [p.communicate()[0] for p in procs]
    for r, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"task {r} exited {p.returncode}:\n" + "\n".join(o[-3000:] for o in outs)
    return outs


# --------------------------------------------------------------------------- recipes


def _recipe_dict(run_dir: Path, source: str | Path, *overrides: str) -> dict:
    """The toy modality, ZeRO-2, fp32; ``source`` is a shard folder or "synthetic"."""
    from jepa.recipe import apply_overrides

    data = ({"source": "synthetic"} if source == "synthetic" else
            {"train_shards": str(source), "num_workers": 1, "shuffle_buffer": 8})
    raw = {
        "name": "resize", "run_dir": str(run_dir), "seed": 3,
        "modality": {"name": "toy"},
        "data": {**data, "samples_per_epoch": NUM_SAMPLES, "global_batch_size": 8},
        "optim": {"epochs": 4, "warmup_epochs": 0.2, "lr": 1e-2, "start_lr": 1e-3},  # 24 steps, 1 of warm-up
        "ema": {"momentum": 0.99, "final_momentum": 1.0},
        "engine": {"precision": "fp32", "zero_stage": 2},
        "log": {"every_steps": 1},
        "checkpoint": {"every_steps": 1000, "keep_last": 2},
    }
    return apply_overrides(raw, list(overrides))


def _recipe(run_dir: Path, source: str | Path, *overrides: str):
    return parse_recipe(_recipe_dict(run_dir, source, *overrides), "resize test recipe")


def _recipe_file(run_dir: Path, source: str | Path, *overrides: str) -> Path:
    path = run_dir.with_name(run_dir.name + ".yaml")
    path.write_text(yaml.safe_dump(_recipe_dict(run_dir, source, *overrides)))
    return path


def _losses(run_dir: Path) -> list[float]:
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, len(records) + 1)), "metrics.jsonl has gaps or repeats"
    return [r["loss"] for r in records]


def _meta(run_dir: Path, step: int) -> tuple[int, int, int]:
    meta = json.loads((run_dir / "checkpoints" / f"step_{step:06d}" / "meta.json").read_text())
    return meta["world_size"], meta["micro_batch_size"], meta["grad_accum_steps"]


# Synthetic data: every split of the global batch into ranks x accumulation steps with the same
# micro batch sees the same batches and masks, so a resized run follows the uninterrupted one up to
# float rounding (gradients averaged over 2 ranks or accumulated on 1; measured on CPU in fp32: 0,
# i.e. bitwise equal, in these tests; 3e-8 in tests/test_slurm.py's). Anything lost in the
# resharding shows far above it: a restart from scratch is 2.7e-3 off, DeepSpeed's ZeRO-3 universal
# load without the engine's fixes (shared Adam step, param-group settings) 2e-4 at the next step.
SYNTHETIC_RTOL = 1e-5


def _check_continues(resumed: list[float], reference: list[float]) -> float:
    """The resized run's losses follow the uninterrupted run's within SYNTHETIC_RTOL at every step
    (returns the worst relative deviation), while a restart from scratch (the reference's own first
    steps, logged again after the checkpoint) would not."""
    assert len(resumed) == len(reference), (resumed, reference)
    dev = max(abs(a - b) / abs(b) for a, b in zip(resumed, reference))
    assert dev <= SYNTHETIC_RTOL, (dev, resumed, reference)
    restart = min(abs(reference[s - K] - reference[s]) / reference[s] for s in range(K, len(reference)))
    assert restart > 100 * SYNTHETIC_RTOL, ("the check would not notice a restart from scratch", restart, reference)
    return dev


# --------------------------------------------------------------------------- the must-show runs


K, N_STEPS = 3, 7  # checkpoint after step 3 (24 of 48 samples), continue past the end of the epoch (6 steps)


@pytest.fixture(scope="module")
def id_shards(tmp_path_factory) -> Path:
    return write_id_shards(tmp_path_factory.mktemp("ids") / "shards")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[float]:
    """Losses of an uninterrupted 1-process run on synthetic data (micro batch 4, accumulation 2)."""
    run_dir = tmp_path_factory.mktemp("reference") / "synthetic"
    train(_recipe(run_dir, "synthetic", "data.micro_batch_size=4", f"max_steps={N_STEPS}"))
    return _losses(run_dir)


def test_two_processes_checkpoint_resumes_on_one(tmp_path, id_shards, reference, monkeypatch):
    """2 srun-style tasks (micro batch 4, accumulation 1, ZeRO-2) train 5 steps on shards and on synthetic
    data; 1 process resumes both (micro batch 4 kept, accumulation 2) and trains past the epoch's end."""
    shards_run, synth_run = tmp_path / "shards", tmp_path / "synthetic"
    (tmp_path / "runner.py").write_text(RUNNER)
    srun(2, [str(tmp_path / "runner.py"), "train", str(_recipe_file(shards_run, id_shards, f"max_steps={K}")),
             "--then", "train", str(_recipe_file(synth_run, "synthetic", f"max_steps={K}"))], JEPA_TEST_IDS=str(tmp_path))
    assert _meta(shards_run, K) == _meta(synth_run, K) == (2, 4, 1)
    before = ids_by_step(read_subprocess_ids(tmp_path, 2), accum=1)

    after = record_ids_in_process(monkeypatch)
    assert train(_recipe(shards_run, id_shards, f"max_steps={N_STEPS}")).step == N_STEPS
    assert train(_recipe(synth_run, "synthetic", f"max_steps={N_STEPS}")).step == N_STEPS
    assert _meta(shards_run, N_STEPS) == (1, 4, 2)
    assert not list((shards_run / "checkpoints").glob("*.tmp")), "the universal-checkpoint scratch directory is removed"

    steps = before + ids_by_step([after[:2 * (N_STEPS - K)]], accum=2)
    assert len(steps) == N_STEPS and all(len(s) == 8 for s in steps)
    assert_epoch_once(steps)
    _check_continues(_losses(synth_run), reference)


def test_one_process_checkpoint_resumes_on_two(tmp_path, id_shards, reference, monkeypatch):
    """1 process (micro batch 4, accumulation 2, ZeRO-2) trains 5 steps on shards and on synthetic data;
    2 srun-style tasks resume both (micro batch 4 kept, accumulation 1) and train past the epoch's end."""
    shards_run, synth_run = tmp_path / "shards", tmp_path / "synthetic"
    before = record_ids_in_process(monkeypatch)
    train(_recipe(shards_run, id_shards, "engine.grad_accum_steps=2", f"max_steps={K}"))
    train(_recipe(synth_run, "synthetic", "engine.grad_accum_steps=2", f"max_steps={K}"))
    assert _meta(shards_run, K) == (1, 4, 2)
    assert _losses(synth_run) == reference[:K]  # the reference's own split and process count: bitwise

    (tmp_path / "runner.py").write_text(RUNNER)
    srun(2, [str(tmp_path / "runner.py"),
             "train", str(_recipe_file(shards_run, id_shards, "engine.grad_accum_steps=2", f"max_steps={N_STEPS}")),
             "--then", "train", str(_recipe_file(synth_run, "synthetic", "engine.grad_accum_steps=2", f"max_steps={N_STEPS}"))],
         JEPA_TEST_IDS=str(tmp_path))
    assert _meta(shards_run, N_STEPS) == _meta(synth_run, N_STEPS) == (2, 4, 1)

    steps = ids_by_step([before[:2 * K]], accum=2) + ids_by_step(read_subprocess_ids(tmp_path, 2), accum=1)
    assert len(steps) == N_STEPS and all(len(s) == 8 for s in steps)
    assert_epoch_once(steps)
    _check_continues(_losses(synth_run), reference)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 1, 3])
def test_every_zero_stage_resumes_on_another_world_size(tmp_path, reference, stage):
    """ZeRO-0 (DeepSpeed's state is not sharded), ZeRO-1 and ZeRO-3 (universal checkpoint) as the default
    tests do ZeRO-2: 2 srun-style tasks train 3 steps, 1 process resumes; the curve follows the uninterrupted run."""
    run = tmp_path / "synthetic"
    srun(2, ["-m", "jepa.cli", "train", str(_recipe_file(run, "synthetic", f"engine.zero_stage={stage}", f"max_steps={K}"))])
    train(_recipe(run, "synthetic", f"engine.zero_stage={stage}", f"max_steps={N_STEPS}"))
    assert _meta(run, N_STEPS) == (1, 4, 2)
    _check_continues(_losses(run), reference)


# --------------------------------------------------------------------------- re-dealing, without training


def test_pieces_select_split_and_round_trip():
    from jepa.data.pieces import Piece

    p = Piece(3, ((2, 5), (7, None)))
    assert [p.index(j) for j in range(6)] == [2, 3, 4, 7, 8, 9]
    assert p.size(10) == 6 and p.size(None) is None and p.open
    assert p.head(4) == Piece(3, ((2, 5), (7, 8))) and p.drop(4) == Piece(3, ((8, None),))
    assert p.subset([0, 2, 3]) == Piece(3, ((2, 3), (4, 5), (7, 8)))
    assert list(p.select(range(12))) == [2, 3, 4, 7, 8, 9, 10, 11]
    assert list(Piece(0, ((1, 3),)).select(iter(range(100)))) == [1, 2]
    assert Piece.from_state(p.to_state()) == p and Piece.whole(5).is_whole
    assert Piece.of_indices(1, [4, 2, 3, 9]) == Piece(1, ((2, 5), (9, 10))) and Piece.of_indices(1, []) is None


def test_carry_shares_feed_the_round_robin_in_order():
    # 2 ranks, 2 workers, micro 4: 24 samples -> 12 per rank = 3 batches: worker 0 gets batches 0 and 2
    assert carry_shares(24, 2, 2, 4) == [8, 4, 8, 4]
    assert carry_shares(24, 2, 2, 4, first_worker=1) == [4, 8, 4, 8]
    assert carry_shares(10, 1, 3, 4) == [4, 4, 2]  # the partial batch goes to the worker whose turn it is
    assert sum(carry_shares(1001, 3, 4, 8)) == 1001


def _loader_cfg(shards: Path, workers: int) -> DataConfig:
    return DataConfig(train_shards=str(shards), samples_per_epoch=NUM_SAMPLES, global_batch_size=8,
                      num_workers=workers, shuffle_buffer=8)


def _consume(shards: Path, world: int, workers: int, steps: int, states=None, micro: int = 4):
    """Sample ids of ``steps`` optimiser steps of ``world`` rank loaders, and their states afterwards."""
    mod = ToyModality(ToyConfig())
    loaders = [ShardTrainLoader(expand_shards(str(shards)), _loader_cfg(shards, workers), mod, MaskBatches(mod, mod.build_mask_sampler()),
                                seed=3, rank=r, world_size=world, micro_batch_size=micro,
                                state=None if states is None else states[r]) for r in range(world)]
    batches = [iter(loader) for loader in loaders]
    seen = [[i for _ in range(8 // (world * micro)) for b in batches for i in ids_of(next(b).inputs)]
            for _ in range(steps)]
    out = [loader.state_dict() for loader in loaders]
    for loader, it in zip(loaders, batches):
        loader.close()
        it.close()
    return seen, out


@pytest.mark.parametrize("old, new", [((2, 2), (1, 2)), ((1, 2), (2, 0)), ((2, 0), (4, 1)), ((1, 1), (2, 2))])
def test_redealt_positions_lose_and_repeat_no_sample_of_the_epoch(id_shards, old, new):
    """Loaders of N ranks x W workers stop after 2 steps (16 of 48 samples, some in shuffle buffers, one shard
    half read); their states re-dealt to M x W' loaders, which hand out the rest of the epoch first."""
    (n, w), (m, w2) = old, new
    micro = 2 if 4 in (n, m) else 4
    first, states = _consume(id_shards, n, w, 2, micro=micro)
    dealt = [redeal(states, _loader_cfg(id_shards, w2), seed=3, rank=r, world_size=m, micro_batch_size=micro)
             for r in range(m)]
    assert {d["from_epoch"] for d in dealt} == {1} and all(d["world_size"] == m for d in dealt)
    rest, _ = _consume(id_shards, m, w2, NUM_SAMPLES // 8 + 2, dealt, micro=micro)
    assert_epoch_once(first + rest)


def test_redealing_twice_within_the_carry_over(id_shards):
    """2 x 2 -> 1 x 1 after 1 step -> 2 x 1 after 2 more steps (still in the carry-over) -> the epoch once."""
    a, states = _consume(id_shards, 2, 2, 1)
    states = [redeal(states, _loader_cfg(id_shards, 0), seed=3, rank=0, world_size=1, micro_batch_size=4)]
    b, states = _consume(id_shards, 1, 0, 2, states)
    assert states[0]["carry"] and states[0]["workers"][0]["epoch"] < states[0]["from_epoch"]
    states = [redeal(states, _loader_cfg(id_shards, 1), seed=3, rank=r, world_size=2, micro_batch_size=4) for r in range(2)]
    c, _ = _consume(id_shards, 2, 1, NUM_SAMPLES // 8, states)
    assert_epoch_once(a + b + c)


def test_redealt_state_resumes_exactly_on_the_same_world(id_shards):
    """A re-dealt loader checkpointed mid carry-over resumes bitwise on the same number of ranks."""
    _, states = _consume(id_shards, 2, 1, 2)
    dealt = [redeal(states, _loader_cfg(id_shards, 2), seed=3, rank=0, world_size=1, micro_batch_size=4)]
    straight, _ = _consume(id_shards, 1, 2, 5, dealt)
    part, mid = _consume(id_shards, 1, 2, 2, dealt)
    rest, _ = _consume(id_shards, 1, 2, 3, mid)
    assert part + rest == straight


def test_redeal_refuses_changed_data_settings(id_shards):
    _, states = _consume(id_shards, 2, 0, 1)
    cfg = DataConfig(train_shards=str(id_shards), samples_per_epoch=NUM_SAMPLES, global_batch_size=8, num_workers=0,
                     shuffle_buffer=16)
    with pytest.raises(ValueError, match="shuffle_buffer was 8 when the checkpoint was written, now 16; restore "
                                         "data.shuffle_buffer"):
        redeal(states, cfg, seed=3, rank=0, world_size=1, micro_batch_size=4)
    with pytest.raises(ValueError, match="micro_batch_size was 4 .* now 8"):
        redeal(states, _loader_cfg(id_shards, 0), seed=3, rank=0, world_size=1, micro_batch_size=8)


def test_synthetic_position_is_redealt_by_samples():
    state = {"version": 1, "source": "synthetic", "seed": 0, "global_batch": 8, "step": 6}  # 2 ranks x 4, 6 micro-steps
    assert redeal([state, state], DataConfig(source="synthetic"), seed=0, rank=0, world_size=1,
                  micro_batch_size=4)["step"] == 12
    with pytest.raises(ValueError, match="not a whole number of micro-steps"):
        redeal([state], DataConfig(source="synthetic"), seed=0, rank=0, world_size=5, micro_batch_size=4)


# --------------------------------------------------------------------------- refusals


def test_micro_batch_that_cannot_be_kept_is_refused_with_the_numbers(tmp_path, monkeypatch):
    """A checkpoint of 1 process with micro batch 8 cannot go on 2 processes (8 / (2 x 8) steps); refused
    before anything is built or written."""
    run = _recipe(tmp_path / "run", "synthetic", "engine.zero_stage=0", "max_steps=1")
    train(run)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"written by 1 processes with a micro batch of 8; on 2 processes that micro "
                                         r"batch cannot be kept: data.global_batch_size=8 is not a multiple of 2 x 8 = "
                                         r"16. Resume on a number of processes that divides 1 \(1\)"):
        checkpoint.resume_batch_split(run, "auto")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert checkpoint.resume_batch_split(run, "auto") == (run.engine, None)


def test_changed_micro_batch_is_refused_on_the_same_world(tmp_path):
    train(_recipe(tmp_path / "run", "synthetic", "engine.zero_stage=0", "max_steps=1"))
    with pytest.raises(ValueError, match=r"written with a micro batch of 8 per process \(1 processes x 8 x 1 accumulation "
                                         r"steps\); this run's is 4 \(1 x 4 x 2\).*Set data.micro_batch_size=8"):
        train(_recipe(tmp_path / "run", "synthetic", "engine.zero_stage=0", "data.micro_batch_size=4", "max_steps=2"))
    assert len(_losses(tmp_path / "run")) == 1, "nothing trained after the refusal"


class _Payload:
    """Unpickling this runs ``touch MARKER`` (what a crafted checkpoint does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("victim", ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"])
def test_resharding_never_unpickles_unsafely(tmp_path, victim):
    """DeepSpeed's universal-checkpoint code loads with weights_only=False itself; under the engine it
    cannot: a crafted file in the ZeRO state is refused, its code does not run, the scratch dir is removed."""
    from jepa.engine import Engine
    from jepa.recipe import EngineConfig, OptimConfig
    from jepa.objectives.ijepa import IJEPAConfig, IJEPAObjective
    from jepa.weights import safe_load

    train(_recipe(tmp_path / "run", "synthetic", "max_steps=1"))
    ckpt = tmp_path / "run" / "checkpoints" / "step_000001"
    marker = tmp_path / "ran"
    torch.save({"state": _Payload(marker)}, ckpt / "deepspeed" / victim)
    modality = ToyModality(ToyConfig())
    objective = IJEPAObjective(IJEPAConfig(), modality, total_steps=10)
    model = objective.build_model()
    engine = Engine(model, frozen=objective.build_frozen(model),
                    engine_cfg=EngineConfig(precision="fp32", zero_stage=2), optim_cfg=OptimConfig(),
                    global_batch_size=8, requested_micro_batch=4)
    try:
        target = safe_load(ckpt / "models.pt", "models.pt")["target_encoder"]
        scratch = ckpt.with_name(ckpt.name + checkpoint.RESHARD_SUFFIX)
        with pytest.raises(ValueError, match="could not convert this ZeRO state .*UnpicklingError"):
            engine.load_state(ckpt, {"target_encoder": target}, reshard_dir=scratch)
    finally:
        engine.close()
    assert not marker.exists(), "the pickle's code ran"
    assert not scratch.exists()


@pytest.mark.parametrize("stage", [2, 3])
def test_resharding_loads_every_file_through_the_weights_only_loader(tmp_path, monkeypatch, stage):
    """No DeepSpeed code calls ``torch.load`` itself while a ZeRO state is converted to a universal
    checkpoint and loaded from it: every file goes through ``jepa.engine.safe_load`` (a DeepSpeed
    upgrade that loads from a module not in ``UNIVERSAL_CHECKPOINT_MODULES`` fails here)."""
    import sys as _sys

    from jepa.engine import Engine
    from jepa.recipe import EngineConfig, OptimConfig
    from jepa.objectives.ijepa import IJEPAConfig, IJEPAObjective
    from jepa.weights import safe_load

    train(_recipe(tmp_path / "run", "synthetic", f"engine.zero_stage={stage}", "max_steps=1"))
    ckpt = tmp_path / "run" / "checkpoints" / "step_000001"
    objective = IJEPAObjective(IJEPAConfig(), ToyModality(ToyConfig()), total_steps=10)
    model = objective.build_model()
    engine = Engine(model, frozen=objective.build_frozen(model),
                    engine_cfg=EngineConfig(precision="fp32", zero_stage=stage), optim_cfg=OptimConfig(),
                    global_batch_size=8, requested_micro_batch=4)
    target = safe_load(ckpt / "models.pt", "models.pt")["target_encoder"]
    callers, load = [], torch.load

    def recording_load(*args, **kwargs):
        callers.append(_sys._getframe(1).f_globals["__name__"])
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    try:
        engine.load_state(ckpt, {"target_encoder": target}, reshard_dir=ckpt.with_name(ckpt.name + checkpoint.RESHARD_SUFFIX))
    finally:
        monkeypatch.undo()
        engine.close()
    assert len(callers) > 10 and set(callers) == {"jepa.engine.safe_load"}, sorted(set(callers))
