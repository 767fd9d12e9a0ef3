"""The image modality's recipe section (``modality:`` with ``name: image``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from jepa.config import ModalityConfig, StrictModel, check_range
from jepa.errors import ConfigError
from jepa.nn.config import VIT_ARCHS, EncoderConfig, PredictorConfig  # noqa: F401 - VIT_ARCHS for released.py
from jepa.vision.crops import CropViewsConfig
from jepa.vision.pixels import MAX_CROP

MAX_CHANNELS = 1024
"""Most input channels."""


class MaskConfig(StrictModel):
    """Multi-block masking (paper defaults)."""

    mode: Literal["faithful", "fixed"] = Field(
        "faithful", description="'faithful' reproduces the authors' sampler; 'fixed' lets blocks touch the last "
        "row/column and keeps every context token (rows padded to the batch's longest context, the padding "
        "masked out of attention) instead of cutting every context to the shortest in raster order")
    num_targets: int = Field(4, gt=0, le=16, description="Target blocks per image (4 in the paper; at most 16)")
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect_ratio: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    context_aspect_ratio: tuple[float, float] = (1.0, 1.0)
    min_keep: int = Field(10, gt=0, description="Fewest patches a context or target block may have")

    @model_validator(mode="after")
    def _ranges(self) -> "MaskConfig":
        for name in ("target_scale", "target_aspect_ratio", "context_scale", "context_aspect_ratio"):
            check_range(name, getattr(self, name))
        for name in ("target_scale", "context_scale"):
            if getattr(self, name)[1] > 1:
                raise ConfigError(f"{name} is a fraction of the patch grid and must be <= 1, got {getattr(self, name)}")
        return self


class InputConfig(StrictModel):
    """Training view (RandomResizedCrop only: no flips, no colour jitter, as in the paper) and JPEG decoding."""

    crop_size: int = Field(224, gt=0, le=MAX_CROP, description=f"Side of the square training crop in pixels (at most "
                           f"{MAX_CROP}: every sample of a batch is crop_size^2 x channels values in memory)")
    crop_scale: tuple[float, float] = (0.3, 1.0)
    in_chans: int = Field(3, gt=0, le=MAX_CHANNELS, description=f"Input channels (at most {MAX_CHANNELS}: every sample "
                          "and the patch embedding grow with it)")
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    jpeg_reduced_decode: bool = Field(
        False, description="Decode a JPEG at 1/2, 1/4 or 1/8 of its size (libjpeg DCT scaling) when every crop the "
        "training view can draw from it, and the evaluation resize, stays at least the output size at that scale "
        "(at 224: images of about 0.9 Mpixel and more; ImageNet's typical 500x375 never qualifies). Crop boxes are "
        "drawn as before, their edges rounded to the reduced pixel grid. Saves the inverse DCT, colour conversion "
        "and resize work but not the entropy decoding, which dominates detailed images (1.24x images/s on "
        "1600x1200 JPEGs at 4 bits/pixel; docs/benchmarks.md). Changes pixels (PSNR about 37 dB against the "
        "full-size path there), so off by default: the authors decode every image at full size")
    decode_device: Literal["cpu", "cuda"] = Field(
        "cpu", description="'cuda': decoding a sample reads only a JPEG's header; the batch's JPEGs are decoded "
        "(nvjpeg, one call per batch), cropped and normalised on the GPU when the batch is made, which must be in "
        "the training process: data.num_workers=0 (a forked loader worker cannot use CUDA). A JPEG cut short (no end "
        "marker) is decoded on the CPU as usual, so it is skipped and counted; one corrupt inside its data stops "
        "the batch with an error naming it. Other formats, EXIF-rotated and CMYK JPEGs are decoded on the CPU. "
        "Not yet measured on a GPU (docs/benchmarks.md)")
    batch_dtype: Literal["float32", "uint8"] = Field(
        "float32", description="'uint8': the training view hands its resized crops over as uint8 and the training "
        "loop normalises them on its device (Modality.finish_batch) with the same arithmetic, so the encoder sees "
        "the same values; a loader worker then writes, and the copy to the GPU moves, a quarter of the bytes. Meant "
        "for GPU training: on a CPU it moves the normalisation from the loader workers into the training process. "
        "Evaluation views stay float32")


class ViewsConfig(CropViewsConfig):
    """Multi-view augmentation (``Modality.train_views``) for view-based objectives such as LeJEPA; I-JEPA
    does not use it. Defaults are the LeJEPA paper's (2 global views at 224 px, local views at 96 px)."""

    local_size: int | None = Field(
        None, gt=0, description="Side of a local view in pixels, a multiple of encoder.patch_size and at most "
        "input.crop_size; None: round(crop_size * 96 / 224) rounded to a multiple of the patch (at least one patch)")
    blur_p: float = Field(0.5, ge=0, le=1, description="Probability of a Gaussian blur of a global view")
    local_blur_p: float = Field(0.5, ge=0, le=1, description="Probability of a Gaussian blur of a local view")
    blur_sigma: tuple[float, float] = Field((0.1, 2.0), description="Blur standard deviation in output pixels, drawn "
                                            "uniformly (the kernel is cut at 3 sigma)")
    solarize_p: float = Field(0.2, ge=0, le=1, description="Probability of solarizing a view (values >= 128 of 255 inverted)")

    @model_validator(mode="after")
    def _blur_range(self) -> "ViewsConfig":
        check_range("blur_sigma", self.blur_sigma)
        return self


class ImageConfig(ModalityConfig):
    """Image I-JEPA: ViT encoders, ViT predictor, multi-block masks."""

    name: Literal["image"] = "image"
    encoder: EncoderConfig = EncoderConfig()
    predictor: PredictorConfig = PredictorConfig()
    mask: MaskConfig = MaskConfig()
    input: InputConfig = InputConfig()
    views: ViewsConfig = Field(default_factory=ViewsConfig, description="Multi-view augmentation for view-based "
                               "objectives (LeJEPA); unused by I-JEPA")

    @property
    def grid_size(self) -> int:
        return self.input.crop_size // self.encoder.patch_size
