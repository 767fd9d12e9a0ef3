"""DeepSpeed ZeRO around the one module an objective trains, plus its frozen modules.

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
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import deepspeed
import torch
from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.zero.partition_parameters import InsertPostInitMethodToModuleSubClasses
from torch import Tensor, nn

from jepa.engine.dist import Collectives, init_distributed, launcher_env
from jepa.engine.reshard import load_resharded
from jepa.engine.safe_load import WeightsOnlyCheckpointEngine
from jepa.errors import CheckpointError, ConfigError
from jepa.param_groups import build_param_groups
from jepa.recipe import EngineConfig, OptimConfig, split_global_batch

DEEPSPEED_TAG = "deepspeed"  # sub-directory of a checkpoint holding DeepSpeed's own files
FUSED_ADAMW_DEVICES = ("cpu", "cuda")
"""Devices where the optimiser is torch's fused AdamW (one kernel for every tensor)."""


def deepspeed_config(cfg: EngineConfig, optim: OptimConfig, *, global_batch_size: int, micro_batch_per_rank: int,
                     grad_accum_steps: int) -> dict[str, Any]:
    """The DeepSpeed config dict for an engine section (no scheduler: the loop sets LR/WD per step).

    Args:
        global_batch_size, micro_batch_per_rank, grad_accum_steps: the batch split of this world
            (:func:`jepa.recipe.split_global_batch`); ``micro_batch_per_rank`` is what DeepSpeed
            calls ``train_micro_batch_size_per_gpu``.

    Raises:
        ValueError: fp16 + gradient clipping under ZeRO >= 1. DeepSpeed 0.19 clips the gradients of
            its ZeRO optimisers *before* torch autocast's GradScaler unscales them, so the clip
            threshold applies to gradients multiplied by the loss scale (measured: wrong updates).
    """
    if cfg.precision == "fp16" and optim.grad_clip and cfg.zero_stage > 0:
        raise ConfigError(
            f"engine.precision=fp16 with optim.grad_clip={optim.grad_clip} under engine.zero_stage={cfg.zero_stage}: "
            "DeepSpeed clips the loss-scaled fp16 gradients of its ZeRO optimisers, which gives wrong updates; "
            "use engine.precision=bf16, engine.zero_stage=0, or drop optim.grad_clip")
    config: dict[str, Any] = {
        "train_batch_size": global_batch_size,
        "train_micro_batch_size_per_gpu": micro_batch_per_rank,
        "gradient_accumulation_steps": grad_accum_steps,
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


class Engine(Collectives):
    """A DeepSpeed-wrapped module (what the objective trains) and its frozen modules.

    It is also the run's handle on the process group (:class:`~jepa.engine.dist.Collectives`:
    ``barrier``, ``all_reduce_``, ``all_gather_object``, ``any_rank_async``).

    Args:
        module: the trained module; its direct children are the checkpoint parts and the
            optimiser's parameter groups (in order).
        frozen: modules kept outside the optimiser (e.g. ``{"target_encoder": ...}``), copied by
            the objective before this engine is built; moved to the device here.
        requested_micro_batch: the micro batch asked for (``data.micro_batch_size``, or the one of
            the checkpoint being resumed); None derives it from ``engine.grad_accum_steps``.

    Attributes:
        dist: rank, world size and device of this process.
        frozen: the frozen modules (full replicas, no gradients), by name.
        micro_batch_per_rank: the batch of one forward/backward on this rank, in effect.
        grad_accum_steps: micro batches per optimiser step.
        optimizer: the optimiser DeepSpeed steps (its groups: :attr:`param_groups`).
    """

    def __init__(self, module: nn.Module, *, frozen: dict[str, nn.Module] | None = None, engine_cfg: EngineConfig,
                 optim_cfg: OptimConfig, global_batch_size: int, requested_micro_batch: int | None = None):
        with launcher_env():
            self._setup(module, dict(frozen or {}), engine_cfg, optim_cfg, global_batch_size, requested_micro_batch)

    def _setup(self, module: nn.Module, frozen: dict[str, nn.Module], engine_cfg: EngineConfig, optim_cfg: OptimConfig,
               global_batch_size: int, requested_micro_batch: int | None) -> None:
        self.dist = init_distributed()
        # data.micro_batch_size (if set) and engine.grad_accum_steps -> this world's split (jepa.recipe).
        self.micro_batch_per_rank, self.grad_accum_steps = split_global_batch(
            global_batch_size, self.dist.world_size, engine_cfg.grad_accum_steps, requested_micro_batch)
        self.cfg = engine_cfg.model_copy(update={"grad_accum_steps": self.grad_accum_steps})
        self.frozen = {name: m.to(self.dist.device) for name, m in frozen.items()}
        parts = dict(module.named_children())
        if engine_cfg.activation_checkpointing:
            supported = [m for m in parts.values() if hasattr(m, "set_grad_checkpointing")]
            if not supported:
                raise ConfigError(f"engine.activation_checkpointing is true but none of the trained modules ({', '.join(parts)}) "
                                 "has set_grad_checkpointing(); set engine.activation_checkpointing=false")
            for m in supported:
                m.set_grad_checkpointing(True)

        groups = build_param_groups(parts, optim_cfg.weight_decay)
        # fused: one kernel over all tensors. On CPU torch would otherwise loop over them in Python
        # (ViT-Ti, 150 tensors: about 4x slower than fused, measured in tools/bench_optimizer.py).
        optimizer = torch.optim.AdamW(groups, lr=optim_cfg.start_lr, betas=optim_cfg.betas, eps=optim_cfg.eps,
                                      weight_decay=optim_cfg.weight_decay,
                                      fused=self.dist.device.type in FUSED_ADAMW_DEVICES)
        config = deepspeed_config(self.cfg, optim_cfg, global_batch_size=global_batch_size,
                                  micro_batch_per_rank=self.micro_batch_per_rank,
                                  grad_accum_steps=self.grad_accum_steps)
        self._deepspeed, self.optimizer, _, _ = deepspeed.initialize(model=module, optimizer=optimizer,
                                                                     config=config, dist_init_required=False)
        assert type(self._deepspeed.checkpoint_engine) is TorchCheckpointEngine, type(self._deepspeed.checkpoint_engine)
        self._deepspeed.checkpoint_engine = WeightsOnlyCheckpointEngine(self._deepspeed._config)
        if self.dist.world_size == 1 and engine_cfg.zero_stage == 0:
            # One process has nothing to reduce, but DeepSpeed's stage-0 reduction would still flatten every
            # gradient into a buffer, scale it by 1 and copy it back (~4 % of a ViT-Ti/4 CPU step).
            self._deepspeed.enable_backward_allreduce = False
        if engine_cfg.compile:  # in place: state-dict keys stay the same
            self._deepspeed.compile()
            for m in self.frozen.values():
                m.compile()
        super().__init__(self.dist)  # after DeepSpeed's groups: every rank creates them in one order

    # ------------------------------------------------------------------ the per-step API

    @property
    def module(self) -> nn.Module:
        """The trained module (under ZeRO-3 its parameters are shards; use ``full_state_dicts``).
        Run its forward through :meth:`forward`."""
        return self._deepspeed.module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """``module(*args, **kwargs)`` as DeepSpeed runs it (autocast, ZeRO-3 parameter fetching)."""
        return self._deepspeed(*args, **kwargs)

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
        self._deepspeed.backward(loss)

    def step(self) -> None:
        """Called after every micro batch; DeepSpeed steps the optimiser at accumulation boundaries."""
        self._deepspeed.step()

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
        self._deepspeed.save_checkpoint(str(directory), tag=DEEPSPEED_TAG, save_latest=False)

    def load_state(self, directory: Path, frozen_states: dict[str, dict[str, Tensor]], *,
                   reshard_dir: Path | None = None) -> None:
        """Restore what :meth:`save_state` wrote, plus the frozen modules (strict: every key must fit).

        Args:
            directory: the checkpoint directory (its ``deepspeed/`` sub-directory is read).
            frozen_states: a state dict for every frozen module, by name (e.g. the EMA encoder's).
            reshard_dir: set when ``directory`` was written by another number of ranks (collective:
                every rank passes the same path on the shared filesystem). Under ZeRO 1-3 the state
                goes through DeepSpeed's universal checkpoint there (:mod:`jepa.engine.reshard`),
                removed again afterwards. ZeRO-0 state is not sharded and loads as it is.

        Raises:
            ValueError: the state is missing, holds more than tensors and DeepSpeed's records, or
                cannot be converted.
        """
        for name, module in self.frozen.items():
            module.load_state_dict(frozen_states[name], strict=True)
        if reshard_dir is not None and self.cfg.zero_stage > 0:
            load_path = load_resharded(self._deepspeed, directory, reshard_dir, DEEPSPEED_TAG, self, self.dist.is_main)
        else:
            load_path, _ = self._deepspeed.load_checkpoint(str(directory), tag=DEEPSPEED_TAG, load_module_strict=True,
                                                           load_optimizer_states=True, load_lr_scheduler_states=False)
        if load_path is None:
            raise CheckpointError(f"{directory}: no DeepSpeed state under {DEEPSPEED_TAG}/; the checkpoint is incomplete")

    def close(self) -> None:
        """Release what the engine holds (the process group outlives it:
        :func:`~jepa.engine.dist.init_distributed`).

        ZeRO-3 replaces ``torch.nn.functional.linear`` with DeepSpeed's memory-efficient version for
        the rest of the process; it is put back here, so that a later run in the same process (tests,
        notebooks, benchmarks) computes exactly as in a fresh one.
        """
        self._deepspeed.destroy()
        if self.cfg.zero_stage == 3:
            original = getattr(InsertPostInitMethodToModuleSubClasses, "linear_bk", None)
            if original is not None:
                torch.nn.functional.linear = original
