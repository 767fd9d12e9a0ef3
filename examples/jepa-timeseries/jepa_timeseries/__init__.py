"""A jepa modality plugin for multichannel 1-D time series (an example of an outside plugin).

Registered in this package's ``pyproject.toml`` under the ``jepa.modalities`` entry-point group
as ``timeseries``; ``jepa`` itself does not know this package. Inputs are (B, C, L) sequences cut
into L / P tokens of P time steps; targets are contiguous spans in time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from jepa.interfaces import DemoDataSpec, DynamicShapes, ExportDim, Modality
from jepa_timeseries.config import TimeSeriesConfig

__version__ = "0.1.0"
__all__ = ["TimeSeriesConfig", "TimeSeriesModality"]


class TimeSeriesModality(Modality):
    """Transformer encoders over time tokens, narrow predictor, multi-span masks, crop + amplitude views."""

    name = "timeseries"
    config_model = TimeSeriesConfig
    cfg: TimeSeriesConfig

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        """8 tokens of width 32, 2 blocks: the contract suite's CPU size (``jepa.testing``)."""
        return {
            "encoder": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4},
            "predictor": {"embed_dim": 16, "depth": 1, "num_heads": 4},
            "input": {"seq_len": 64},
            "mask": {"num_targets": 2, "target_scale": [0.15, 0.25], "min_context": 2},
        }

    # ------------------------------------------------------------------ builders

    def build_encoder(self):
        from jepa_timeseries.transformer import TimeSeriesEncoder

        e, i = self.cfg.encoder, self.cfg.input
        return TimeSeriesEncoder(seq_len=i.seq_len, patch_size=e.patch_size, in_chans=i.in_chans, embed_dim=e.embed_dim,
                                 depth=e.depth, num_heads=e.num_heads, mlp_ratio=e.mlp_ratio, drop_path=e.drop_path)

    def build_predictor(self):
        from jepa_timeseries.transformer import TimeSeriesPredictor

        p = self.cfg.predictor
        return TimeSeriesPredictor(num_tokens=self.cfg.num_tokens, embed_dim=self.cfg.encoder.embed_dim,
                                   predictor_dim=p.embed_dim, depth=p.depth, num_heads=p.num_heads, mlp_ratio=p.mlp_ratio)

    def build_mask_sampler(self):
        from jepa_timeseries.masks import SpanMaskSampler

        return SpanMaskSampler(self.cfg.num_tokens, self.cfg.mask)

    # ------------------------------------------------------------------ data

    def decode(self, sample: dict[str, Any]) -> Tensor:
        from jepa_timeseries.transforms import decode_series

        return decode_series(sample, self.cfg.input)

    def train_batch(self, items: list[Tensor], generator: torch.Generator) -> Tensor:
        from jepa_timeseries.transforms import train_batch

        return train_batch(items, self.cfg.input, generator)

    def eval_batch(self, items: list[Tensor]) -> Tensor:
        from jepa_timeseries.transforms import eval_batch

        return eval_batch(items, self.cfg.input)

    def example_input(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(batch_size, self.cfg.input.in_chans, self.cfg.input.seq_len, generator=generator)

    def file_suffixes(self) -> dict[str, str]:
        return {".npy": "npy"}

    def write_demo_data(self, out: Path, spec: DemoDataSpec) -> dict[str, Any]:
        """Labelled synthetic waveforms (one class per waveform family), ``spec.size`` time steps each
        (default: 1.25 x input.seq_len, so training crops vary)."""
        from jepa_timeseries.demo_data import write_demo_series

        length = spec.size if spec.size is not None else self.cfg.input.seq_len * 5 // 4
        if length < self.cfg.input.seq_len:
            raise ValueError(f"demo sequences of {length} steps are shorter than input.seq_len={self.cfg.input.seq_len}; "
                             "use a size of at least input.seq_len")
        return write_demo_series(out, num_train=spec.num_train, num_val=spec.num_val, num_classes=spec.num_classes,
                                 num_channels=self.cfg.input.in_chans, length=length, seed=spec.seed,
                                 max_count=spec.max_count, workers=spec.workers)

    # ------------------------------------------------------------------ description

    def check(self) -> list[tuple[str, str]]:
        from jepa_timeseries.masks import check_span_feasibility

        e, p, i = self.cfg.encoder, self.cfg.predictor, self.cfg.input
        problems: list[tuple[str, str]] = []
        if i.seq_len % e.patch_size:
            problems.append(("input.seq_len", f"{i.seq_len} is not a multiple of encoder.patch_size={e.patch_size}; "
                             f"use {max(e.patch_size, i.seq_len // e.patch_size * e.patch_size)}"))
        for section, dim, heads in (("encoder", e.embed_dim, e.num_heads), ("predictor", p.embed_dim, p.num_heads)):
            if dim % heads:
                problems.append((f"{section}.num_heads", f"{heads} heads do not divide {section}.embed_dim={dim}"))
            if dim % 2:
                problems.append((f"{section}.embed_dim", f"{dim} must be even for the 1-D sin-cos positions"))
        if not problems:
            problems += [(f"mask.{f}" if f else "mask", m) for f, m in check_span_feasibility(self.cfg.num_tokens, self.cfg.mask)]
        return problems

    def describe(self) -> str:
        e = self.cfg.encoder
        return f"TS-Transformer D={e.embed_dim} x{e.depth} /P{e.patch_size} @{self.cfg.input.in_chans}x{self.cfg.input.seq_len}"

    def train_flops_per_sample(self) -> float:
        from jepa_timeseries.flops import train_flops_per_sequence

        return train_flops_per_sequence(self.cfg)

    # ------------------------------------------------------------------ export

    def export_inputs(self, encoder, generator: torch.Generator) -> list[Tensor]:
        """The training length, and a longer one (positions computed on the fly) at another batch size."""
        i, p = self.cfg.input, self.cfg.encoder.patch_size
        return [self.example_input(2, generator),
                torch.randn(3, i.in_chans, i.seq_len + 3 * p, generator=generator)]

    def export_dynamic_shapes(self, encoder) -> DynamicShapes:
        """``--format torch-export``: any length (dimension 2 of (B, C, L)) that is a multiple of the patch, from 2
        to 4096 tokens; the program computes the positions of every length (the encoder's forward takes its stored
        table at the training length, a branch torch.export would fix to the traced length)."""
        from jepa_timeseries.transformer import any_length_tokens

        return DynamicShapes({2: ExportDim("length", self.cfg.encoder.patch_size, 4096, min_multiple=2)},
                             forward=any_length_tokens)

    def export_metadata(self, encoder) -> dict[str, Any]:
        """How to feed an exported encoder, and its architecture (export metadata is public API: keys only get added)."""
        e, i = self.cfg.encoder, self.cfg.input
        return {
            "input": {
                "layout": "(B, C, L) float32",
                "in_chans": i.in_chans,
                "seq_len": i.seq_len,
                "length_multiple_of": e.patch_size,
                "standardize": "per sequence and channel over time: (x - mean) / (std + 1e-6)" if i.standardize else None,
            },
            "arch": {"name": "timeseries_transformer", "embed_dim": e.embed_dim, "depth": e.depth,
                     "num_heads": e.num_heads, "mlp_ratio": e.mlp_ratio, "patch_size": e.patch_size,
                     "num_tokens": self.cfg.num_tokens},
        }
