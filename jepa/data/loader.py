"""The training-loader contract: what a training stream hands out and how its position is saved,
and how the loaders call the mask sampler (:func:`sample_masks`)."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cache
from typing import Any, Iterator

import torch
from torch import Tensor

from jepa.data.stream import derive_seed
from jepa.interfaces import MaskSampler, MaskSet, as_mask_pairs

#: Version of :meth:`TrainLoader.state_dict` (stored in checkpoints: public API).
STATE_VERSION = 1


@dataclass
class Batch:
    """One micro-batch for the training loop (what an objective's :class:`~jepa.objective.BatchMaker` makes).

    Attributes:
        inputs: (B, ...) from ``modality.train_batch`` (images: (B, 3, S, S) float32), or the first
            view of view-based objectives.
        masks: the (context, target) pairs for the B rows, one :class:`MaskSet` per pair (a single
            MaskSet passed in is stored as a 1-tuple; see :func:`~jepa.interfaces.as_mask_pairs`);
            empty for objectives without masks.
        extra_views: the further views of every row (view-based objectives: ``views`` is
            ``(inputs, *extra_views)``, global views first; ``modality.train_views``).
    """

    inputs: Tensor
    masks: tuple[MaskSet, ...] = ()
    extra_views: tuple[Tensor, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.masks, MaskSet) or len(self.masks):
            self.masks = as_mask_pairs(self.masks)
            assert self.masks[0].batch_size == self.inputs.shape[0], (self.masks[0].batch_size, self.inputs.shape)
        self.masks, self.extra_views = tuple(self.masks), tuple(self.extra_views)
        assert all(v.shape[0] == self.inputs.shape[0] for v in self.extra_views), [v.shape for v in self.extra_views]

    @property
    def views(self) -> tuple[Tensor, ...]:
        """Every view of the rows: ``inputs`` first."""
        return (self.inputs, *self.extra_views)

    def to(self, device: torch.device | str, non_blocking: bool = True) -> "Batch":
        return Batch(self.inputs.to(device, non_blocking=non_blocking),
                     tuple(m.to(device, non_blocking=non_blocking) for m in self.masks),
                     tuple(v.to(device, non_blocking=non_blocking) for v in self.extra_views))

    def pin_memory(self) -> "Batch":
        """Called by the DataLoader's pinning thread when CUDA is available; inputs already on the
        GPU (decoded there, e.g. ``modality.input.decode_device: cuda``) are left as they are."""
        def pin(t: Tensor) -> Tensor:
            return t if t.is_cuda else t.pin_memory()

        return Batch(pin(self.inputs), tuple(m.pin_memory() for m in self.masks), tuple(pin(v) for v in self.extra_views))

    def __getitem__(self, rows: slice) -> "Batch":
        """Rows ``rows`` of the inputs, of every mask pair and of every view."""
        return Batch(self.inputs[rows], tuple(m[rows] for m in self.masks), tuple(v[rows] for v in self.extra_views))


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

    def close(self) -> None:
        """Let worker processes stop (call before closing the iteration; a no-op without workers)."""


def collate_as_is(x: Any) -> Any:
    """Collate function of ``batch_size=None`` DataLoaders whose dataset yields whole batches."""
    return x


_STEP_DRAWS = -1
"""Seed part of the per-step draws (no batch or row index is negative, so no other seed collides)."""


def accumulation_steps(global_batch_size: int, world_size: int, micro_batch_size: int) -> int:
    """Micro batches per optimiser step on each rank, ``global / (world x micro)``: a rank's i-th
    micro batch (from 0) belongs to step ``i // accumulation_steps(...)``. A micro batch that does
    not divide the global batch (``jepa bench data``) counts as a step of its own."""
    return max(1, global_batch_size // (world_size * micro_batch_size))


def step_generator(seed: int, step: int) -> torch.Generator:
    """The randomness shared by every micro batch of optimiser step ``step``: on every rank, loader
    worker and accumulation micro batch (seeded by the run seed and the step alone)."""
    return torch.Generator().manual_seed(derive_seed(seed, _STEP_DRAWS, step))


@cache
def _takes_step_generator(sampler_type: type) -> bool:
    return "step_generator" in inspect.signature(sampler_type.__call__).parameters


def sample_masks(mask_sampler: MaskSampler, batch_size: int, generator: torch.Generator,
                 step_gen: torch.Generator) -> MaskSet | tuple[MaskSet, ...]:
    """The sampler's masks for one micro batch, as the training loaders draw them.

    A sampler whose ``__call__`` takes a ``step_generator`` keyword draws from it what the whole
    global batch of a step shares (image I-JEPA: the block sizes, as the authors share them
    across GPUs), and everything else from ``generator``; other samplers get ``generator`` alone.

    Args:
        batch_size: rows of the micro batch (the collation batch).
        generator: this micro batch's own randomness.
        step_gen: :func:`step_generator` of the micro batch's optimiser step.
    """
    if _takes_step_generator(type(mask_sampler)):
        return mask_sampler(batch_size, generator, step_generator=step_gen)
    return mask_sampler(batch_size, generator)
