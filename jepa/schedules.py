"""Per-step schedules as pure functions of the optimiser step.

Because each value depends only on ``step``, resuming a run means restoring the step; there is
no scheduler state to save. Past the end of the run every schedule stays at its final value
(the authors' cosine scheduler rises again when stepped past its end; ours does not). The I-JEPA
values: docs/method/ijepa.md, "Schedules"; V-JEPA 2's warmup-constant pretraining and its linear
cooldown: docs/method/vjepa.md, "V-JEPA 2 schedules".
"""

from __future__ import annotations

import math
from typing import Literal

LRSchedule = Literal["cosine", "constant", "linear"]
"""What the learning rate does after its linear warmup (``optim.lr_schedule``)."""


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, start: float, peak: float, final: float) -> float:
    """Linear ``start -> peak`` over ``warmup_steps``, then cosine ``peak -> final`` until ``total_steps``."""
    if step < warmup_steps:
        return start + (peak - start) * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / decay_steps)
    return final + 0.5 * (peak - final) * (1.0 + math.cos(math.pi * t))


def warmup_constant(step: int, *, warmup_steps: int, start: float, peak: float) -> float:
    """Linear ``start -> peak`` over ``warmup_steps``, then ``peak`` for good (V-JEPA 2 pretraining)."""
    if step < warmup_steps:
        return start + (peak - start) * step / warmup_steps
    return peak


def warmup_linear(step: int, *, warmup_steps: int, total_steps: int, start: float, peak: float, final: float) -> float:
    """Linear ``start -> peak`` over ``warmup_steps``, then linear ``peak -> final`` until ``total_steps``
    (with no warmup: V-JEPA 2's cooldown). Both ends are exact: ``peak`` at ``warmup_steps``, ``final`` from ``total_steps`` on."""
    if step < warmup_steps:
        return start + (peak - start) * step / warmup_steps
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return (1.0 - t) * peak + t * final


def learning_rate(step: int, schedule: LRSchedule, *, warmup_steps: int, total_steps: int, start: float, peak: float,
                  final: float) -> float:
    """The learning rate at ``step`` for ``optim.lr_schedule``: linear warmup ``start -> peak``, then
    ``cosine`` (:func:`warmup_cosine`), ``constant`` (:func:`warmup_constant`, ``final`` unused) or
    ``linear`` (:func:`warmup_linear`) to ``final`` at ``total_steps``."""
    if schedule == "cosine":
        return warmup_cosine(step, warmup_steps=warmup_steps, total_steps=total_steps, start=start, peak=peak, final=final)
    if schedule == "constant":
        return warmup_constant(step, warmup_steps=warmup_steps, start=start, peak=peak)
    if schedule == "linear":
        return warmup_linear(step, warmup_steps=warmup_steps, total_steps=total_steps, start=start, peak=peak, final=final)
    raise AssertionError(f"unknown lr schedule {schedule!r}")  # the recipe's Literal admits no other


def cosine(step: int, *, total_steps: int, start: float, final: float) -> float:
    """Cosine ``start -> final`` over ``total_steps`` (used for weight decay; constant when ``start == final``)."""
    t = min(1.0, step / max(1, total_steps))
    return final + 0.5 * (start - final) * (1.0 + math.cos(math.pi * t))


def linear(step: int, *, total_steps: int, start: float, final: float) -> float:
    """Linear ``start -> final`` over ``total_steps`` (used for the EMA momentum; constant when ``start == final``)."""
    t = min(1.0, step / max(1, total_steps))
    return start + (final - start) * t
