"""Pinned short loss curves of every built-in recipe family (``tools/loss_curves.py``).

Each family is a tiny version of a built-in recipe on the synthetic source; its per-step losses
and the SHA-256 of its final weights must equal the pinned ones bitwise. A refactor that changes
them shows here; a change meant to alter them re-pins with
``python tools/loss_curves.py --write tests/assets/loss_curves.json`` and says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tool_module import load_tool

PINNED = Path(__file__).parent / "assets" / "loss_curves.json"
loss_curves = load_tool("loss_curves")


def test_every_family_is_pinned():
    assert set(json.loads(PINNED.read_text())) == set(loss_curves.FAMILIES)


@pytest.mark.parametrize("family", sorted(loss_curves.FAMILIES))
def test_loss_curve_is_bitwise_the_pinned_one(family):
    pinned = json.loads(PINNED.read_text())[family]
    got = loss_curves.run_family(family)
    assert got["losses"] == pinned["losses"], f"{family}: the loss curve drifted from {PINNED.name}"
    assert got["weights_sha256"] == pinned["weights_sha256"], f"{family}: the final weights drifted"
