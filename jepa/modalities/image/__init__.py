"""The image modality: I-JEPA (Assran et al., CVPR 2023)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from jepa.interfaces import DemoDataSpec, DynamicShapes, Encoder, ForeignEncoder, Modality, ViewSpec
from jepa.mfu import collated_mask_tokens
from jepa.modalities.image.config import ImageConfig
from jepa.modalities.image.export_program import image_dynamic_shapes
from jepa.modalities.image.flops import train_flops_per_image
from jepa.modalities.image.masks import MultiBlockMaskSampler, check_mask_feasibility
from jepa.viz.pixels import display_pixels, grid_boxes


MAX_TOKENS = 1 << 18
"""Most patches (tokens) per image: a 512 x 512 patch grid (e.g. 8192 px at patch 16)."""


class ImageModality(Modality):
    """ViT context/target encoders, narrow ViT predictor, multi-block masks, RandomResizedCrop."""

    name = "image"
    config_model = ImageConfig
    cfg: ImageConfig

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        """ViT of width 64, 2 blocks, patch 8 on 32-pixel crops (16 tokens): the contract suite's CPU size."""
        return {
            "encoder": {"arch": "vit_tiny", "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4},
            "predictor": {"embed_dim": 32, "depth": 1, "num_heads": 4},
            "mask": {"min_keep": 1},
            "input": {"crop_size": 32},
        }

    def build_encoder(self):
        from jepa.modalities.image.vit import ViTEncoder  # deferred: timm, only when a model is built

        width, depth, heads, mlp = self.cfg.encoder.dims
        return ViTEncoder(
            img_size=self.cfg.input.crop_size, patch_size=self.cfg.encoder.patch_size, in_chans=self.cfg.input.in_chans,
            embed_dim=width, depth=depth, num_heads=heads, mlp_dim=mlp, drop_path=self.cfg.encoder.drop_path,
        )

    def build_predictor(self):
        from jepa.modalities.image.vit import ViTPredictor  # deferred: timm, only when a model is built

        width, _, heads, _ = self.cfg.encoder.dims
        p = self.cfg.predictor
        return ViTPredictor(
            grid_size=self.cfg.grid_size, embed_dim=width, predictor_dim=p.embed_dim, depth=p.depth,
            num_heads=p.num_heads or heads, mlp_ratio=p.mlp_ratio,
        )

    def build_mask_sampler(self):
        return MultiBlockMaskSampler(self.cfg.grid_size, self.cfg.mask)

    def decode(self, sample: dict[str, Any]) -> Any:
        """A (3, H, W) uint8 tensor, or per ``input.jpeg_reduced_decode`` / ``input.decode_device`` a
        JPEG decoded at reduced size or left encoded for the GPU (:mod:`jepa.modalities.image.decode`)."""
        # deferred: torchvision and PIL, only when a sample is decoded
        from jepa.modalities.image.decode import decode_image

        return decode_image(sample, self.cfg.input)

    def train_batch(self, items: list[Tensor], generator: torch.Generator) -> Tensor:
        from jepa.modalities.image.transforms import train_batch  # deferred: torchvision, only when a batch is made

        return train_batch(items, self.cfg.input, generator)

    def train_views(self, items: list[Any], generator: torch.Generator, spec: ViewSpec) -> list[Tensor]:
        """Global views at ``input.crop_size``, local views at ``views.local_size``, with flips, colour
        jitter, grayscale, blur and solarization (:mod:`jepa.modalities.image.views`)."""
        # deferred: torchvision, only when views are made
        from jepa.modalities.image.views import local_view_size, train_views

        size = local_view_size(self.cfg.views, self.cfg.input.crop_size, self.cfg.encoder.patch_size)
        return train_views(items, self.cfg.input, self.cfg.views, size, spec, generator)

    def view_shapes(self, spec: ViewSpec) -> list[tuple[int, ...]]:
        """Global views (C, S, S) at ``input.crop_size``, local views at ``views.local_size``."""
        from jepa.modalities.image.views import local_view_size  # deferred: torchvision, only when views are made

        c, s = self.cfg.input.in_chans, self.cfg.input.crop_size
        local = local_view_size(self.cfg.views, s, self.cfg.encoder.patch_size)
        return [(c, s, s)] * spec.num_global + [(c, local, local)] * spec.num_local

    def finish_batch(self, inputs: Tensor) -> Tensor:
        from jepa.modalities.image.transforms import finish_batch  # deferred: torchvision, only when a batch is made

        return finish_batch(inputs, self.cfg.input)

    def eval_batch(self, items: list[Tensor]) -> Tensor:
        from jepa.modalities.image.transforms import eval_batch  # deferred: torchvision, only when a batch is made

        return eval_batch(items, self.cfg.input)

    def eval_augment(self, batch: Tensor, generator: torch.Generator) -> Tensor:
        """Mirror the width (last axis) of a random half of the images (``jepa eval --augment flip``)."""
        flip = torch.rand(batch.shape[0], generator=generator) < 0.5
        batch[flip] = batch[flip].flip(-1)
        return batch

    def example_input(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        s = self.cfg.input.crop_size
        return torch.randn(batch_size, self.cfg.input.in_chans, s, s, generator=generator)

    def display_frames(self, inputs: Tensor) -> Tensor:
        """One image (C, H, W), un-normalised with ``input.mean`` / ``input.std``, as one RGB frame (``jepa viz``)."""
        return display_pixels(inputs.unsqueeze(1), self.cfg.input.mean, self.cfg.input.std)

    def token_boxes(self, input_shape: tuple[int, ...]) -> Tensor:
        """The patch grid of an image of ``input_shape`` (C, H, W), raster order (``jepa viz``)."""
        return grid_boxes(1, int(input_shape[-2]), int(input_shape[-1]), patch=self.cfg.encoder.patch_size)

    def check(self) -> list[tuple[str, str]]:
        # deferred: torchvision, only when a recipe is checked, not for `jepa modalities`
        from jepa.modalities.image.views import check_views

        problems: list[tuple[str, str]] = []
        s, p = self.cfg.input.crop_size, self.cfg.encoder.patch_size
        if s % p:
            problems.append(("input.crop_size", f"{s} is not divisible by encoder.patch_size={p}; use a multiple of {p} (e.g. {s // p * p or p})"))
        width, _, heads, _ = self.cfg.encoder.dims
        if width % heads:
            problems.append(("encoder.num_heads", f"{heads} heads do not divide the encoder width {width}"))
        pheads = self.cfg.predictor.num_heads or heads
        if self.cfg.predictor.embed_dim % pheads:
            problems.append(("predictor.num_heads", f"{pheads} heads do not divide predictor.embed_dim={self.cfg.predictor.embed_dim}"
                             + ("" if self.cfg.predictor.num_heads else " (defaulted to the encoder's head count; set predictor.num_heads)")))
        if not problems and s // p < 2:
            problems.append(("input.crop_size", f"the patch grid is {s // p}x{s // p}; masking needs at least 2x2"))
        if not problems and (s // p) ** 2 > MAX_TOKENS:
            problems.append(("input.crop_size", f"crop_size={s} with encoder.patch_size={p} gives a {s // p}x{s // p} "
                             f"patch grid = {(s // p) ** 2:,} tokens, more than the {MAX_TOKENS:,} a ViT here takes; "
                             "lower crop_size or raise patch_size"))
        if not problems:
            problems += [(f"mask.{k}" if k else "mask", m) for k, m in check_mask_feasibility(self.cfg.grid_size, self.cfg.mask)]
        problems += [(f"views.{k}", m) for k, m in check_views(self.cfg.views, s, p)]
        return problems

    def describe(self) -> str:
        short = {"vit_tiny": "ViT-Ti", "vit_small": "ViT-S", "vit_base": "ViT-B", "vit_large": "ViT-L",
                 "vit_huge": "ViT-H", "vit_giant": "ViT-g", "vit_giant_xformers": "ViT-g"}[self.cfg.encoder.arch]
        return f"{short}/{self.cfg.encoder.patch_size} @{self.cfg.input.crop_size}"

    def masks_depend_on_batch(self) -> bool:
        """Faithful masks cut every context to the shortest of the micro batch (see masks.py)."""
        return self.cfg.mask.mode == "faithful"

    def train_flops_per_sample(self, batch_size: int | None = None) -> float:
        """Expected FLOPs of one image (``docs/flops.md``); with ``batch_size``, counted on the mean
        context / target tokens of collated batches of that size (what actually runs)."""
        if batch_size is None:
            return train_flops_per_image(self.cfg)

        (k, t), = collated_mask_tokens(self.build_mask_sampler(), batch_size)
        return train_flops_per_image(self.cfg, context_tokens=k, target_tokens=t)

    def activation_bytes_per_sample(self, batch_size: int, *, act_bytes: int, checkpointing: bool):
        """Bytes autograd keeps per image at this micro batch (``jepa plan``; see :mod:`.memory`)."""
        # deferred: timm (the ViT), only for `jepa plan`
        from jepa.modalities.image.memory import activation_bytes_per_sample

        (k, t), = collated_mask_tokens(self.build_mask_sampler(), batch_size)
        return activation_bytes_per_sample(self.cfg, act_bytes=act_bytes, checkpointing=checkpointing,
                                           context_tokens=k, target_tokens=t)

    # ------------------------------------------------------------------ data

    def file_suffixes(self) -> dict[str, str]:
        from jepa.modalities.image.transforms import IMAGE_SUFFIXES  # deferred: torchvision, only when a folder is read

        return dict(IMAGE_SUFFIXES)

    def write_demo_data(self, out: Path, spec: DemoDataSpec) -> dict[str, Any]:
        """Shapes made of parts (see :mod:`jepa.modalities.image.demo_data`); ``spec.size`` is the
        image side in pixels (default 64)."""
        # deferred: torchvision and the shard writer, only for `jepa demo-data`
        from jepa.modalities.image.demo_data import write_demo_dataset

        return write_demo_dataset(out, num_images=spec.num_train, num_val=spec.num_val,
                                  size=64 if spec.size is None else spec.size, num_classes=spec.num_classes,
                                  seed=spec.seed, max_count=spec.max_count, workers=spec.workers)

    # ------------------------------------------------------------------ export and foreign weights

    def export_inputs(self, encoder: Encoder, generator: torch.Generator) -> list[Tensor]:
        """The training resolution and a second, non-square multiple of the patch."""
        # deferred: the export stack (jepa.export), only when exporting
        from jepa.modalities.image.export_timm import check_resolutions

        sizes = check_resolutions(encoder.img_size, encoder.patch_size)  # type: ignore[attr-defined]
        return [torch.randn(2, encoder.in_chans, h, w, generator=generator) for h, w in sizes]  # type: ignore[attr-defined]

    def export_metadata(self, encoder: Encoder) -> dict[str, Any]:
        # deferred: the export stack (jepa.export), only when exporting
        from jepa.modalities.image.export_timm import image_export_metadata

        return image_export_metadata(encoder, self.cfg)

    def export_dynamic_shapes(self, encoder: Encoder) -> DynamicShapes:
        """Height and width: multiples of the patch from 2 patches (the program computes the position table of every
        grid: :mod:`jepa.modalities.image.export_program`)."""
        return image_dynamic_shapes(encoder)

    def export_formats(self) -> dict[str, Any]:
        """Beyond the core's ``torchscript`` and ``torch-export``: ``timm``, ``hf``, ``official``, ``safetensors-timm``."""
        # deferred: transformers, timm and safetensors, only when exporting to those formats
        from jepa.modalities.image.export_hf import export_hf
        from jepa.modalities.image.export_official import export_official
        from jepa.modalities.image.export_timm import export_safetensors_timm, export_timm_folder

        return {"timm": export_timm_folder, "hf": export_hf, "official": export_official,
                "safetensors-timm": export_safetensors_timm}

    def foreign_state_dicts(self, checkpoint: Mapping[str, Any], path: Path) -> dict[str, dict[str, Tensor]] | None:
        """The three state dicts of the authors' released layout, ``module.`` prefixes removed."""
        # deferred: timm (the ViT), only when a released checkpoint is read
        from jepa.modalities.image.released import is_released_layout, strip_ddp_prefix

        if not is_released_layout(checkpoint):
            return None
        return {k: strip_ddp_prefix(checkpoint[k]) for k in ("encoder", "predictor", "target_encoder")
                if isinstance(checkpoint.get(k), Mapping)}

    @classmethod
    def load_foreign(cls, checkpoint: Mapping[str, Any], path: Path, which: str,
                     options: Mapping[str, Any]) -> ForeignEncoder | None:
        """The authors' released I-JEPA ``.pth.tar`` layout (see :mod:`jepa.modalities.image.released`)."""
        # deferred: timm (the ViT), only when a released checkpoint is read
        from jepa.modalities.image.released import released_encoder

        return released_encoder(checkpoint, path, which, options, cls)
