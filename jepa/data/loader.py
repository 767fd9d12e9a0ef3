"""The training-loader contract: what a training stream hands out and how its position is saved."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor

from jepa.interfaces import MaskSet

#: Version of :meth:`TrainLoader.state_dict` (stored in checkpoints: public API).
STATE_VERSION = 1


@dataclass
class Batch:
    """One micro-batch for the training loop.

    Attributes:
        inputs: (B, ...) from ``modality.train_batch`` (images: (B, 3, S, S) float32).
        masks: context/target indices for the B rows.
    """

    inputs: Tensor
    masks: MaskSet

    def to(self, device: torch.device | str, non_blocking: bool = True) -> "Batch":
        return Batch(self.inputs.to(device, non_blocking=non_blocking), self.masks.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        """Called by the DataLoader's pinning thread when CUDA is available."""
        return Batch(self.inputs.pin_memory(), self.masks.pin_memory())


class TrainLoader(ABC):
    """An endless iterable of :class:`Batch` whose position can be saved and restored."""

    @abstractmethod
    def __iter__(self) -> Iterator[Batch]:
        """Batches from the current position on (a second ``iter`` continues where the first stopped)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """JSON- and torch-serialisable position after the last batch handed out; pass it back as
        ``build_train_loader(..., state=...)`` to continue exactly there."""

    @property
    @abstractmethod
    def stats(self) -> dict[str, float]:
        """Counters: ``seen``, ``skipped``, ``skip_rate``, ``broken_shards``, ``batches``."""


def collate_as_is(x: Any) -> Any:
    """Collate function of ``batch_size=None`` DataLoaders whose dataset yields whole batches."""
    return x
