"""The training engine: DeepSpeed ZeRO around the one module an objective trains, plus its frozen modules.

This is the only module that imports DeepSpeed. The training loop and the objectives
(:mod:`jepa.objective`) talk to :class:`Engine` through a handful of methods
(``set_optim_hparams``, ``backward``, ``step``, ``gathered``, ``save_state`` / ``load_state``,
``full_state_dicts``); every sharding-aware detail lives here.

What DeepSpeed optimises is the objective's module (I-JEPA: :class:`~jepa.model.JEPA`, context
encoder + predictor; LeJEPA: encoder + projector); its direct children are the checkpoint parts.
Frozen modules (an EMA target encoder) are copies the objective took *before* DeepSpeed
partitions anything: never optimised, ``requires_grad=False``, a full replica on every rank.
Under ZeRO-3 the trained parameters are sharded, so an EMA gathers them first
(:meth:`Engine.gathered`) and every rank lerps its replica from the full tensors.

Precision: parameters, gradients, optimiser state and gradient communication stay fp32;
``bf16`` / ``fp16`` run the forward passes under ``torch.autocast`` (DeepSpeed's
``torch_autocast`` section), as the paper does; ``fp16`` adds dynamic loss scaling. Keeping the
weights fp32 makes the EMA and the consolidated checkpoint exact.

Process group: under ``torchrun`` / the ``deepspeed`` launcher (also multi-node with a hostfile)
or ``mpirun`` the launcher's environment is used; under Slurm's ``srun`` the ranks and the
rendezvous come from the ``SLURM_*`` variables (:mod:`jepa.launch`); a plain ``python`` process
creates a world of one itself (gloo on CPU, nccl on GPU) and keeps it for later engines in the
same process. Training builds no C++ extension: DeepSpeed's CPU shared-memory comm op, which it
would JIT-compile at every process-group setup, serves only its inference all-reduce and is left
unbuilt (:func:`_skip_shm_comm_op`); whatever else is built goes to a folder of the active Python
environment (:func:`use_environment_extensions_dir`), so two environments never share builds.

Another world size: a checkpoint written by N ranks is loaded by M through DeepSpeed's
universal checkpoint (:meth:`Engine.load_state` with ``reshard_dir``): rank 0 converts the
ZeRO shards with ``deepspeed.checkpoint.ds_to_universal`` (per-parameter fp32 weights and Adam
moments) and every rank loads its new partition of them. Every file DeepSpeed reads on the way
is unpickled with ``weights_only=True`` (:func:`_weights_only_torch_load`).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import pickle
import sys
from contextlib import AbstractContextManager, contextmanager, nullcontext, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.checkpoint import ds_to_universal
from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine
from torch import Tensor, nn

from jepa.launch import detect as detect_launch, free_port
from jepa.outputs import remove_tree
from jepa.param_groups import build_param_groups
from jepa.recipe import EngineConfig, OptimConfig, split_global_batch

log = logging.getLogger(__name__)

DEEPSPEED_TAG = "deepspeed"  # sub-directory of a checkpoint holding DeepSpeed's own files
FUSED_ADAMW_DEVICES = ("cpu", "cuda")
"""Devices where the optimiser is torch's fused AdamW (one kernel for every tensor)."""


def _deepspeed_state_types() -> list[Any]:
    """The only non-tensor types DeepSpeed 0.19's own checkpoint files hold (every ZeRO stage and
    precision, measured with ``torch.serialization.get_unsafe_globals_in_checkpoint``): plain data
    records, unpickled by setting attributes, never by running code of the file's choosing."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class _WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine, but loading with ``weights_only=True``.

    DeepSpeed loads its model, optimiser and ZeRO-shard files with ``weights_only=False``, which
    runs whatever a crafted pickle asks for. Here only tensors, plain containers and the few
    DeepSpeed record types of :func:`_deepspeed_state_types` can be unpickled; anything else is
    refused with a ``ValueError`` before it can run.
    """

    def load(self, path: str, map_location: Any = None) -> Any:
        try:
            with torch.serialization.safe_globals(_deepspeed_state_types()):
                return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ValueError(f"{path}: this DeepSpeed state file holds objects other than tensors and DeepSpeed's "
                             "own records, so it is not loaded (it could run code); resume from a checkpoint "
                             f"written by `jepa train`. Detail: {' '.join(str(exc).split())[:300]}") from None
        except (RuntimeError, EOFError, OSError) as exc:
            raise ValueError(f"{path}: cannot read this DeepSpeed state file ({type(exc).__name__}: {exc})") from None


def _remove_scratch(path: Path) -> None:
    """Remove the resharding scratch folder (a symbolic link there: the link only). A failure is a
    warning: what is left is removed by the next attempt, and an error being raised stays the one shown."""
    try:
        remove_tree(path)
    except OSError as exc:
        log.warning("could not remove the resharding scratch folder %s (%s); remove it by hand", path,
                    exc.strerror or exc)


@contextmanager
def _weights_only_torch_load() -> Iterator[None]:
    """``torch.load`` forced to ``weights_only=True`` (DeepSpeed's record types allowed) for as long
    as the context lasts: DeepSpeed's universal-checkpoint code (conversion and loading) calls
    ``torch.load(..., weights_only=False)`` itself instead of going through the checkpoint engine."""
    original = torch.load

    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        with torch.serialization.safe_globals(_deepspeed_state_types()):
            return original(f, *args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


_LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@contextmanager
def _launcher_env() -> Iterator[None]:
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
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


def init_distributed() -> DistInfo:
    """Join the launcher's process group, or create a world of one for a plain process.

    A world of one is kept for the life of the process (DeepSpeed caches its process groups, so
    a destroyed world cannot be created again); later engines in the same process reuse it.
    Call inside ``_launcher_env()``. Needs no C++ compiler (:func:`_skip_shm_comm_op`).
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


def micro_batch_size(global_batch_size: int, world_size: int, grad_accum_steps: int) -> int:
    """Per-rank batch of one forward/backward: global / (world x accumulation steps)."""
    per_step = world_size * grad_accum_steps
    if global_batch_size % per_step:
        raise ValueError(
            f"data.global_batch_size={global_batch_size} is not divisible by world_size={world_size} x "
            f"engine.grad_accum_steps={grad_accum_steps} = {per_step}; pick a global batch that is a multiple "
            f"of {per_step} (e.g. {max(per_step, global_batch_size // per_step * per_step)}) or change the accumulation steps")
    return global_batch_size // per_step


def deepspeed_config(cfg: EngineConfig, optim: OptimConfig, global_batch_size: int, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config dict for an engine section (no scheduler: the loop sets LR/WD per step).

    Raises:
        ValueError: fp16 + gradient clipping under ZeRO >= 1. DeepSpeed 0.19 clips the gradients of
            its ZeRO optimisers *before* torch autocast's GradScaler unscales them, so the clip
            threshold applies to gradients multiplied by the loss scale (measured: wrong updates).
    """
    if cfg.precision == "fp16" and optim.grad_clip and cfg.zero_stage > 0:
        raise ValueError(
            f"engine.precision=fp16 with optim.grad_clip={optim.grad_clip} under engine.zero_stage={cfg.zero_stage}: "
            "DeepSpeed clips the loss-scaled fp16 gradients of its ZeRO optimisers, which gives wrong updates; "
            "use engine.precision=bf16, engine.zero_stage=0, or drop optim.grad_clip")
    micro, accum = split_global_batch(global_batch_size, world_size, cfg.grad_accum_steps)
    config: dict[str, Any] = {
        "train_batch_size": global_batch_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": optim.grad_clip or 0.0,
        "zero_optimization": {"stage": cfg.zero_stage},
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
    }
    if cfg.precision != "fp32":
        # fp32 weights + autocast forward; an empty safe-module list keeps gradient comm in fp32.
        config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16" if cfg.precision == "bf16" else "float16",
                                    "lower_precision_safe_modules": []}
    return config


class Engine:
    """A DeepSpeed-wrapped module (what the objective trains) and its frozen modules.

    Args:
        module: the trained module; its direct children are the checkpoint parts and the
            optimiser's parameter groups (in order).
        frozen: modules kept outside the optimiser (e.g. ``{"target_encoder": ...}``), copied by
            the objective before this engine is built; moved to the device here.

    Attributes:
        dist: rank, world size and device of this process.
        model: the DeepSpeed engine; ``model(...)`` runs ``module.forward``.
        frozen: the frozen modules (full replicas, no gradients), by name.
        micro_batch_size: per-rank batch of one forward/backward.
        grad_accum_steps: micro batches per optimiser step.
    """

    def __init__(self, module: nn.Module, *, frozen: dict[str, nn.Module] | None = None, engine_cfg: EngineConfig,
                 optim_cfg: OptimConfig, global_batch_size: int, micro_batch_size: int | None = None):
        with _launcher_env():
            self._setup(module, dict(frozen or {}), engine_cfg, optim_cfg, global_batch_size, micro_batch_size)

    def _setup(self, module: nn.Module, frozen: dict[str, nn.Module], engine_cfg: EngineConfig, optim_cfg: OptimConfig,
               global_batch_size: int, micro_batch_size: int | None) -> None:
        self.dist = init_distributed()
        # data.micro_batch_size (if set) and engine.grad_accum_steps -> this world's split (jepa.recipe).
        self.micro_batch_size, self.grad_accum_steps = split_global_batch(
            global_batch_size, self.dist.world_size, engine_cfg.grad_accum_steps, micro_batch_size)
        engine_cfg = engine_cfg.model_copy(update={"grad_accum_steps": self.grad_accum_steps})
        self.cfg = engine_cfg
        self.frozen = {name: m.to(self.dist.device) for name, m in frozen.items()}
        parts = dict(module.named_children())
        if engine_cfg.activation_checkpointing:
            supported = [m for m in parts.values() if hasattr(m, "set_grad_checkpointing")]
            if not supported:
                raise ValueError(f"engine.activation_checkpointing is true but none of the trained modules ({', '.join(parts)}) "
                                 "has set_grad_checkpointing(); set engine.activation_checkpointing=false")
            for m in supported:
                m.set_grad_checkpointing(True)

        groups = build_param_groups(parts, optim_cfg.weight_decay)
        # fused: one kernel over all tensors. On CPU torch would otherwise loop over them in Python
        # (ViT-Ti, 150 tensors: about 4x slower than fused, measured in tools/bench_optimizer.py).
        optimizer = torch.optim.AdamW(groups, lr=optim_cfg.start_lr, betas=optim_cfg.betas, eps=optim_cfg.eps,
                                      weight_decay=optim_cfg.weight_decay,
                                      fused=self.dist.device.type in FUSED_ADAMW_DEVICES)
        config = deepspeed_config(engine_cfg, optim_cfg, global_batch_size, self.dist.world_size)
        self.model, self.optimizer, _, _ = deepspeed.initialize(model=module, optimizer=optimizer,
                                                                config=config, dist_init_required=False)
        assert type(self.model.checkpoint_engine) is TorchCheckpointEngine, type(self.model.checkpoint_engine)
        self.model.checkpoint_engine = _WeightsOnlyCheckpointEngine(self.model._config)
        if self.dist.world_size == 1 and engine_cfg.zero_stage == 0:
            # One process has nothing to reduce, but DeepSpeed's stage-0 reduction would still flatten every
            # gradient into a buffer, scale it by 1 and copy it back (~4 % of a ViT-Ti/4 CPU step).
            self.model.enable_backward_allreduce = False
        if engine_cfg.compile:  # in place: state-dict keys stay the same
            self.model.compile()
            for m in self.frozen.values():
                m.compile()
        # Host-side flags (preemption) are agreed on over a gloo group of their own: they never touch the
        # GPU stream, and an asynchronous vote never interleaves with DeepSpeed's collectives.
        self._host_group = dist.new_group(backend="gloo") if self.dist.world_size > 1 else None

    # ------------------------------------------------------------------ the per-step API

    @property
    def module(self) -> nn.Module:
        """The wrapped module (under ZeRO-3 its parameters are shards; use ``full_state_dicts``)."""
        return self.model.module

    def _parts(self) -> dict[str, nn.Module]:
        """The checkpoint parts: the trained module's children, then the frozen modules."""
        return {**dict(self.module.named_children()), **self.frozen}

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The live optimiser groups (what the optimiser step reads)."""
        return self.optimizer.param_groups

    def autocast(self) -> AbstractContextManager:
        """The precision context for forward passes outside the DeepSpeed model (frozen modules)."""
        if self.cfg.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        return torch.autocast(self.dist.device.type, dtype=dtype)

    def set_optim_hparams(self, lr: float, weight_decay: float) -> None:
        """Set this step's learning rate on every group and weight decay on the decay groups."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            group["weight_decay"] = weight_decay if group["apply_weight_decay"] else 0.0

    def backward(self, loss: Tensor) -> None:
        """Backward of one micro batch (DeepSpeed divides by the accumulation steps and scales fp16 losses)."""
        self.model.backward(loss)

    def step(self) -> None:
        """Called after every micro batch; DeepSpeed steps the optimiser at accumulation boundaries."""
        self.model.step()

    def gathered(self, params: list[nn.Parameter]) -> AbstractContextManager:
        """Within the context, ``params`` (of the trained module) are full tensors on every rank
        (under ZeRO-3 they are gathered, read-only; other stages hold them whole already)."""
        if self.cfg.zero_stage == 3:
            return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
        return nullcontext()

    # ------------------------------------------------------------------ state

    def full_state_dicts(self) -> dict[str, dict[str, Tensor]] | None:
        """fp32 CPU state dicts of every checkpoint part (I-JEPA: ``encoder``, ``predictor``,
        ``target_encoder``) on rank 0, None elsewhere.

        Collective under ZeRO-3 (every rank must call it): the shards are gathered one module at a time.
        """
        out = {}
        for name, module in self.module.named_children():
            with self.gathered(list(module.parameters())):
                if self.dist.is_main:
                    out[name] = {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
        if not self.dist.is_main:
            return None
        for name, module in self.frozen.items():
            out[name] = {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
        return out

    def state_shapes(self) -> dict[str, dict[str, tuple[int, ...]]]:
        """Full (unsharded) shapes of every state-dict entry of every checkpoint part."""
        shapes = {}
        for name, module in self._parts().items():
            params = dict(module.named_parameters())
            shapes[name] = {
                k: tuple(getattr(params.get(k), "ds_shape", None) or v.shape) for k, v in module.state_dict().items()
            }
        return shapes

    def save_state(self, directory: Path) -> None:
        """DeepSpeed's model/optimiser/ZeRO-shard files into ``directory/deepspeed`` (collective)."""
        self.model.save_checkpoint(str(directory), tag=DEEPSPEED_TAG, save_latest=False)

    def load_state(self, directory: Path, frozen_states: dict[str, dict[str, Tensor]], *,
                   reshard_dir: Path | None = None) -> None:
        """Restore what :meth:`save_state` wrote, plus the frozen modules (strict: every key must fit).

        Args:
            directory: the checkpoint directory (its ``deepspeed/`` sub-directory is read).
            frozen_states: a state dict for every frozen module, by name (e.g. the EMA encoder's).
            reshard_dir: set when ``directory`` was written by another number of ranks (collective:
                every rank passes the same path on the shared filesystem). Under ZeRO 1-3 rank 0
                converts the shards there into DeepSpeed's universal checkpoint (per-parameter fp32
                weights, Adam moments and step), every rank loads its new partition, and the
                directory is removed again. ZeRO-0 state is not sharded and loads as it is.

        Raises:
            ValueError: the state is missing, holds more than tensors and DeepSpeed's records, or
                cannot be converted.
        """
        for name, module in self.frozen.items():
            module.load_state_dict(frozen_states[name], strict=True)
        universal = reshard_dir is not None and self.cfg.zero_stage > 0
        if universal:
            self._convert_to_universal(directory / DEEPSPEED_TAG, reshard_dir / DEEPSPEED_TAG)
        error = None
        # DeepSpeed 0.19's universal load under ZeRO-3 gives every param group the hyperparameters of
        # the first (weight decay on the no-decay groups), and one shared Adam step tensor to all of
        # them (each group's step then advances it: wrong bias correction). Both are undone after it.
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        try:
            self.model._config.load_universal_checkpoint = universal
            with _weights_only_torch_load() if universal else nullcontext():
                load_path, _ = self.model.load_checkpoint(str(reshard_dir if universal else directory), tag=DEEPSPEED_TAG,
                                                          load_module_strict=True, load_optimizer_states=True,
                                                          load_lr_scheduler_states=False)
            if universal:
                for group, own in zip(self.optimizer.param_groups, groups):
                    group.update(own)
                for state in getattr(self.optimizer, "optimizer", self.optimizer).state.values():
                    if torch.is_tensor(state.get("step")):
                        state["step"] = state["step"].clone()
            if load_path is None:
                error = f"{directory}: no DeepSpeed state under {DEEPSPEED_TAG}/; the checkpoint is incomplete"
        finally:
            self.model._config.load_universal_checkpoint = False
            if universal:
                self.all_gather_object(None)  # every rank has read the converted files
                if self.dist.is_main:
                    _remove_scratch(reshard_dir)
        if error:
            raise ValueError(error)

    def _convert_to_universal(self, source: Path, target: Path) -> None:
        """Rank 0 runs ``ds_to_universal`` from ``source`` (ZeRO shards of another world size) into
        ``target``; every rank raises the same error if it fails."""
        scratch = target.parent
        error = None
        if self.dist.is_main:
            try:  # a folder left by an interrupted earlier attempt, or a link (dangling or not) in its place
                remove_tree(scratch)
                scratch.mkdir(parents=True)
            except OSError as exc:
                error = (f"{scratch}: cannot make the scratch folder for resharding ({exc.strerror or exc}); remove "
                         "what is there or make its folder writable")
            if error is None:
                try:
                    args = argparse.Namespace(input_folder=str(source), output_folder=str(target),
                                              num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False,
                                              strict=True, inject_missing_state=True)
                    with _weights_only_torch_load(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                        ds_to_universal.main(args)
                except Exception as exc:  # noqa: BLE001 - every rank re-raises it below, as a ValueError naming it
                    error = (f"{source}: DeepSpeed could not convert this ZeRO state to another number of processes "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:500]}); resume with the number of "
                             "processes that wrote it (meta.json: world_size)")
                    _remove_scratch(scratch)
        error = self.all_gather_object(error)[0]
        if error:
            raise ValueError(error)

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

    def close(self) -> None:
        """Release what the engine holds (the process group outlives it, see :func:`init_distributed`).

        ZeRO-3 replaces ``torch.nn.functional.linear`` with DeepSpeed's memory-efficient version for
        the rest of the process; it is put back here, so that a later run in the same process (tests,
        notebooks, benchmarks) computes exactly as in a fresh one.
        """
        self.model.destroy()
        if self.cfg.zero_stage == 3:
            from deepspeed.runtime.zero.partition_parameters import InsertPostInitMethodToModuleSubClasses

            original = getattr(InsertPostInitMethodToModuleSubClasses, "linear_bk", None)
            if original is not None:
                torch.nn.functional.linear = original
