"""Per-step schedules as pure functions of the optimiser step.

Because each value depends only on ``step``, resuming a run means restoring the step; there is
no scheduler state to save. Past the end of the run every schedule stays at its final value
(the authors' cosine scheduler rises again when stepped past its end; ours does not). The I-JEPA
values: docs/method/ijepa.md, "Schedules".
"""

from __future__ import annotations

import math


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, start: float, peak: float, final: float) -> float:
    """Linear ``start -> peak`` over ``warmup_steps``, then cosine ``peak -> final`` until ``total_steps``."""
    if step < warmup_steps:
        return start + (peak - start) * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / decay_steps)
    return final + 0.5 * (peak - final) * (1.0 + math.cos(math.pi * t))


def cosine(step: int, *, total_steps: int, start: float, final: float) -> float:
    """Cosine ``start -> final`` over ``total_steps`` (used for weight decay)."""
    t = min(1.0, step / max(1, total_steps))
    return final + 0.5 * (start - final) * (1.0 + math.cos(math.pi * t))


def linear(step: int, *, total_steps: int, start: float, final: float) -> float:
    """Linear ``start -> final`` over ``total_steps`` (used for the EMA momentum)."""
    t = min(1.0, step / max(1, total_steps))
    return start + (final - start) * t
