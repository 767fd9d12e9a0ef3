"""Where a training step's time goes: torch.profiler self times grouped into a few categories.

``jepa bench train --profile`` profiles the timed steps and prints :func:`breakdown`: the share of
the step spent in matrix products (the FLOPs MFU counts), in attention kernels, and in everything
else (normalisation, activations, elementwise arithmetic, copies, the optimiser, ...), plus the
largest operators outside the matrix products, which is where overhead hides.

Self time is an operator's time minus that of the operators it calls, so the categories add up
to the profiled total without double counting. On CPU it is the calling thread's wall time inside
the operator (intra-op threads included); on CUDA the device time of the kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from jepa.errors import ConfigError

# Operator names (exact) of dense matrix products: linear layers, the patch embedding's
# convolution, and their backward passes.
MATMUL_OPS = frozenset({
    "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "aten::matmul", "aten::_scaled_mm",
    "aten::mkldnn_convolution", "aten::convolution_backward", "aten::cudnn_convolution",
    "aten::_convolution", "aten::conv2d", "aten::conv3d", "aten::mkldnn_linear",
})
ATTENTION_MARKERS = ("scaled_dot_product", "flash_attention", "efficient_attention", "cudnn_attention")

# Everything else, first matching substring wins (checked in this order).
OTHER_CATEGORIES = (
    ("random numbers", ("normal_", "uniform_", "bernoulli", "randperm", "random_", "randint")),
    ("normalisation", ("layer_norm", "batch_norm", "group_norm", "rms_norm")),
    ("activation", ("gelu", "silu", "relu", "tanh", "sigmoid", "softmax")),
    ("optimiser + EMA", ("adam", "_foreach", "lerp")),
    ("copies, gathers, concatenation", ("copy_", "clone", "contiguous", "cat", "stack", "gather", "index",
                                        "repeat", "flatten_dense", "unflatten_dense", "_to_copy")),
    ("elementwise + reductions", ("add", "sub", "mul", "div", "sum", "mean", "pow", "sqrt", "fill_", "zero_",
                                  "where", "abs", "neg", "exp", "std", "var", "norm")),
)


@dataclass(frozen=True)
class Category:
    """One row of the breakdown: ``name``, total self time in seconds, share of the total (0..1)."""

    name: str
    seconds: float
    share: float


def category_of(op_name: str) -> str:
    """The category of a profiler event name: ``"matmul"``, ``"attention"``, one of
    :data:`OTHER_CATEGORIES`, or ``"other"`` (autograd and dispatcher bookkeeping, views, allocation)."""
    if op_name.startswith("autograd::engine"):  # e.g. "...evaluate_function: AddmmBackward0": bookkeeping
        return "other"
    if op_name in MATMUL_OPS:
        return "matmul"
    if any(marker in op_name for marker in ATTENTION_MARKERS):
        return "attention"
    for name, markers in OTHER_CATEGORIES:
        if any(marker in op_name for marker in markers):
            return name
    return "other"


def _self_seconds(event: Any, device: bool) -> float:
    us = getattr(event, "self_device_time_total", 0.0) if device else event.self_cpu_time_total
    return us / 1e6


OUTSIDE = "outside operators"


def breakdown(events: Iterable[Any], *, device: bool = False, wall_seconds: float | None = None,
              top: int = 8) -> tuple[list[Category], list[Category]]:
    """Group the ``key_averages()`` of a profile by :func:`category_of`.

    Args:
        events: ``torch.profiler.profile(...).key_averages()`` (one entry per operator name).
        device: use device (CUDA) self time instead of CPU self time.
        wall_seconds: the wall time of the profiled steps; the part no operator accounts for
            (Python, waiting for data; on CUDA the device idle) becomes the row :data:`OUTSIDE`.
        top: how many of the largest operators outside ``matmul`` to list.

    Returns:
        (categories sorted by time, largest first, shares of ``max(wall_seconds, operator total)``
        summing to 1; the ``top`` operators outside the matrix products, each a :class:`Category`
        named by the operator, with shares of the same total).
        The profiler's ``ProfilerStep#`` and ``Optimizer.step#`` ranges are skipped: their self time
        is Python time between operators, which ``wall_seconds`` accounts for. The autograd
        engine's per-node bookkeeping counts as ``other``.
    """
    per_category: dict[str, float] = {}
    per_op: dict[str, float] = {}
    for ev in events:
        name = ev.key
        if name.startswith(("ProfilerStep", "Optimizer.")):
            continue
        seconds = _self_seconds(ev, device)
        if seconds <= 0:
            continue
        cat = category_of(name)
        per_category[cat] = per_category.get(cat, 0.0) + seconds
        if cat != "matmul":
            per_op[name] = per_op.get(name, 0.0) + seconds
    total = sum(per_category.values())
    if total <= 0:
        raise ConfigError("the profile holds no operator time; profile at least one training step")
    if wall_seconds is not None and wall_seconds > total:
        per_category[OUTSIDE] = wall_seconds - total
        total = wall_seconds
    cats = sorted((Category(n, s, s / total) for n, s in per_category.items()), key=lambda c: -c.seconds)
    ops = sorted((Category(n, s, s / total) for n, s in per_op.items()), key=lambda c: -c.seconds)[:top]
    return cats, ops
