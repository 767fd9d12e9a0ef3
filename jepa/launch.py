"""Which launcher started this process: rank, world size, local rank and the rendezvous.

The variables are read in this order (the first launcher found wins):

1. ``torchrun``, the ``deepspeed`` launcher, torch elastic: ``RANK``, ``WORLD_SIZE``,
   ``LOCAL_RANK`` (and their ``MASTER_ADDR`` / ``MASTER_PORT``). Also ``srun torchrun ...``.
2. Open MPI (``mpirun``): ``OMPI_COMM_WORLD_RANK`` / ``_SIZE`` / ``_LOCAL_RANK``; DeepSpeed's MPI
   discovery sets up the rendezvous.
3. Slurm's ``srun`` (one task per GPU): ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` (else
   ``SLURM_NTASKS``), ``SLURM_LOCALID``. The rendezvous host is the first node of the step
   (``SLURM_STEP_NODELIST``, else ``SLURM_JOB_NODELIST`` / ``SLURM_NODELIST``), expanded with
   ``scontrol show hostnames`` when it is on the PATH, else by :func:`expand_nodelist`; the port is
   :func:`slurm_port` of ``SLURM_JOB_ID``. ``MASTER_ADDR`` / ``MASTER_PORT`` set in the
   environment take precedence. A task of ``srun`` is told apart from the batch script (which
   also sees ``SLURM_PROCID=0`` and the job's ``SLURM_NTASKS``) by ``SLURM_STEP_ID``, which only
   ``srun`` sets; ``python -m jepa.cli train`` run by the batch script itself trains alone, with a
   warning.
4. None of these: a world of one on this host.

Nothing here imports DeepSpeed or touches the process group; :mod:`jepa.engine` turns a
:class:`Launch` into environment variables for the duration of DeepSpeed's setup.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from typing import Literal, Mapping

from jepa.errors import ConfigError

log = logging.getLogger(__name__)

#: Rendezvous ports derived from Slurm job ids lie in [SLURM_PORT_BASE, SLURM_PORT_BASE + SLURM_PORT_SPAN),
#: below Linux's ephemeral range (32768-60999), so they do not collide with outgoing connections.
SLURM_PORT_BASE = 20000
SLURM_PORT_SPAN = 10000


@dataclass(frozen=True)
class Launch:
    """How this process was started.

    Attributes:
        source: ``"torchrun"`` (any launcher setting RANK), ``"mpi"``, ``"slurm"`` or ``"none"``.
        rank, world_size, local_rank: this process's place in the world.
        env: the launcher variables DeepSpeed reads (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
            MASTER_PORT) that the environment does not hold yet: set for Slurm and ``"none"``
            (``MASTER_PORT`` of ``"none"`` is picked when the world is created), empty otherwise.
    """

    source: Literal["torchrun", "mpi", "slurm", "none"]
    rank: int
    world_size: int
    local_rank: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect(environ: Mapping[str, str] | None = None) -> Launch:
    """The launcher of this process (see the module docstring).

    Raises:
        ValueError: a Slurm variable that must be a number is not one, or names an impossible rank.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env:
        return Launch("torchrun", int(env["RANK"]), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0")))
    if "OMPI_COMM_WORLD_RANK" in env:
        return Launch("mpi", int(env["OMPI_COMM_WORLD_RANK"]), int(env.get("OMPI_COMM_WORLD_SIZE", "1")),
                      int(env.get("OMPI_COMM_WORLD_LOCAL_RANK", "0")))
    if "SLURM_PROCID" in env and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env):
        return _slurm(env)
    if int(env.get("SLURM_NTASKS", "1") or "1") > 1:
        log.warning("this process runs in a Slurm allocation of %s tasks but was not started by srun (no SLURM_STEP_ID), "
                    "so it trains alone; start every task with `srun python -m jepa.cli train ...` "
                    "(examples/slurm/train.sbatch)", env["SLURM_NTASKS"])
    return Launch("none", 0, 1, 0, {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"})


def _slurm_int(env: Mapping[str, str], *names: str) -> int:
    for name in names:
        if name in env:
            try:
                return int(env[name])
            except ValueError:
                raise ConfigError(f"{name}={env[name]!r} is not a number; is this process started by srun?") from None
    raise ConfigError(f"{' / '.join(names)} is not set, but SLURM_PROCID is; start the tasks with srun")


def _slurm(env: Mapping[str, str]) -> Launch:
    rank = _slurm_int(env, "SLURM_PROCID")
    world = _slurm_int(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")
    local_rank = _slurm_int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
    if not 0 <= rank < world:
        raise ConfigError(f"SLURM_PROCID={rank} is not below the step's {world} tasks (SLURM_STEP_NUM_TASKS / SLURM_NTASKS)")
    addr = env.get("MASTER_ADDR")
    if not addr:
        nodelist = next((env[k] for k in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST") if env.get(k)), None)
        if nodelist is None:
            raise ConfigError("srun task without SLURM_STEP_NODELIST / SLURM_JOB_NODELIST / SLURM_NODELIST: cannot tell "
                             "the rendezvous host; set MASTER_ADDR to the host of task 0")
        addr = first_host(nodelist)
    port = env.get("MASTER_PORT") or str(slurm_port(env.get("SLURM_JOB_ID", "0")))
    return Launch("slurm", rank, world, local_rank, {"RANK": str(rank), "WORLD_SIZE": str(world),
                                                     "LOCAL_RANK": str(local_rank), "MASTER_ADDR": addr,
                                                     "MASTER_PORT": port})


def slurm_port(job_id: str) -> int:
    """The rendezvous port of a Slurm job: the same for every task of the job and for its requeued
    starts, and different for jobs whose ids differ by less than :data:`SLURM_PORT_SPAN`."""
    digits = re.sub(r"\D", "", job_id) or "0"  # "123_4" (array task) -> 1234
    return SLURM_PORT_BASE + int(digits) % SLURM_PORT_SPAN


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list (``scontrol show hostnames`` when available, else :func:`expand_nodelist`)."""
    scontrol = shutil.which("scontrol")
    if scontrol:
        try:
            out = subprocess.run([scontrol, "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30)
            hosts = out.stdout.split()
            if out.returncode == 0 and hosts:
                return hosts[0]
        except (OSError, subprocess.TimeoutExpired):
            pass
    hosts = expand_nodelist(nodelist)
    if not hosts:
        raise ConfigError(f"empty Slurm node list {nodelist!r}; set MASTER_ADDR to the host of task 0")
    return hosts[0]


_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def expand_nodelist(nodelist: str) -> list[str]:
    """Hosts of a Slurm node list in its compressed form, in order.

    Handles what Slurm writes: ``node1,node2``, ``node[01-03,07]``, several bracket groups
    (``rack[1-2]-gpu[1-2]``), suffixes after a group (``n[1-2]-ib``) and mixtures
    (``a[1-2],b3``). Leading zeros are kept (``node[08-10]`` is ``node08 node09 node10``).

    Raises:
        ValueError: unbalanced brackets or a malformed range.
    """
    hosts: list[str] = []
    for item in _split_top_level(nodelist.strip()):
        hosts.extend(_expand_item(item))
    return hosts


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"unbalanced ']' in Slurm node list {text!r}")
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth:
        raise ConfigError(f"unbalanced '[' in Slurm node list {text!r}")
    items.append(text[start:])
    return [item for item in items if item]


def _expand_item(item: str) -> list[str]:
    open_at = item.find("[")
    if open_at < 0:
        return [item]
    close_at = item.index("]", open_at)
    prefix, body, rest = item[:open_at], item[open_at + 1:close_at], item[close_at + 1:]
    values: list[str] = []
    for part in body.split(","):
        match = _RANGE.match(part.strip())
        if not match:
            raise ConfigError(f"malformed range {part!r} in Slurm node list entry {item!r}")
        lo, hi = match.group(1), match.group(2)
        if hi is None:
            values.append(lo)
            continue
        if int(hi) < int(lo):
            raise ConfigError(f"descending range {part!r} in Slurm node list entry {item!r}")
        width = len(lo)
        values.extend(str(n).zfill(width) for n in range(int(lo), int(hi) + 1))
    return [prefix + v + tail for v in values for tail in _expand_item(rest)] if rest else [prefix + v for v in values]


def free_port() -> int:
    """A free TCP port on this host (the rendezvous of a world of one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
