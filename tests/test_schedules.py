"""Schedules and the EMA target update against their closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from jepa.schedules import cosine, linear, warmup_cosine
from jepa.target import EMATargetUpdater

KW = dict(warmup_steps=10, total_steps=110, start=2e-4, peak=1e-3, final=1e-6)


@pytest.mark.parametrize("step, expected", [
    (0, 2e-4), (5, 2e-4 + 0.5 * (1e-3 - 2e-4)), (10, 1e-3),
    (60, 1e-6 + 0.5 * (1e-3 - 1e-6)),  # half way through the cosine
    (110, 1e-6), (500, 1e-6),  # never rises again past the end
])
def test_warmup_cosine_closed_form(step, expected):
    assert warmup_cosine(step, **KW) == pytest.approx(expected, rel=1e-12)


def test_warmup_cosine_monotone_after_warmup():
    values = [warmup_cosine(s, **KW) for s in range(10, 200)]
    assert all(a >= b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("step", [0, 25, 50, 100, 1000])
def test_weight_decay_cosine(step):
    t = min(step, 100) / 100
    expected = 0.4 + 0.5 * (0.04 - 0.4) * (1 + math.cos(math.pi * t))
    assert cosine(step, total_steps=100, start=0.04, final=0.4) == pytest.approx(expected)


def test_momentum_linear():
    ema = EMATargetUpdater(0.996, 1.0, total_steps=1000)
    assert ema.momentum(0) == 0.996
    assert ema.momentum(500) == pytest.approx(0.998)
    assert ema.momentum(1000) == 1.0 and ema.momentum(5000) == 1.0
    assert linear(250, total_steps=1000, start=0.0, final=1.0) == 0.25


def test_ema_update_equals_closed_form():
    torch.manual_seed(0)
    target = [torch.randn(3, 4), torch.randn(5)]
    t0 = [t.clone() for t in target]
    online = [torch.randn(3, 4), torch.randn(5)]
    ema = EMATargetUpdater(0.9, 1.0, total_steps=10)
    prod = 1.0
    for step in range(4):
        ema.update(target, online, step)
        prod *= ema.momentum(step)
    for t, a, o in zip(target, t0, online):
        torch.testing.assert_close(t, o + (a - o) * prod, rtol=1e-5, atol=1e-6)


def test_ema_momentum_one_is_identity():
    target, online = [torch.zeros(3)], [torch.ones(3)]
    EMATargetUpdater(1.0, 1.0, total_steps=10).update(target, online, 3)
    assert torch.equal(target[0], torch.zeros(3))
