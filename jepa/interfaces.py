"""The small contracts every JEPA component implements.

Nothing here knows about images: a modality (``jepa.modalities.*``) provides concrete
encoders, predictors, mask samplers and data transforms, and the core (model wiring, loss,
EMA, engine, training loop) only talks to these interfaces.

Shape vocabulary used in names and docstrings:
    B batch, N tokens of a full input, K context tokens kept, M target blocks,
    T tokens per target block, D encoder width.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
from pydantic import BaseModel
from torch import Tensor, nn


@dataclass(frozen=True)
class MaskSet:
    """Context and target token indices for one batch.

    Attributes:
        context_idx_BK: (B, K) int64, tokens the context encoder sees; every row has the
            same length K (samplers collate to a common length).
        target_idx_BMT: (B, M, T) int64, M target blocks of T tokens each; disjoint from
            the context of the same row.
    """

    context_idx_BK: Tensor
    target_idx_BMT: Tensor

    def __post_init__(self) -> None:
        assert self.context_idx_BK.ndim == 2, self.context_idx_BK.shape
        assert self.target_idx_BMT.ndim == 3, self.target_idx_BMT.shape
        assert self.context_idx_BK.shape[0] == self.target_idx_BMT.shape[0]

    @property
    def batch_size(self) -> int:
        return self.context_idx_BK.shape[0]

    @property
    def num_targets(self) -> int:
        return self.target_idx_BMT.shape[1]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "MaskSet":
        return MaskSet(
            self.context_idx_BK.to(device, non_blocking=non_blocking),
            self.target_idx_BMT.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> "MaskSet":
        return MaskSet(self.context_idx_BK.pin_memory(), self.target_idx_BMT.pin_memory())

    def __getitem__(self, rows: slice) -> "MaskSet":
        """Rows ``rows`` of the batch (used to split a global batch across ranks)."""
        return MaskSet(self.context_idx_BK[rows], self.target_idx_BMT[rows])


class Encoder(nn.Module, ABC):
    """Maps an input to a sequence of token representations.

    Attributes:
        embed_dim: D, the width of the output tokens.
    """

    embed_dim: int

    @abstractmethod
    def forward(self, x: Tensor, keep_idx_BK: Tensor | None = None) -> Tensor:
        """Encode ``x``.

        Args:
            x: a batch of inputs, modality-specific shape with batch first.
            keep_idx_BK: (B, K) int64 token indices to keep (the context); ``None`` keeps all.

        Returns:
            (B, K, D) tokens, or (B, N, D) when ``keep_idx_BK`` is None.
        """

    def forward_layers(self, x: Tensor, num_last: int = 1) -> list[Tensor]:
        """Outputs of the last ``num_last`` blocks, each (B, N, D), for frozen-feature evaluation.

        The last entry is the normed final output (equal to ``forward(x)``); earlier entries are
        normed with the same final norm. Modalities that cannot provide it raise.
        """
        raise NotImplementedError(f"{type(self).__name__} does not expose intermediate layers")


class Predictor(nn.Module, ABC):
    """Predicts target-token representations from context tokens and target positions."""

    @abstractmethod
    def forward(self, context_BKD: Tensor, context_idx_BK: Tensor, target_idx_BT: Tensor) -> Tensor:
        """Predict one target block per row.

        Args:
            context_BKD: (B, K, D) context-encoder outputs.
            context_idx_BK: (B, K) token positions of the context.
            target_idx_BT: (B, T) token positions to predict.

        Returns:
            (B, T, D) predicted target representations.
        """


class MaskSampler(ABC):
    """Samples context/target token indices for a batch. Runs in data-loader workers, so it
    must be cheap, free of per-token Python loops and deterministic given the generator."""

    num_tokens: int

    @abstractmethod
    def __call__(self, batch_size: int, generator: torch.Generator) -> MaskSet:
        """Sample masks for ``batch_size`` inputs using only ``generator`` for randomness."""


class TargetUpdater(ABC):
    """Updates the target encoder from the online (context) encoder after each step."""

    @abstractmethod
    def momentum(self, step: int) -> float:
        """Momentum used at optimiser step ``step`` (a pure function of the step)."""

    @abstractmethod
    def update(self, target_params: Sequence[Tensor], online_params: Sequence[Tensor], step: int) -> None:
        """In-place update of ``target_params`` towards ``online_params`` (same order and shapes)."""


class Modality(ABC):
    """The plugin contract: everything the core needs from one kind of data.

    A modality is registered under the ``jepa.modalities`` entry-point group; its recipe
    section is validated by ``config_model`` (strict pydantic model) and every builder
    receives only that section (or a slice of it).
    """

    name: ClassVar[str]
    config_model: ClassVar[type[BaseModel]]

    @abstractmethod
    def build_encoder(self, cfg: Any) -> Encoder:
        """The context encoder; the target encoder is a deep copy of it."""

    @abstractmethod
    def build_predictor(self, cfg: Any) -> Predictor:
        """The predictor for encoders built by ``build_encoder(cfg)``."""

    @abstractmethod
    def build_mask_sampler(self, cfg: Any) -> MaskSampler:
        """The mask sampler for the token grid implied by ``cfg``."""

    @abstractmethod
    def decode(self, cfg: Any, sample: dict[str, Any]) -> Any:
        """Decode one raw shard sample (webdataset dict of extension -> bytes) into an item.

        Raises:
            ValueError: the sample is corrupt or has no payload this modality can read.
        """

    @abstractmethod
    def train_batch(self, cfg: Any, items: list[Any], generator: torch.Generator) -> Tensor:
        """Randomly augment decoded items (training view) and stack them into a batch."""

    @abstractmethod
    def eval_batch(self, cfg: Any, items: list[Any]) -> Tensor:
        """Deterministic evaluation view of decoded items, stacked into a batch."""

    @abstractmethod
    def example_input(self, cfg: Any, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """A random input batch of the training shape (tests, export checks, benchmarks)."""

    def check(self, cfg: Any) -> list[tuple[str, str]]:
        """Semantic checks beyond types: returns ``(field_path, problem_and_fix)`` pairs,
        empty when the configuration is usable. Runs before anything heavy is built."""
        return []

    def describe(self, cfg: Any) -> str:
        """One line naming the model, e.g. ``ViT-H/14 @224``."""
        return self.name

    def train_flops_per_sample(self, cfg: Any) -> float | None:
        """Approximate training FLOPs per sample (forward + backward), or None if unknown."""
        return None
