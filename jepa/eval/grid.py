"""The (learning rate, weight decay) grid of a probe: its heads, their scores, and the choice.

Every head of a grid is scored on the held-out part of the training split and on the validation
split, in the same pass for all heads (:class:`GridScores`, accumulated on the device). The
reported head is the one with the best held-out top-1 (ties: the lower held-out loss), chosen
without looking at the validation split; the report keeps every head's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from jepa.errors import ConfigError, DataError


def parse_floats(text: str, flag: str) -> tuple[float, ...]:
    """``"1e-3, 3e-3"`` -> ``(0.001, 0.003)``; every value must be >= 0.

    Raises:
        ValueError: naming ``flag``, when a value is not a number, is negative, or none is given.
    """
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: give comma-separated numbers, e.g. 1e-4,1e-3") from None
    if not values or any(v < 0 for v in values):
        raise ConfigError(f"{flag} {text!r}: give one or more comma-separated numbers >= 0, e.g. 1e-4,1e-3")
    return values


@dataclass(frozen=True)
class Grid:
    """Every (lr, wd) pair of ``lrs x wds``, lr-major: head ``g`` is ``(lrs[g // len(wds)], wds[g % len(wds)])``."""

    lrs: tuple[float, ...]
    wds: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.lrs or not self.wds or any(v <= 0 for v in self.lrs) or any(v < 0 for v in self.wds):
            raise ConfigError(f"a probe grid needs learning rates > 0 and weight decays >= 0, got lrs={self.lrs} "
                             f"wds={self.wds}")

    def __len__(self) -> int:
        return len(self.lrs) * len(self.wds)

    def pairs(self) -> list[tuple[float, float]]:
        return [(lr, wd) for lr in self.lrs for wd in self.wds]

    def tensors(self) -> tuple[Tensor, Tensor]:
        """(G,) learning rates and (G,) weight decays."""
        lr, wd = zip(*self.pairs())
        return torch.tensor(lr), torch.tensor(wd)


class GridScores:
    """Per-head hits and losses accumulated on the device over one split (one host sync at the end).

    Args:
        num_heads: G.
        device: where the logits are.
        ks: the top-k accuracies to count (each <= C).
    """

    def __init__(self, num_heads: int, device: torch.device, ks: tuple[int, ...]):
        self.ks = ks
        self.hits = torch.zeros(len(ks), num_heads, device=device)
        self.loss = torch.zeros(num_heads, device=device)
        self.count = 0

    @torch.no_grad()
    def add(self, logits_GBC: Tensor, labels_B: Tensor) -> None:
        G, B, C = logits_GBC.shape
        labels = labels_B.to(logits_GBC.device)
        top = logits_GBC.topk(max(self.ks), dim=-1).indices == labels.view(1, B, 1)
        for i, k in enumerate(self.ks):
            self.hits[i] += top[..., :k].any(dim=-1).sum(dim=1)
        self.loss += F.cross_entropy(logits_GBC.reshape(G * B, C).float(), labels.repeat(G),
                                     reduction="none").view(G, B).sum(dim=1)
        self.count += B

    def result(self) -> dict[str, list[float]]:
        """``{"top1": [G], "top5": [G] (if counted), "loss": [G]}``, accuracies in [0, 1]."""
        if self.count == 0:
            raise DataError("no samples were scored")
        out = {f"top{k}": (self.hits[i] / self.count).tolist() for i, k in enumerate(self.ks)}
        out["loss"] = (self.loss / self.count).tolist()
        return out


def choose(holdout: dict[str, list[float]] | None) -> int:
    """The head with the best held-out top-1; ties go to the lower held-out loss. Without a
    held-out split (a grid of one head) that head."""
    if holdout is None:
        return 0
    return max(range(len(holdout["top1"])), key=lambda g: (holdout["top1"][g], -holdout["loss"][g]))


def grid_rows(grid: Grid, holdout: dict[str, list[float]] | None, val: dict[str, list[float]]) -> list[dict]:
    """One report row per head: lr, wd, held-out and validation top-1 (top-5, loss)."""
    rows = []
    for g, (lr, wd) in enumerate(grid.pairs()):
        row: dict = {"lr": lr, "wd": wd}
        if holdout is not None:
            row["holdout_top1"] = holdout["top1"][g]
            row["holdout_loss"] = holdout["loss"][g]
        row["val_top1"] = val["top1"][g]
        if "top5" in val:
            row["val_top5"] = val["top5"][g]
        rows.append(row)
    return rows
