"""Memory plan of a recipe on N GPUs: what each rank holds, by ZeRO stage, and the micro batch that fits.

Per rank, with P trainable parameters (context encoder + predictor), P_e encoder parameters and
N ranks (the engine keeps fp32 weights, gradients and Adam state; bf16/fp16 is autocast only):

=========  ===========  ===========  ===================  ====================
stage      parameters   gradients    fp32 master (ZeRO)   Adam (m, v)
=========  ===========  ===========  ===================  ====================
0          4 P          4 P          0                    8 P
1          4 P          4 P          4 P / N              8 P / N
2          4 P          4 P / N      4 P / N              8 P / N
3          4 P / N      4 P / N      4 P / N              8 P / N
=========  ===========  ===========  ===================  ====================

plus the objective's frozen modules (I-JEPA's EMA target encoder, P_e parameters), a full fp32
replica on every rank (4 P_e), DeepSpeed's gradient
reduce bucket under ZeRO 1-2 (``reduce_bucket_size``, 5e8 elements by default, capped at P) and,
under ZeRO-3, the gathered working set (``stage3_prefetch_bucket_size`` + the largest layer, both
fp32), and activations per sample from the objective's activation model (checked against the
bytes autograd saves in ``tests/test_plan.py``): I-JEPA's is the modality's
(``activation_bytes_per_sample``: one masked context, the targets, the predictor), LeJEPA's every
view through the whole encoder plus the projector and SIGReg (:mod:`jepa.nn.memory`). A reserve
covers the CUDA context, allocator fragmentation and kernel workspaces: :data:`RESERVE_BYTES` + :data:`RESERVE_FRACTION`
of the GPU. These are estimates: check the largest micro batch with ``jepa bench train``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from jepa import objectives, registry
from jepa.errors import ConfigError
from jepa.objective import Objective
from jepa.recipe import Recipe

RESERVE_BYTES = 2 * 2**30
RESERVE_FRACTION = 0.08
REDUCE_BUCKET_ELEMENTS = 5e8
PREFETCH_BUCKET_ELEMENTS = 5e7


@dataclass(frozen=True)
class StagePlan:
    """One ZeRO stage on one rank (bytes)."""

    stage: int
    parameters: float
    gradients: float
    master: float
    optimizer: float
    target: float
    buffers: float
    activations_per_sample: float
    max_micro_batch: int

    @property
    def static(self) -> float:
        return self.parameters + self.gradients + self.master + self.optimizer + self.target + self.buffers


@dataclass(frozen=True)
class Plan:
    """``jepa plan``'s answer for a recipe, GPU count and memory."""

    gpus: int
    gpu_memory: float
    usable: float
    trainable: int
    encoder: int
    checkpointing: bool
    stages: list[StagePlan] = field(default_factory=list)
    suggestion: tuple[int, int, int, bool] | None = None  # (stage, micro batch, accumulation, checkpointing)
    suggestion_note: str = ""


def parse_bytes(text: str) -> float:
    """``"80GB"`` / ``"40GiB"`` / ``"80"`` (GB) -> bytes. GB means 10^9 as GPU vendors use it, GiB 2^30."""
    t = text.strip().upper().replace(" ", "")
    for unit, scale in (("GIB", 2**30), ("GB", 1e9), ("G", 1e9), ("MIB", 2**20), ("MB", 1e6)):
        if t.endswith(unit):
            return float(t[: -len(unit)]) * scale
    return float(t) * 1e9


def _act_bytes(precision: str) -> int:
    return 4 if precision == "fp32" else 2


def _parameter_counts(objective: Objective) -> tuple[int, int, int]:
    """(trainable, frozen replicas, largest single tensor) of the objective's modules (I-JEPA: encoder +
    predictor, the EMA target encoder; LeJEPA: encoder + projector, none or the teacher), from a
    meta-device build (no memory)."""
    with torch.device("meta"):
        model = objective.build_model()
        frozen = objective.build_frozen(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    replicas = sum(p.numel() for m in frozen.values() for p in m.parameters())
    largest = max(p.numel() for p in model.parameters())
    return trainable, replicas, largest


def activation_bytes(objective: Objective, micro_batch: int, precision: str, checkpointing: bool) -> float:
    """Peak activation bytes of one micro batch (saved + one recomputed block when checkpointing), from
    the objective's activation model (:meth:`Objective.activation_bytes_per_sample`)."""
    per_sample = objective.activation_bytes_per_sample(micro_batch, act_bytes=_act_bytes(precision),
                                                       checkpointing=checkpointing)
    return micro_batch * per_sample.peak


def stage_plan(stage: int, *, gpus: int, trainable: int, encoder: int, largest: int) -> StagePlan:
    """The static bytes of one rank for a ZeRO stage (activations filled in by :func:`plan_recipe`)."""
    p, n = float(trainable), gpus
    shard = (lambda b: b / n)
    params = 4 * p if stage < 3 else shard(4 * p)
    grads = 4 * p if stage < 2 else shard(4 * p)
    master = 0.0 if stage == 0 else shard(4 * p)
    optim = 8 * p if stage == 0 else shard(8 * p)
    if stage in (1, 2):
        buffers = 4 * min(REDUCE_BUCKET_ELEMENTS, p)
    elif stage == 3:
        buffers = 4 * (min(PREFETCH_BUCKET_ELEMENTS, p) + largest)
    else:
        buffers = 0.0
    return StagePlan(stage, params, grads, master, optim, 4.0 * encoder, buffers, 0.0, 0)


def _max_micro_batch(objective: Objective, budget: float, precision: str, checkpointing: bool, limit: int) -> int:
    """Largest micro batch (<= limit) whose activations fit in ``budget`` bytes (binary search)."""
    if budget <= 0 or activation_bytes(objective, 1, precision, checkpointing) > budget:
        return 0
    lo, hi = 1, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if activation_bytes(objective, mid, precision, checkpointing) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def plan_recipe(recipe: Recipe, gpus: int, gpu_memory: float) -> Plan:
    """Per-rank memory by ZeRO stage, the largest micro batch per stage, and a suggestion.

    The suggestion is the largest micro batch dividing the per-GPU share of the global batch, at
    the lowest ZeRO stage (least communication) that reaches it, without activation checkpointing
    when a micro batch of 8 (or the whole share) fits, else with it; accumulation makes up the rest.
    """
    if gpus < 1:
        raise ConfigError(f"--gpus must be at least 1, got {gpus}")
    objective = objectives.bind(recipe.objective, registry.bind(recipe.modality))
    trainable, enc, largest = _parameter_counts(objective)
    usable = gpu_memory * (1 - RESERVE_FRACTION) - RESERVE_BYTES
    precision, ckpt = recipe.engine.precision, recipe.engine.activation_checkpointing
    per_gpu = recipe.data.global_batch_size // gpus if recipe.data.global_batch_size % gpus == 0 else 0
    limit = max(per_gpu, 1) if per_gpu else recipe.data.global_batch_size
    stages = []
    for stage in range(4):
        s = stage_plan(stage, gpus=gpus, trainable=trainable, encoder=enc, largest=largest)
        mb = _max_micro_batch(objective, usable - s.static, precision, ckpt, limit)
        at = max(mb, 1)  # per sample at the micro batch that fits (faithful masks collate shorter contexts in bigger batches)
        stages.append(StagePlan(**{**s.__dict__, "activations_per_sample": activation_bytes(objective, at, precision, ckpt) / at,
                                   "max_micro_batch": mb}))
    result = Plan(gpus, gpu_memory, usable, trainable, enc, ckpt, stages)
    if not per_gpu:
        return Plan(**{**result.__dict__, "suggestion_note": f"data.global_batch_size={recipe.data.global_batch_size} "
                       f"is not divisible by {gpus} GPUs; no suggestion"})
    for checkpointing in (False, True):
        best = (0, 0)  # (micro batch, stage): the largest micro batch, then the lowest stage
        for stage in range(4):
            s = stage_plan(stage, gpus=gpus, trainable=trainable, encoder=enc, largest=largest)
            mb = _max_micro_batch(objective, usable - s.static, precision, checkpointing, per_gpu)
            while mb > 0 and per_gpu % mb:
                mb -= 1
            best = max(best, (mb, -stage))
        mb, stage = best[0], -best[1]
        if mb >= min(per_gpu, 8):  # tiny micro batches starve the GPU: prefer checkpointing
            return Plan(**{**result.__dict__, "suggestion": (stage, mb, per_gpu // mb, checkpointing)})
    return Plan(**{**result.__dict__, "suggestion_note": "nothing fits with a micro batch of 8 or more; use more or "
                   "larger GPUs"})
