"""The training engine: DeepSpeed ZeRO around the online model, plus the EMA target encoder.

This is the only module that imports DeepSpeed. The training loop talks to :class:`Engine`
through a handful of methods (``set_optim_hparams``, ``backward``, ``step``, ``update_target``,
``save_state`` / ``load_state``, ``full_state_dicts``); every sharding-aware detail lives here.

What DeepSpeed optimises is :class:`~jepa.model.JEPA` (context encoder + predictor). The target
encoder is a deep copy of the context encoder taken *before* DeepSpeed partitions anything: it
is never optimised, has ``requires_grad=False`` and is a full replica on every rank. Under ZeRO-3
the context encoder's parameters are sharded, so the EMA gathers them first
(``deepspeed.zero.GatheredParameters``) and every rank lerps its replica from the full tensors.

Precision: parameters, gradients, optimiser state and gradient communication stay fp32;
``bf16`` / ``fp16`` run the forward passes under ``torch.autocast`` (DeepSpeed's
``torch_autocast`` section), as the paper does; ``fp16`` adds dynamic loss scaling. Keeping the
weights fp32 makes the EMA and the consolidated checkpoint exact.

Process group: under ``torchrun`` / the ``deepspeed`` launcher (also multi-node with a hostfile)
the launcher's environment is used; a plain ``python`` process creates a world of one itself
(gloo on CPU, nccl on GPU) and keeps it for later engines in the same process.
"""

from __future__ import annotations

import copy
import os
import pickle
import socket
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine
from torch import Tensor, nn

from jepa.interfaces import Encoder, Predictor, TargetUpdater
from jepa.model import JEPA
from jepa.param_groups import build_param_groups
from jepa.recipe import EngineConfig, OptimConfig

DEEPSPEED_TAG = "deepspeed"  # sub-directory of a checkpoint holding DeepSpeed's own files


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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _launcher_env() -> Iterator[None]:
    """In a plain process (no launcher), the variables a launcher would set, for the duration of
    DeepSpeed's setup (it reads LOCAL_RANK); restored afterwards so child processes do not inherit them."""
    if "RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ:
        yield
        return
    saved = {k: os.environ.get(k) for k in _LAUNCHER_ENV}
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def init_distributed() -> DistInfo:
    """Join the launcher's process group, or create a world of one for a plain process.

    A world of one is kept for the life of the process (DeepSpeed caches its process groups, so
    a destroyed world cannot be created again); later engines in the same process reuse it.
    Call inside ``_launcher_env()``.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)  # before NCCL starts, so every rank talks from its own GPU
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
    config: dict[str, Any] = {
        "train_batch_size": global_batch_size,
        "train_micro_batch_size_per_gpu": micro_batch_size(global_batch_size, world_size, cfg.grad_accum_steps),
        "gradient_accumulation_steps": cfg.grad_accum_steps,
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
    """DeepSpeed-wrapped context encoder + predictor, and the EMA target encoder.

    Attributes:
        dist: rank, world size and device of this process.
        model: the DeepSpeed engine; ``model(x, masks)`` runs :class:`JEPA` forward.
        target_encoder: the EMA copy (full replica, no gradients, eval mode).
        micro_batch_size: per-rank batch of one forward/backward.
        grad_accum_steps: micro batches per optimiser step.
    """

    def __init__(self, encoder: Encoder, predictor: Predictor, *, engine_cfg: EngineConfig, optim_cfg: OptimConfig,
                 target_updater: TargetUpdater, global_batch_size: int):
        with _launcher_env():
            self._setup(encoder, predictor, engine_cfg, optim_cfg, target_updater, global_batch_size)

    def _setup(self, encoder: Encoder, predictor: Predictor, engine_cfg: EngineConfig, optim_cfg: OptimConfig,
               target_updater: TargetUpdater, global_batch_size: int) -> None:
        self.dist = init_distributed()
        self.cfg = engine_cfg
        self.grad_accum_steps = engine_cfg.grad_accum_steps
        self.micro_batch_size = micro_batch_size(global_batch_size, self.dist.world_size, engine_cfg.grad_accum_steps)
        self.target_updater = target_updater

        # The target is copied before DeepSpeed moves or partitions the online weights (and before
        # activation checkpointing, which only the modules that get gradients need).
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False).eval().to(self.dist.device)
        if engine_cfg.activation_checkpointing:
            supported = [m for m in (encoder, predictor) if hasattr(m, "set_grad_checkpointing")]
            if not supported:
                raise ValueError("engine.activation_checkpointing is true but neither the encoder nor the predictor of this "
                                 "modality has set_grad_checkpointing(); set engine.activation_checkpointing=false")
            for m in supported:
                m.set_grad_checkpointing(True)

        groups = build_param_groups(encoder, predictor, optim_cfg.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=optim_cfg.start_lr, betas=optim_cfg.betas, eps=optim_cfg.eps,
                                      weight_decay=optim_cfg.weight_decay)
        config = deepspeed_config(engine_cfg, optim_cfg, global_batch_size, self.dist.world_size)
        self.model, self.optimizer, _, _ = deepspeed.initialize(model=JEPA(encoder, predictor), optimizer=optimizer,
                                                                config=config, dist_init_required=False)
        assert type(self.model.checkpoint_engine) is TorchCheckpointEngine, type(self.model.checkpoint_engine)
        self.model.checkpoint_engine = _WeightsOnlyCheckpointEngine(self.model._config)
        if engine_cfg.compile:  # in place: state-dict keys stay the same
            self.model.compile()
            self.target_encoder.compile()
        # Host-side flags (preemption) are agreed on over a gloo group of their own: they never touch the
        # GPU stream, and an asynchronous vote never interleaves with DeepSpeed's collectives.
        self._host_group = dist.new_group(backend="gloo") if self.dist.world_size > 1 else None

    # ------------------------------------------------------------------ the per-step API

    @property
    def module(self) -> JEPA:
        """The wrapped :class:`JEPA` (under ZeRO-3 its parameters are shards; use ``full_state_dicts``)."""
        return self.model.module

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The live optimiser groups (what the optimiser step reads)."""
        return self.optimizer.param_groups

    def autocast(self) -> AbstractContextManager:
        """The precision context for forward passes outside the DeepSpeed model (the target encoder)."""
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

    def _gathered(self, params: list[nn.Parameter]) -> AbstractContextManager:
        if self.cfg.zero_stage == 3:
            return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
        return nullcontext()

    @torch.no_grad()
    def update_target(self, step: int) -> float:
        """EMA of the context encoder into the target encoder after optimiser step ``step``; returns the momentum."""
        momentum = self.target_updater.momentum(step)
        if momentum < 1.0:
            online = list(self.module.encoder.parameters())
            with self._gathered(online):
                self.target_updater.update(list(self.target_encoder.parameters()), online, step)
        return momentum

    # ------------------------------------------------------------------ state

    def full_state_dicts(self) -> dict[str, dict[str, Tensor]] | None:
        """fp32 CPU state dicts ``{"encoder", "predictor", "target_encoder"}`` on rank 0, None elsewhere.

        Collective under ZeRO-3 (every rank must call it): the shards are gathered one module at a time.
        """
        out = {}
        for name, module in (("encoder", self.module.encoder), ("predictor", self.module.predictor)):
            with self._gathered(list(module.parameters())):
                if self.dist.is_main:
                    out[name] = {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
        if not self.dist.is_main:
            return None
        out["target_encoder"] = {k: v.detach().float().cpu().clone() for k, v in self.target_encoder.state_dict().items()}
        return out

    def state_shapes(self) -> dict[str, dict[str, tuple[int, ...]]]:
        """Full (unsharded) shapes of every state-dict entry of the encoder and predictor."""
        shapes = {}
        for name, module in (("encoder", self.module.encoder), ("predictor", self.module.predictor)):
            params = dict(module.named_parameters())
            shapes[name] = {
                k: tuple(getattr(params.get(k), "ds_shape", None) or v.shape) for k, v in module.state_dict().items()
            }
        return shapes

    def save_state(self, directory: Path) -> None:
        """DeepSpeed's model/optimiser/ZeRO-shard files into ``directory/deepspeed`` (collective)."""
        self.model.save_checkpoint(str(directory), tag=DEEPSPEED_TAG, save_latest=False)

    def load_state(self, directory: Path, target_encoder_state: dict[str, Tensor]) -> None:
        """Restore what :meth:`save_state` wrote, plus the target encoder (strict: every key must fit)."""
        self.target_encoder.load_state_dict(target_encoder_state, strict=True)
        load_path, _ = self.model.load_checkpoint(str(directory), tag=DEEPSPEED_TAG, load_module_strict=True,
                                                  load_optimizer_states=True, load_lr_scheduler_states=False)
        if load_path is None:
            raise ValueError(f"{directory}: no DeepSpeed state under {DEEPSPEED_TAG}/; the checkpoint is incomplete")

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
        """Release what the engine holds (the process group outlives it, see :func:`init_distributed`)."""
        self.model.destroy()
