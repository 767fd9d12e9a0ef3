"""The image modality's recipe section (``modality:`` with ``name: image``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from jepa.config import ModalityConfig, StrictModel

# name -> (width, depth, heads, mlp hidden), from the I-JEPA spec.
VIT_ARCHS: dict[str, tuple[int, int, int, int]] = {
    "vit_tiny": (192, 12, 3, 768),
    "vit_small": (384, 12, 6, 1536),
    "vit_base": (768, 12, 12, 3072),
    "vit_large": (1024, 24, 16, 4096),
    "vit_huge": (1280, 32, 16, 5120),
    "vit_giant": (1408, 40, 16, 6144),
}
ArchName = Literal["vit_tiny", "vit_small", "vit_base", "vit_large", "vit_huge", "vit_giant"]


class EncoderConfig(StrictModel):
    """Context/target ViT. ``embed_dim``/``depth``/``num_heads``/``mlp_dim`` override the arch's values."""

    arch: ArchName = Field("vit_huge", description="One of " + ", ".join(VIT_ARCHS))
    patch_size: int = Field(14, gt=0, description="Patch side in pixels (14 or 16 in the paper)")
    embed_dim: int | None = Field(None, gt=0)
    depth: int | None = Field(None, gt=0)
    num_heads: int | None = Field(None, gt=0)
    mlp_dim: int | None = Field(None, gt=0)
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

    embed_dim: int = Field(384, gt=0, description="Predictor width")
    depth: int = Field(12, gt=0, description="12 for ViT-H/14, 16 for ViT-g/16")
    num_heads: int | None = Field(None, gt=0, description="Default: the encoder's head count")
    mlp_ratio: float = Field(4.0, gt=0)


class MaskConfig(StrictModel):
    """Multi-block masking (paper defaults)."""

    mode: Literal["faithful", "fixed"] = Field(
        "faithful", description="'faithful' reproduces the authors' sampler; 'fixed' lets blocks touch the last "
        "row/column and collates contexts by random subsampling instead of raster-order truncation")
    num_targets: int = Field(4, gt=0, le=16, description="Target blocks per image (4 in the paper; at most 16)")
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect_ratio: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    context_aspect_ratio: tuple[float, float] = (1.0, 1.0)
    min_keep: int = Field(10, gt=0, description="Fewest patches a context or target block may have")

    @model_validator(mode="after")
    def _ranges(self) -> "MaskConfig":
        for name in ("target_scale", "target_aspect_ratio", "context_scale", "context_aspect_ratio"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must satisfy 0 < low <= high, got {(lo, hi)}")
        for name in ("target_scale", "context_scale"):
            if getattr(self, name)[1] > 1:
                raise ValueError(f"{name} is a fraction of the patch grid and must be <= 1, got {getattr(self, name)}")
        return self


class InputConfig(StrictModel):
    """Training view: RandomResizedCrop only (no flips, no colour jitter), as in the paper."""

    crop_size: int = Field(224, gt=0, description="Side of the square training crop in pixels")
    crop_scale: tuple[float, float] = (0.3, 1.0)
    in_chans: int = Field(3, gt=0)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


class ImageConfig(ModalityConfig):
    """Image I-JEPA: ViT encoders, ViT predictor, multi-block masks."""

    name: Literal["image"] = "image"
    encoder: EncoderConfig = EncoderConfig()
    predictor: PredictorConfig = PredictorConfig()
    mask: MaskConfig = MaskConfig()
    input: InputConfig = InputConfig()

    @property
    def grid_size(self) -> int:
        return self.input.crop_size // self.encoder.patch_size
