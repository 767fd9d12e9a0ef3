"""The time-series modality's recipe section (``modality:`` with ``name: timeseries``).

Defaults are a small model for short multichannel signals (3 channels, 256 time steps, tokens of
8 steps: 32 tokens), small enough that a few CPU training steps take seconds.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from jepa.config import ModalityConfig, StrictModel, check_range


class EncoderConfig(StrictModel):
    """Context/target transformer over time tokens (each token: ``patch_size`` steps of every channel)."""

    patch_size: int = Field(8, gt=0, description="P, time steps per token; input.seq_len must be a multiple of it")
    embed_dim: int = Field(64, gt=0, description="D, token width (even, for the sin-cos positions)")
    depth: int = Field(4, gt=0, description="Transformer blocks")
    num_heads: int = Field(4, gt=0, description="Attention heads (must divide embed_dim)")
    mlp_ratio: float = Field(4.0, gt=0, description="MLP hidden width as a multiple of embed_dim")
    drop_path: float = Field(0.0, ge=0, lt=1, description="Stochastic depth of the last block (linear in depth)")


class PredictorConfig(StrictModel):
    """Narrow transformer predictor with a learned mask token."""

    embed_dim: int = Field(32, gt=0, description="Predictor width (even)")
    depth: int = Field(2, gt=0, description="Predictor blocks")
    num_heads: int = Field(4, gt=0, description="Attention heads (must divide predictor.embed_dim)")
    mlp_ratio: float = Field(4.0, gt=0)


class MaskConfig(StrictModel):
    """Multi-block masking in time: M contiguous target spans, the context is everything else."""

    num_targets: int = Field(3, gt=0, description="M, target spans per sequence")
    target_scale: tuple[float, float] = Field(
        (0.1, 0.2), description="Span length as a fraction of the tokens; one length is drawn per batch")
    min_context: int = Field(4, gt=0, description="Fewest context tokens a sequence may keep")

    @model_validator(mode="after")
    def _ranges(self) -> "MaskConfig":
        check_range("target_scale", self.target_scale, 1.0)
        return self


class InputConfig(StrictModel):
    """Samples are float arrays (C, L_stored), L_stored >= seq_len. Training view: a random crop of
    seq_len steps, per-channel standardisation, random amplitude scaling. Evaluation view: the
    centre crop, standardised."""

    in_chans: int = Field(3, gt=0, description="C, channels per sample")
    seq_len: int = Field(256, gt=0, description="L, time steps the encoder sees in training (a multiple of encoder.patch_size)")
    standardize: bool = Field(True, description="Standardise each channel of a crop over time (zero mean, unit std)")
    amplitude_scale: tuple[float, float] = Field(
        (0.5, 2.0), description="Training view: multiply each crop by a factor drawn log-uniformly from this range")

    @model_validator(mode="after")
    def _ranges(self) -> "InputConfig":
        check_range("amplitude_scale", self.amplitude_scale)
        return self


class TimeSeriesConfig(ModalityConfig):
    """Time-series JEPA: transformer over time tokens, contiguous target spans."""

    name: Literal["timeseries"] = "timeseries"
    encoder: EncoderConfig = EncoderConfig()
    predictor: PredictorConfig = PredictorConfig()
    mask: MaskConfig = MaskConfig()
    input: InputConfig = InputConfig()

    @property
    def num_tokens(self) -> int:
        """N, tokens of a training crop."""
        return self.input.seq_len // self.encoder.patch_size
