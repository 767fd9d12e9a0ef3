"""The EMA target updater: target <- m * target + (1 - m) * online, with a linear momentum schedule
(docs/method/ijepa.md, "EMA target")."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from jepa.interfaces import TargetUpdater
from jepa.schedules import linear


class EMATargetUpdater(TargetUpdater):
    """Exponential moving average of the online encoder, momentum linear ``start -> final``.

    The update is one fused ``torch._foreach_lerp_`` over all parameters (no per-tensor Python
    arithmetic): ``target += (1 - m) * (online - target)``.
    """

    def __init__(self, start: float, final: float, total_steps: int):
        self.start, self.final, self.total_steps = start, final, total_steps

    def momentum(self, step: int) -> float:
        return linear(step, total_steps=self.total_steps, start=self.start, final=self.final)

    @torch.no_grad()
    def update(self, target_params: Sequence[Tensor], online_params: Sequence[Tensor], step: int) -> None:
        m = self.momentum(step)
        if m >= 1.0:
            return
        targets = list(target_params)
        online = [o.detach().to(t.dtype) for o, t in zip(online_params, targets, strict=True)]
        torch._foreach_lerp_(targets, online, 1.0 - m)
