"""Recipe sections of the transformers built on :mod:`jepa.nn`: the ViT size table, the encoder and
predictor sections, and the bounds on every size that sets memory.

The image and video modalities use these sections as their ``encoder`` and ``predictor`` (the video
encoder adds a tubelet); a plugin's transformer may too.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from jepa.config import StrictModel
from jepa.errors import ConfigError

# name -> (width, depth, heads, mlp hidden): docs/method/ijepa.md, "Architecture". vit_giant_xformers is
# V-JEPA 2's ViT-g (the authors' src/models/vision_transformer.py: 22 heads of 64, MLP ratio 48/11).
VIT_ARCHS: dict[str, tuple[int, int, int, int]] = {
    "vit_tiny": (192, 12, 3, 768),
    "vit_small": (384, 12, 6, 1536),
    "vit_base": (768, 12, 12, 3072),
    "vit_large": (1024, 24, 16, 4096),
    "vit_huge": (1280, 32, 16, 5120),
    "vit_giant": (1408, 40, 16, 6144),
    "vit_giant_xformers": (1408, 40, 22, 6144),
}
ArchName = Literal["vit_tiny", "vit_small", "vit_base", "vit_large", "vit_huge", "vit_giant", "vit_giant_xformers"]

# Upper bounds of the sizes that set memory, far above any real model (ViT-22B: width 6144, depth 48,
# MLP 24576), so that a typo is a recipe error instead of an allocation that fills the machine.
MAX_WIDTH = 32_768
"""Widest encoder or predictor (``embed_dim``)."""
MAX_DEPTH = 1024
"""Most transformer blocks (``depth``)."""
MAX_HEADS = 1024
"""Most attention heads (``num_heads``)."""
MAX_MLP_DIM = 262_144
"""Widest MLP hidden layer (``mlp_dim``, or predictor ``embed_dim x mlp_ratio``)."""
_SIZE_WHY = "bounded far above any real model, since parameters and activations grow with it"


class EncoderConfig(StrictModel):
    """Context/target ViT. ``embed_dim``/``depth``/``num_heads``/``mlp_dim`` override the arch's values."""

    arch: ArchName = Field("vit_huge", description="One of " + ", ".join(VIT_ARCHS))
    patch_size: int = Field(14, gt=0, description="Patch side in pixels (14 or 16 in the paper)")
    embed_dim: int | None = Field(None, gt=0, le=MAX_WIDTH, description=f"Width (at most {MAX_WIDTH}: {_SIZE_WHY})")
    depth: int | None = Field(None, gt=0, le=MAX_DEPTH, description=f"Blocks (at most {MAX_DEPTH}: {_SIZE_WHY})")
    num_heads: int | None = Field(None, gt=0, le=MAX_HEADS, description=f"Attention heads (at most {MAX_HEADS}: "
                                  f"{_SIZE_WHY})")
    mlp_dim: int | None = Field(None, gt=0, le=MAX_MLP_DIM, description=f"MLP hidden width (at most {MAX_MLP_DIM}: "
                                f"{_SIZE_WHY})")
    drop_path: float = Field(0.0, ge=0, lt=1)

    @property
    def dims(self) -> tuple[int, int, int, int]:
        """(width, depth, heads, mlp hidden) after overrides."""
        w, d, h, m = VIT_ARCHS[self.arch]
        if self.embed_dim is not None and self.mlp_dim is None:
            m = 4 * self.embed_dim
        return (self.embed_dim or w, self.depth or d, self.num_heads or h, self.mlp_dim or m)


class PredictorConfig(StrictModel):
    """Narrow ViT predictor."""

    embed_dim: int = Field(384, gt=0, le=MAX_WIDTH, description=f"Predictor width (at most {MAX_WIDTH}: {_SIZE_WHY})")
    depth: int = Field(12, gt=0, le=MAX_DEPTH, description=f"12 for ViT-H/14, 16 for ViT-g/16 (at most {MAX_DEPTH}: "
                       f"{_SIZE_WHY})")
    num_heads: int | None = Field(None, gt=0, le=MAX_HEADS, description=f"Default: the encoder's head count (at most "
                                  f"{MAX_HEADS}: {_SIZE_WHY})")
    mlp_ratio: float = Field(4.0, gt=0, description=f"MLP hidden width / embed_dim (the hidden width at most "
                             f"{MAX_MLP_DIM}: {_SIZE_WHY})")

    @model_validator(mode="after")
    def _mlp_width(self) -> "PredictorConfig":
        if self.embed_dim * self.mlp_ratio > MAX_MLP_DIM:
            raise ConfigError(f"embed_dim x mlp_ratio = {self.embed_dim} x {self.mlp_ratio:g} is an MLP hidden width of "
                             f"{self.embed_dim * self.mlp_ratio:.4g}, more than {MAX_MLP_DIM} ({_SIZE_WHY}); "
                             "lower mlp_ratio")
        return self
