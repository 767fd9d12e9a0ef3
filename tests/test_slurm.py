"""Slurm: ranks and the rendezvous from SLURM_* (jepa.launch), and the sbatch example
(examples/slurm/train.sbatch): requeue on the time-limit signal, resume when started again.

No Slurm here: ``srun`` and ``scontrol`` are stand-ins on the PATH. The fake srun starts
SLURM_NTASKS local processes with the variables srun gives its tasks (SLURM_PROCID, SLURM_LOCALID,
SLURM_STEP_ID, ...; no RANK / WORLD_SIZE / MASTER_*) and passes SIGTERM on to them, as srun does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from jepa import launch
from jepa.launch import Launch, detect, expand_nodelist, first_host, slurm_port
from jepa.monitor import read_metrics
from jepa.recipe import apply_overrides, parse_recipe
from jepa.train import train

from test_resume_resize import SYNTHETIC_RTOL, free_slurm_job_id

SBATCH = Path(__file__).resolve().parents[1] / "examples" / "slurm" / "train.sbatch"


# --------------------------------------------------------------------------- jepa.launch


@pytest.mark.parametrize("nodelist, hosts", [
    ("node1", ["node1"]),
    ("node1,node2", ["node1", "node2"]),
    ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
    ("node[08-10]", ["node08", "node09", "node10"]),
    ("gpu-a[1-2],gpu-b3", ["gpu-a1", "gpu-a2", "gpu-b3"]),
    ("n[1-2]-ib", ["n1-ib", "n2-ib"]),
    ("rack[1-2]-gpu[1-2]", ["rack1-gpu1", "rack1-gpu2", "rack2-gpu1", "rack2-gpu2"]),
    ("a[1,3],b[5-6],c", ["a1", "a3", "b5", "b6", "c"]),
])
def test_expand_nodelist_handles_slurms_compressed_forms(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["node[1-2", "node1-2]", "node[a-b]", "node[3-1]"])
def test_expand_nodelist_refuses_malformed_lists(bad):
    with pytest.raises(ValueError, match="Slurm node list"):
        expand_nodelist(bad)


def _srun_task(rank: int = 1, ntasks: int = 4, **extra: str) -> dict[str, str]:
    return {"SLURM_JOB_ID": "123456", "SLURM_STEP_ID": "0", "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank % 2),
            "SLURM_NTASKS": str(ntasks), "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_STEP_NODELIST": "gpu[07-08]", **extra}


def test_detect_reads_an_srun_task(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol: the built-in parser
    got = detect(_srun_task())
    assert got == Launch("slurm", 1, 4, 1, {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu07",
                                             "MASTER_PORT": str(slurm_port("123456"))})
    assert slurm_port("123456") == launch.SLURM_PORT_BASE + 123456 % launch.SLURM_PORT_SPAN
    # the step's own task count and node list win; MASTER_ADDR / MASTER_PORT set by the user win over both
    env = _srun_task(SLURM_STEP_NUM_TASKS="2", SLURM_STEP_NODELIST="gpu08", SLURM_JOB_NODELIST="gpu[01-08]")
    assert (detect(env).world_size, detect(env).env["MASTER_ADDR"]) == (2, "gpu08")
    pinned = detect(_srun_task(MASTER_ADDR="10.0.0.1", MASTER_PORT="29999")).env
    assert (pinned["MASTER_ADDR"], pinned["MASTER_PORT"]) == ("10.0.0.1", "29999")


def test_detect_prefers_torchrun_and_mpi_and_tells_the_batch_script_apart(caplog):
    # srun torchrun ...: torchrun's variables win; mpirun inside an allocation: MPI's
    assert detect({**_srun_task(), "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == Launch("torchrun", 5, 8, 1)
    assert detect({**_srun_task(), "OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "3"}).source == "mpi"
    # the batch script itself (SLURM_PROCID=0 and the job's SLURM_NTASKS, but no step): a world of one, with a warning
    batch = {k: v for k, v in _srun_task(rank=0).items() if k != "SLURM_STEP_ID"}
    assert (detect(batch).source, detect(batch).world_size) == ("none", 1)
    assert "not started by srun" in caplog.text
    assert detect({}).source == "none" and detect({}).env["WORLD_SIZE"] == "1"
    with pytest.raises(ValueError, match="SLURM_PROCID=4 is not below the step's 4 tasks"):
        detect(_srun_task(rank=4))
    with pytest.raises(ValueError, match="SLURM_NTASKS='x' is not a number"):
        detect(_srun_task(SLURM_NTASKS="x"))


def test_first_host_uses_scontrol_when_there_is_one(tmp_path, monkeypatch):
    fake = tmp_path / "scontrol"
    fake.write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && printf "hostA\\nhostB\\n"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert first_host("whatever[1-2]") == "hostA"
    monkeypatch.setenv("PATH", "/nonexistent")
    assert first_host("node[3-4]") == "node3"


# --------------------------------------------------------------------------- the sbatch example

FAKE_SRUN = textwrap.dedent("""\
    #!{python}
    # srun's stand-in: SLURM_NTASKS tasks of the command with srun's task variables; SIGTERM is passed on.
    import os, signal, subprocess, sys
    args = sys.argv[1:]
    while args and args[0].startswith("-"):
        args.pop(0)
    n = int(os.environ["SLURM_NTASKS"])
    with open(os.environ["FAKE_SLURM_LOG"], "a") as log:
        log.write("srun " + " ".join(args) + "\\n")
    tasks = [subprocess.Popen(args, env=dict(os.environ, SLURM_PROCID=str(r), SLURM_LOCALID=str(r), SLURM_STEP_ID="0",
                                            SLURM_STEP_NUM_TASKS=str(n),
                                            SLURM_STEP_NODELIST=os.environ["SLURM_JOB_NODELIST"])) for r in range(n)]
    def forward(signum, frame):
        for t in tasks:
            if t.poll() is None:
                t.send_signal(signum)
    signal.signal(signal.SIGTERM, forward)
    codes = [t.wait() for t in tasks]
    sys.exit(max(c if c >= 0 else 128 - c for c in codes))
""")
FAKE_SCONTROL = textwrap.dedent("""\
    #!/bin/sh
    # scontrol's stand-in: hostnames of a plain list; requeue is logged.
    case "$1" in
        show) echo "$3" | tr ',' '\\n' ;;
        requeue) echo "requeue $2" >> "$FAKE_SLURM_LOG" ;;
        *) exit 1 ;;
    esac
""")


def _fake_slurm(tmp_path: Path, ntasks: int, python: str, **extra: str) -> dict[str, str]:
    """Environment of the batch script of a one-node job of ``ntasks`` tasks, with the stand-ins on the PATH."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text(FAKE_SRUN.format(python=sys.executable))
    (bin_dir / "scontrol").write_text(FAKE_SCONTROL)
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "PMI"))
           and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    # the batch script's own view: SLURM_PROCID=0 and the job's task count, but no step
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", FAKE_SLURM_LOG=str(tmp_path / "slurm.log"),
               JEPA_PYTHON=python, SLURM_JOB_ID=str(free_slurm_job_id()), SLURM_NTASKS=str(ntasks), SLURM_PROCID="0",
               SLURM_LOCALID="0", SLURM_NNODES="1", SLURM_JOB_NODELIST="localhost", SLURM_NODELIST="localhost",
               **extra)
    return env


def _slurm_log(tmp_path: Path) -> list[str]:
    path = tmp_path / "slurm.log"
    return path.read_text().splitlines() if path.exists() else []


# A stand-in for `python -m jepa.cli train ...`: runs until SIGTERM (then "checkpoints" and exits 0),
# or exits at once with $FAKE_TRAIN_EXIT.
FAKE_TRAIN = textwrap.dedent("""\
    #!/bin/sh
    echo "task $SLURM_PROCID of $SLURM_STEP_NUM_TASKS started, pid $$" >> "$FAKE_SLURM_LOG"
    [ -n "$FAKE_TRAIN_EXIT" ] && exit "$FAKE_TRAIN_EXIT"
    trap 'echo "task $SLURM_PROCID checkpointed" >> "$FAKE_SLURM_LOG"; exit 0' TERM
    while :; do sleep 0.05; done
""")


def _start_sbatch(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(SBATCH), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _wait_until(condition, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the batch script exited ({proc.returncode}) before {what}:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("signum, requeued, slow_trap", [(signal.SIGUSR1, True, False), (signal.SIGTERM, False, False),
                                                         (signal.SIGUSR1, True, True), (signal.SIGTERM, False, True)])
def test_sbatch_requeues_after_the_checkpoint_on_the_time_limit_signal_only(tmp_path, signum, requeued, slow_trap):
    """USR1 (--signal=B:USR1@300, the time limit): SIGTERM to the tasks, they checkpoint, the job is requeued.
    TERM (scancel; Slurm signals the tasks itself): the script waits for them and does not requeue.
    ``slow_trap``: the script's trap handler takes a second (a slow ``date``), so the tasks have ended
    before ``wait`` returns from the signal: the exit status must still be the tasks' own (0), not 143."""
    fake = tmp_path / "fake_train"
    fake.write_text(FAKE_TRAIN)
    fake.chmod(0o755)
    env = _fake_slurm(tmp_path, 2, str(fake))
    if slow_trap:
        slow_date = tmp_path / "fakebin" / "date"
        slow_date.write_text(f"#!/bin/sh\nsleep 1\nexec {shutil.which('date')} \"$@\"\n")
        slow_date.chmod(0o755)
    proc = _start_sbatch(tmp_path, env, "recipe.yaml")
    _wait_until(lambda: sum("started" in line for line in _slurm_log(tmp_path)) == 2, proc, "both tasks started")
    proc.send_signal(signum)
    if signum == signal.SIGTERM:  # scancel also signals the tasks themselves
        for line in _slurm_log(tmp_path):
            if "started, pid" in line:
                os.kill(int(line.rsplit(" ", 1)[1]), signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    log = _slurm_log(tmp_path)
    assert log[0] == f"srun {fake} -m jepa.cli train recipe.yaml"
    assert sorted(line for line in log if "checkpointed" in line) == ["task 0 checkpointed", "task 1 checkpointed"]
    assert (f"requeue {env['SLURM_JOB_ID']}" in log) is requeued, log


def test_sbatch_does_not_requeue_a_failed_or_finished_run(tmp_path):
    fake = tmp_path / "fake_train"
    fake.write_text(FAKE_TRAIN)
    fake.chmod(0o755)
    for code in ("2", "0"):
        proc = _start_sbatch(tmp_path, _fake_slurm(tmp_path, 2, str(fake), FAKE_TRAIN_EXIT=code), "recipe.yaml")
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == int(code), out
    assert not [line for line in _slurm_log(tmp_path) if line.startswith("requeue")]


def _toy_recipe(run_dir: Path, *overrides: str) -> dict:
    raw = {"name": "slurm", "run_dir": str(run_dir), "modality": {"name": "toy"},
           "data": {"source": "synthetic", "global_batch_size": 8, "micro_batch_size": 4, "samples_per_epoch": 800},
           "optim": {"epochs": 20, "warmup_epochs": 0.05}, "ema": {"momentum": 0.9, "final_momentum": 1.0},
           "engine": {"precision": "fp32", "zero_stage": 2}, "log": {"every_steps": 1},
           "checkpoint": {"every_steps": 1000, "keep_last": 2}}
    return apply_overrides(raw, list(overrides))


@pytest.mark.slow
def test_sbatch_example_trains_is_requeued_and_resumes(tmp_path):
    """The sbatch example with 2 srun-style tasks: USR1 near the time limit -> both tasks checkpoint at the
    same step and exit 0 -> `scontrol requeue`; the requeued start (SLURM_RESTART_COUNT=1) resumes from that
    checkpoint. The losses follow an uninterrupted run's (1 process, same micro batch: the same batches)
    within SYNTHETIC_RTOL."""
    run_dir = tmp_path / "run"
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(_toy_recipe(run_dir)))
    env = _fake_slurm(tmp_path, 2, sys.executable)
    proc = _start_sbatch(tmp_path, env, str(recipe_file))
    _wait_until(lambda: len(read_metrics(run_dir)) >= 2, proc, "step 2", timeout=300)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert out.count("preempted (SIGTERM): checkpoint saved at step") == 1, out[-3000:]  # rank 0 only
    assert f"requeue {env['SLURM_JOB_ID']}" in _slurm_log(tmp_path)
    k = int((run_dir / "checkpoints" / "latest").read_text().strip().removeprefix("step_"))
    assert json.loads((run_dir / "checkpoints" / f"step_{k:06d}" / "meta.json").read_text())["world_size"] == 2

    requeued = dict(env, SLURM_RESTART_COUNT="1")
    proc = _start_sbatch(tmp_path, requeued, str(recipe_file), "--set", f"max_steps={k + 3}")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert f"finished at step {k + 3}" in out and out.count("finished at step") == 1, out[-3000:]
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, k + 4))

    reference = train(parse_recipe(_toy_recipe(tmp_path / "reference", f"max_steps={k + 3}"))).run_dir
    want = [r["loss"] for r in read_metrics(reference)]
    worst = max(abs(r["loss"] - w) / w for r, w in zip(records, want))
    assert len(want) == len(records) and worst <= SYNTHETIC_RTOL, (worst, [r["loss"] for r in records], want)
