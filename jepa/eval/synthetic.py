"""A synthetic labelled split and a tiny token encoder, for memory and throughput checks of the
streaming probes at any size (``tools/eval_memory.py``, tests) without data on disk.

Sample ``i`` has label ``i % C`` and input ``code_BP = centre[label] + noise`` (P numbers, made
when its batch is read, from a seed of the batch's first index): nothing of size N is stored
besides the (N,) labels. :class:`TokenEncoder` maps a code to T tokens of width D through one
fixed random linear map, so the class can be read from the tokens, at a cost per sample far
below a ViT's: the probe, not the encoder, dominates.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor, nn

from jepa.data import derive_seed
from jepa.eval.reader import LabelIndex, LabelledData, PassSpec


class TokenEncoder(nn.Module):
    """(B, P) codes -> (B, T, D) tokens: one fixed random linear map.

    Args:
        code_dim: P.
        num_tokens: T.
        dim: D.
        seed: seeds the map.
    """

    depth = 1

    def __init__(self, code_dim: int, num_tokens: int, dim: int, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("map_PF", torch.randn(code_dim, num_tokens * dim, generator=gen) / code_dim ** 0.5)
        self.num_tokens, self.dim = num_tokens, dim

    def forward(self, code_BP: Tensor) -> Tensor:
        return (code_BP @ self.map_PF).view(-1, self.num_tokens, self.dim)

    def forward_layers(self, x: Tensor, num_last: int = 1) -> list[Tensor]:
        return [self.forward(x)]


class SyntheticData(LabelledData):
    """``num_samples`` synthetic labelled samples (see the module docstring); no files.

    Args:
        num_samples: N.
        num_classes: C.
        code_dim: P, the input width.
        noise: standard deviation of each input's noise (class centres have unit-variance entries).
        seed: seeds the centres and the noise; give the validation split another seed.
        centres_seed: seeds the class centres (equal for the splits of one task).
    """

    kind = "synthetic"

    def __init__(self, num_samples: int, num_classes: int, code_dim: int = 16, noise: float = 1.0, seed: int = 0,
                 centres_seed: int = 0):
        super().__init__(f"synthetic:{num_samples}x{num_classes}", None)  # type: ignore[arg-type]
        self.num_samples, self.num_classes, self.noise, self.seed = num_samples, num_classes, noise, seed
        self.centres_CP = torch.randn(num_classes, code_dim, generator=torch.Generator().manual_seed(centres_seed))

    def _max_workers(self) -> int:
        return 0

    def _dataset(self, spec: PassSpec):  # pragma: no cover - passes() is overridden
        raise NotImplementedError

    def scan(self, num_workers: int = 0) -> LabelIndex:
        self.index = LabelIndex(torch.arange(self.num_samples) % self.num_classes)
        return self.index

    def passes(self, spec: PassSpec, num_workers: int = 0) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        assert self.index is not None, "scan() first"
        idx_N = torch.arange(self.num_samples) if spec.keep_N is None else spec.keep_N.nonzero().flatten()
        if spec.shuffle_seed is not None:
            gen = torch.Generator().manual_seed(derive_seed(spec.shuffle_seed, spec.epoch))
            idx_N = idx_N[torch.randperm(idx_N.numel(), generator=gen)]
        for idx_B in idx_N.split(spec.batch_size):
            y = self.index.labels_N[idx_B]
            gen = torch.Generator().manual_seed(derive_seed(self.seed, int(idx_B[0])))
            code = self.centres_CP[y] + self.noise * torch.randn(idx_B.numel(), self.centres_CP.shape[1], generator=gen)
            yield code, y, idx_B
        self.skipped_last_pass = 0
