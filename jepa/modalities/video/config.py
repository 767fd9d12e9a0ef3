"""The video modality's recipe section (``modality:`` with ``name: video``).

Defaults are the V-JEPA ViT-L/16 pretraining setting (Bardes et al., 2024; the authors'
``configs/pretrain/vitl16.yaml``): 16 frames at frame step 4, 224 px crops, tubelet 2, patch 16,
predictor depth 12 and width 384, and two mask generators per clip (8 blocks at spatial scale
0.15 and 2 blocks at 0.7, aspect ratio 0.75-1.5, each block spanning all time); see docs/method/vjepa.md,
"Masks" and "Training clip".
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from jepa.config import ModalityConfig, StrictModel, check_range
from jepa.nn.config import MAX_DEPTH, ArchName, EncoderConfig, PredictorConfig
from jepa.vision.crops import CropViewsConfig
from jepa.vision.pixels import MAX_CROP

MAX_FRAMES = 1024
"""Most frames per clip (V-JEPA: 16; long-clip models 64)."""
MAX_BLOCKS = 1024
"""Most mask blocks per generator (V-JEPA: 8 and 2)."""
MAX_GENERATORS = 64
"""Most mask generators (V-JEPA: 2)."""


class VideoEncoderConfig(EncoderConfig):
    """Context/target video ViT: the image ViT's sizes (``arch`` and overrides) with a tubelet
    patch embedding. ``embed_dim``/``depth``/``num_heads``/``mlp_dim`` override the arch's values."""

    arch: ArchName = Field("vit_large", description="One of vit_tiny, vit_small, vit_base, vit_large, vit_huge, vit_giant, "
                           "vit_giant_xformers (V-JEPA 2's ViT-g: 22 heads)")
    patch_size: int = Field(16, gt=0, description="Patch side in pixels (16 in V-JEPA)")
    tubelet_size: int = Field(2, gt=0, description="Frames per token (the temporal patch size, 2 in V-JEPA)")
    uniform_power: bool = Field(
        True, description="3-D sin-cos split: true gives time, height and width equal channel shares "
        "(2*ceil(D/6) each, V-JEPA's setting); false gives time D/2 and height, width D/4 each")
    pos_embed: Literal["sincos", "rope"] = Field(
        "sincos", description="Positions: 'sincos' adds a fixed 3-D sin-cos table to the tokens (V-JEPA); 'rope' rotates "
        "queries and keys in every block by the tokens' time, height and width (V-JEPA 2; docs/method/vjepa.md, "
        "\"V-JEPA 2\")")
    depth_scaled_init: bool = Field(
        False, description="Divide block i's attn.proj and mlp.fc2 weights by sqrt(2 (i+1)) after the init (V-JEPA 2: "
        "true)")


class VideoPredictorConfig(PredictorConfig):
    """Narrow ViT predictor (the image predictor's fields) with one learned mask token per mask generator."""

    depth: int = Field(12, gt=0, le=MAX_DEPTH, description=f"Predictor blocks (12 in V-JEPA; at most {MAX_DEPTH}: "
                       "parameters and activations grow with it)")
    pos_embed: Literal["sincos", "rope"] | None = Field(
        None, description="Positions of the predictor's tokens: 'sincos' or 'rope' as encoder.pos_embed; None: the "
        "encoder's")
    num_mask_tokens: int | None = Field(
        None, gt=0, le=MAX_GENERATORS * 16, description="Learned mask tokens; None: one per mask generator. More than "
        "the generators reads a checkpoint that has more (the V-JEPA 2 release: 10)")
    zero_init_mask_tokens: bool = Field(True, description="Mask tokens start at zero (V-JEPA, V-JEPA 2); false: "
                                        "truncated normal std 0.02")
    shared_mask_token: bool = Field(
        False, description="Every mask generator uses mask token 0 (V-JEPA 2 on clips of one length: its token is "
        "chosen by clip length, not by generator)")
    depth_scaled_init: bool = Field(False, description="As encoder.depth_scaled_init, for the predictor blocks")


class MaskGeneratorConfig(StrictModel):
    """One 3-D multi-block mask generator: ``num_blocks`` target blocks per clip whose union is
    the target; the context is everything else."""

    spatial_scale: tuple[float, float] = Field((0.15, 0.15), description="Block area as a fraction of the spatial patch grid")
    temporal_scale: tuple[float, float] = Field((1.0, 1.0), description="Block length as a fraction of the token time steps")
    aspect_ratio: tuple[float, float] = Field((0.75, 1.5), description="Block height / width, in patches")
    num_blocks: int = Field(8, gt=0, le=MAX_BLOCKS, description=f"Blocks per clip; the target is their union (at most "
                            f"{MAX_BLOCKS}: the sampler draws and paints every block of every clip)")
    max_temporal_keep: float = Field(
        1.0, gt=0, le=1, description="Fraction of the token time steps the context may use; later steps are targets")

    @model_validator(mode="after")
    def _ranges(self) -> "MaskGeneratorConfig":
        check_range("spatial_scale", self.spatial_scale, 1.0)
        check_range("temporal_scale", self.temporal_scale, 1.0)
        check_range("aspect_ratio", self.aspect_ratio)
        return self


def _vjepa_generators() -> list[MaskGeneratorConfig]:
    return [MaskGeneratorConfig(spatial_scale=(0.15, 0.15), num_blocks=8),
            MaskGeneratorConfig(spatial_scale=(0.7, 0.7), num_blocks=2)]


class VideoMaskConfig(StrictModel):
    """3-D multi-block masking: each generator gives its own (context, target) pair per clip."""

    mode: Literal["faithful", "fixed"] = Field(
        "faithful", description="How contexts and targets are cut to the batch's shortest row: 'faithful' keeps the "
        "first tokens in raster order (the authors' collation, which drops the last time steps of longer rows); "
        "'fixed' keeps a uniformly random subset of each row")
    generators: list[MaskGeneratorConfig] = Field(
        default_factory=_vjepa_generators, min_length=1, max_length=MAX_GENERATORS,
        description=f"Mask generators; V-JEPA: 8 blocks at spatial scale 0.15 and 2 blocks at 0.7 (at most "
        f"{MAX_GENERATORS}: every generator is one more context-encoder and predictor pass per step)")
    min_keep: int = Field(1, gt=0, description="Fewest context tokens a clip may keep (V-JEPA: a non-empty context)")


class VideoInputConfig(StrictModel):
    """Clip sampling and the training view (one RandomResizedCrop per clip, optional flip)."""

    num_frames: int = Field(16, gt=0, le=MAX_FRAMES, description=f"Frames per clip (at most {MAX_FRAMES}: every clip of "
                            "a batch is num_frames x crop_size^2 x 3 values in memory)")
    frame_step: int = Field(4, gt=0, description="Stride between sampled frames of the source video")
    crop_size: int = Field(224, gt=0, le=MAX_CROP, description=f"Side of the square training crop in pixels (at most "
                           f"{MAX_CROP}: every clip of a batch is num_frames x crop_size^2 x 3 values in memory)")
    crop_scale: tuple[float, float] = Field((0.3, 1.0), description="RandomResizedCrop area fraction")
    crop_aspect: tuple[float, float] = Field((0.75, 1.35), description="RandomResizedCrop aspect ratio (w/h)")
    horizontal_flip: bool = Field(True, description="Flip the whole clip left-right with probability 0.5 (V-JEPA)")
    in_chans: int = Field(3, gt=0, description="Channels; videos decode to RGB, so 3")
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    decoder: Literal["process", "in_process"] = Field(
        "process", description="Where PyAV decodes: 'process' (a child process per loader worker, so a video that "
        "crashes or hangs the decoder is skipped and counted like a corrupt one) or 'in_process' (no isolation: "
        "a decoder crash ends the run)")
    batch_dtype: Literal["float32", "uint8"] = Field(
        "float32", description="'uint8': the training view hands its clips over as uint8 (B, F, C, S, S) and the "
        "training loop normalises them on its device (Modality.finish_batch) with the same arithmetic, so the "
        "encoder sees the same values; a quarter of the bytes cross from the loader workers and to the GPU. Meant "
        "for GPU training. Evaluation views stay float32")

    @model_validator(mode="after")
    def _ranges(self) -> "VideoInputConfig":
        check_range("crop_scale", self.crop_scale, 1.0)
        check_range("crop_aspect", self.crop_aspect)
        return self

    @property
    def clip_span(self) -> int:
        """Source frames one clip covers: ``(num_frames - 1) * frame_step + 1``."""
        return (self.num_frames - 1) * self.frame_step + 1


class VideoViewsConfig(CropViewsConfig):
    """Multi-view augmentation (``Modality.train_views``) for view-based objectives such as LeJEPA; V-JEPA
    does not use it. Every view is a clip of frames ``input.frame_step`` apart from its own random start,
    with its own crop box for the whole clip (aspect ``input.crop_aspect``), then the flip (``flip_p``,
    in place of ``input.horizontal_flip``) and colour augmentation of the image views, one draw per clip."""

    local_size: int | None = Field(
        None, gt=0, description="Side of a local view in pixels, a multiple of encoder.patch_size and at most "
        "input.crop_size; None: half of input.crop_size rounded to a multiple of the patch (at least one patch)")
    local_num_frames: int | None = Field(
        None, gt=0, description="Frames of a local view, a multiple of encoder.tubelet_size and at most "
        "input.num_frames; None: input.num_frames")


class VideoConfig(ModalityConfig):
    """Video V-JEPA: tubelet ViT encoders, ViT predictor, 3-D multi-block masks, clips from video files."""

    name: Literal["video"] = "video"
    encoder: VideoEncoderConfig = Field(default_factory=VideoEncoderConfig, description="Context/target tubelet ViT")
    predictor: VideoPredictorConfig = Field(default_factory=VideoPredictorConfig, description="Narrow ViT predictor")
    mask: VideoMaskConfig = Field(default_factory=VideoMaskConfig, description="3-D multi-block mask generators")
    input: VideoInputConfig = Field(default_factory=VideoInputConfig, description="Clip sampling, crop and normalisation")
    views: VideoViewsConfig = Field(default_factory=VideoViewsConfig, description="Multi-view augmentation for "
                                    "view-based objectives (LeJEPA); unused by V-JEPA")

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid ``(T', H', W')`` of a training clip: frames / tubelet, crop / patch (twice)."""
        side = self.input.crop_size // self.encoder.patch_size
        return self.input.num_frames // self.encoder.tubelet_size, side, side
