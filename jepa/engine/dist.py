"""The process group: joining it, this process's place in it, and the collectives the run needs.

Under ``torchrun`` / the ``deepspeed`` launcher (also multi-node with a hostfile) or ``mpirun`` the
launcher's environment is used; under Slurm's ``srun`` the ranks and the rendezvous come from the
``SLURM_*`` variables (:mod:`jepa.launch`); a plain ``python`` process creates a world of one
itself (gloo on CPU, nccl on GPU) and keeps it for later engines in the same process.

Training builds no C++ extension: DeepSpeed's CPU shared-memory comm op, which it would
JIT-compile at every process-group setup, serves only its inference all-reduce and is left unbuilt
(:func:`_skip_shm_comm_op`); whatever else is built goes to a folder of the active Python
environment (:func:`use_environment_extensions_dir`), so two environments never share builds.
"""

from __future__ import annotations

import hashlib
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import deepspeed
import deepspeed.ops
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from torch import Tensor

from jepa.launch import detect as detect_launch, free_port

_LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the world and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@contextmanager
def launcher_env() -> Iterator[None]:
    """The variables a launcher would set, where no launcher set them (DeepSpeed reads them).

    Under ``srun`` (ranks from ``SLURM_*``) they are set for the rest of the process, as torchrun's
    would be (ZeRO-3 reads LOCAL_RANK while training). In a plain process (a world of one) they are
    set for the duration of DeepSpeed's setup and restored afterwards but LOCAL_RANK=0 (read while
    training), so that child processes do not take this world's rendezvous for theirs. torchrun's
    and MPI's own variables are used as they are.
    """
    launch = detect_launch()
    if launch.source == "slurm":
        os.environ.update(launch.env)
    if launch.source != "none":
        yield
        return
    saved = {k: os.environ.get(k) for k in _LAUNCHER_ENV if k != "LOCAL_RANK"}
    os.environ.update(launch.env, MASTER_PORT=str(free_port()))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def use_environment_extensions_dir() -> Path:
    """Point ``TORCH_EXTENSIONS_DIR`` at this Python environment's own folder, unless the user set it.

    torch builds C++ extensions (DeepSpeed's JIT ops) into ``~/.cache/torch_extensions/py311_cu130``
    by default, one folder for every environment of that Python and CUDA: two environments with
    another torch or ninja rebuild each other's ops every time they alternate (measured: tiny runs
    of 69-134 s instead of 6 s). ``sys.prefix/var/torch_extensions`` belongs to one environment; where
    the environment is read-only, a folder of the user's cache named for it. Set for the rest of the
    process, so the processes it starts build into the same folder.

    Returns:
        the folder builds go to.
    """
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    prefix = Path(sys.prefix).resolve()
    folder = prefix / "var" / "torch_extensions"
    if not os.access(next(p for p in (folder, *folder.parents) if p.exists()), os.W_OK):
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        folder = cache / "torch_extensions" / f"{prefix.name}-{hashlib.sha256(str(prefix).encode()).hexdigest()[:12]}"
    os.environ["TORCH_EXTENSIONS_DIR"] = str(folder)
    return folder


def _skip_shm_comm_op() -> None:
    """Keep DeepSpeed from JIT-compiling its CPU shared-memory comm op (``deepspeed_shm_comm``).

    DeepSpeed's ``TorchBackend`` (behind every ``deepspeed.init_distributed``, one process included)
    builds that op with the system C++ compiler and ninja whenever the accelerator offers a
    ``ShareMemCommBuilder`` (the CPU accelerator) and ``deepspeed.ops.__compatible_ops__`` lists it as
    compatible: where there is no compiler, training dies with a build traceback before its first
    step, and a cold build takes about a minute. The op serves only ``inference_all_reduce``
    (tensor-parallel inference); training's collectives are torch.distributed's (gloo on CPU), so
    the op is marked incompatible in that table, the one thing ``build_shm_op`` consults (DeepSpeed
    0.19 has no environment variable or config option for it), and is never built, for any number
    of processes (measured: same 2-process CPU step time with and without it). Must run before the
    first ``deepspeed.init_distributed`` of the process. A no-op on accelerators without the op (CUDA).
    """
    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


def init_distributed() -> DistInfo:
    """Join the launcher's process group, or create a world of one for a plain process.

    A world of one is kept for the life of the process (DeepSpeed caches its process groups, so
    a destroyed world cannot be created again); later engines in the same process reuse it.
    Call inside :func:`launcher_env`. Needs no C++ compiler (:func:`_skip_shm_comm_op`).
    """
    use_environment_extensions_dir()
    _skip_shm_comm_op()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        # before NCCL starts, so every rank talks from its own GPU (one visible GPU per task: srun --gpus-per-task)
        local_rank %= torch.cuda.device_count()
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        mpi = "OMPI_COMM_WORLD_RANK" in os.environ and "RANK" not in os.environ
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=mpi, verbose=False)
    else:
        deepspeed.init_distributed(dist_backend=dist.get_backend(), verbose=False)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    return DistInfo(rank, world, local_rank, device)


class Collectives:
    """The collectives of the training loop, checkpointing and evaluation, over every rank.

    Host-side values (preemption flags, errors, digests) are agreed on over a gloo group of their
    own: they never touch the GPU stream, and an asynchronous vote never interleaves with
    DeepSpeed's collectives. Creating it is itself collective (every rank, in the same order).

    Attributes:
        dist: this process's place in the world.
    """

    def __init__(self, info: DistInfo):
        self.dist = info
        self._host_group = dist.new_group(backend="gloo") if info.world_size > 1 else None

    def barrier(self) -> None:
        dist.barrier()

    def all_reduce_(self, tensor: Tensor, op: str = "sum") -> Tensor:
        """In-place all-reduce over every rank ('sum' or 'max'); a no-op in a world of one."""
        if self.dist.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return tensor

    def all_gather_object(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (a host-side collective over gloo)."""
        if self.dist.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.dist.world_size
        dist.all_gather_object(out, obj, group=self._host_group)
        return out

    def any_rank_async(self, flag: bool) -> Callable[[], bool]:
        """Start agreeing on ``flag`` (MAX over ranks over gloo) without waiting; the returned
        function waits for the result: True on every rank when ``flag`` was true on any rank."""
        if self.dist.world_size == 1:
            return lambda: flag
        t = torch.tensor([int(flag)])
        work = dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._host_group, async_op=True)

        def result() -> bool:
            work.wait()
            return bool(t.item())

        return result
