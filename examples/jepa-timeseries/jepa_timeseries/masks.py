"""Multi-block masking in time: M contiguous target spans, the context is their complement.

Per batch one span length ``T = round(s * N)`` is drawn (``s`` uniform in ``mask.target_scale``,
so all spans of a batch stack into one ``(B, M, T)`` tensor); per sequence, M span starts are drawn
uniformly in ``[0, N - T]`` (spans may overlap). The context is every token covered by no span;
contexts are collated to the batch's shortest one by a uniformly random subset of each row, kept
sorted, so the collation has no bias towards the start of the sequence (the core's
``jepa.nn.grid_masks.cut_to_shortest``).

Feasibility is a deterministic bound: when ``M * T_max <= N - min_context`` every row keeps at
least ``min_context`` context tokens whatever the draw, so the sampler never re-draws.
"""

from __future__ import annotations

import torch

from jepa.interfaces import MaskSampler, MaskSet
from jepa.nn.grid_masks import cut_to_shortest
from jepa_timeseries.config import MaskConfig


def span_lengths(num_tokens: int, cfg: MaskConfig) -> tuple[int, int]:
    """Shortest and longest span length (tokens) the sampler can draw on ``num_tokens`` tokens."""
    lo, hi = cfg.target_scale
    return max(1, min(num_tokens, round(lo * num_tokens))), max(1, min(num_tokens, round(hi * num_tokens)))


def check_span_feasibility(num_tokens: int, cfg: MaskConfig) -> list[tuple[str, str]]:
    """``(field, problem and fix)`` pairs, fields relative to the mask section; empty when feasible."""
    if num_tokens < 2:
        return [("", f"masking needs at least 2 tokens, got {num_tokens}; lengthen input.seq_len or shrink encoder.patch_size")]
    _, longest = span_lengths(num_tokens, cfg)
    covered = cfg.num_targets * longest
    if covered > num_tokens - cfg.min_context:
        return [("target_scale", (
            f"{cfg.num_targets} spans of up to {longest} tokens (target_scale={cfg.target_scale} of {num_tokens} tokens) "
            f"may cover {covered} tokens, leaving fewer than min_context={cfg.min_context}; lower num_targets or "
            f"target_scale, or lower min_context to {max(0, num_tokens - covered)} or less"))]
    return []


class SpanMaskSampler(MaskSampler):
    """Samples M contiguous target spans and their complement as context (see module docstring).

    Args:
        num_tokens: N, tokens of a training sequence.
        cfg: the ``mask`` section.

    Raises:
        ValueError: the geometry is infeasible (see :func:`check_span_feasibility`).
    """

    def __init__(self, num_tokens: int, cfg: MaskConfig):
        problems = check_span_feasibility(num_tokens, cfg)
        if problems:
            raise ValueError("SpanMaskSampler: " + "; ".join(f"mask.{f}: {m}" if f else m for f, m in problems))
        self.num_tokens = num_tokens
        self.cfg = cfg
        self.shortest, self.longest = span_lengths(num_tokens, cfg)

    def __call__(self, batch_size: int, generator: torch.Generator) -> MaskSet:
        """Masks for a batch.

        Returns:
            MaskSet with ``context_idx_BK`` (B, K) int64 ascending, K the batch's shortest
            context, and ``target_idx_BMT`` (B, M, T) int64, each span ascending.
        """
        if batch_size < 1:
            raise ValueError(f"SpanMaskSampler: batch_size must be >= 1, got {batch_size}")
        n, m = self.num_tokens, self.cfg.num_targets
        lo, hi = self.cfg.target_scale
        scale = lo + float(torch.rand((), generator=generator)) * (hi - lo)
        t = min(self.longest, max(self.shortest, round(scale * n)))
        starts_BM = torch.randint(0, n - t + 1, (batch_size, m), generator=generator)
        target_idx_BMT = starts_BM.unsqueeze(-1) + torch.arange(t)
        covered_BN = torch.zeros(batch_size, n, dtype=torch.bool)
        covered_BN.scatter_(1, target_idx_BMT.flatten(1), True)
        context_idx_BK = cut_to_shortest(~covered_BN, "random", generator)  # the core's collation
        assert context_idx_BK.shape[1] >= self.cfg.min_context, (context_idx_BK.shape, self.cfg)  # the feasibility bound
        return MaskSet(context_idx_BK, target_idx_BMT)
