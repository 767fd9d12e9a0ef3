"""The video modality: V-JEPA (Bardes et al., 2024, "Revisiting Feature Prediction for Learning
Visual Representations from Video").

Clips ``(B, 3, F, S, S)`` from video files (mp4 / webm / avi, decoded with PyAV), a tubelet ViT
encoder with 3-D sin-cos positions, a narrow predictor with one mask token per mask generator, and
3-D multi-block masks from several generators per clip (:class:`~.masks.MultiMaskSampler` returns
one :class:`~jepa.interfaces.MaskSet` per generator).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from jepa.interfaces import (DemoDataSpec, DynamicShapes, Encoder, ExportDim, ForeignEncoder, Modality, ViewSpec,
                             as_mask_pairs)
from jepa.modalities.video.config import VideoConfig
from jepa.modalities.video.flops import train_flops_per_clip
from jepa.modalities.video.masks import MultiMaskSampler, check_mask_feasibility
from jepa.modalities.video.released import is_video_layout, released_encoder, states_for
from jepa.nn.pos_embed import axis_widths_3d, sincos_3d
from jepa.nn.rope import rope_axis_width
from jepa.viz.pixels import display_pixels, grid_boxes

_SHORT_ARCH = {"vit_tiny": "ViT-Ti", "vit_small": "ViT-S", "vit_base": "ViT-B", "vit_large": "ViT-L",
               "vit_huge": "ViT-H", "vit_giant": "ViT-g", "vit_giant_xformers": "ViT-g"}


class VideoModality(Modality):
    """Tubelet ViT encoders, ViT predictor, 3-D multi-block masks, clips with one RandomResizedCrop each."""

    name = "video"
    config_model = VideoConfig
    demo_defaults = DemoDataSpec(num_train=2000, num_val=500, num_classes=10, max_count=250)
    cfg: VideoConfig

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        """Width 48, 2 blocks, 2x8x8 tubelets on 4-frame 32-pixel clips (32 tokens): the contract suite's CPU size."""
        return {
            "encoder": {"arch": "vit_tiny", "patch_size": 8, "tubelet_size": 2, "embed_dim": 48, "depth": 2, "num_heads": 4},
            "predictor": {"embed_dim": 32, "depth": 1, "num_heads": 4},
            "input": {"num_frames": 4, "frame_step": 1, "crop_size": 32},
        }

    # ------------------------------------------------------------------ builders
    def build_encoder(self):
        # deferred: timm, only when a model is built
        from jepa.modalities.video.vit import VideoRoPEEncoder, VideoViTEncoder

        c = self.cfg
        width, depth, heads, mlp = c.encoder.dims
        common = dict(num_frames=c.input.num_frames, img_size=c.input.crop_size, patch_size=c.encoder.patch_size,
                      tubelet_size=c.encoder.tubelet_size, in_chans=c.input.in_chans, embed_dim=width, depth=depth,
                      num_heads=heads, mlp_dim=mlp, drop_path=c.encoder.drop_path)
        if c.encoder.pos_embed == "rope":
            return VideoRoPEEncoder(**common, depth_scaled_init=c.encoder.depth_scaled_init)
        return VideoViTEncoder(**common, uniform_power=c.encoder.uniform_power,
                               depth_scaled_init=c.encoder.depth_scaled_init)

    def build_predictor(self):
        # deferred: timm, only when a model is built
        from jepa.modalities.video.vit import VideoRoPEPredictor, VideoViTPredictor

        c, p = self.cfg, self.cfg.predictor
        width, _, heads, _ = c.encoder.dims
        grid_t, side, _ = c.grid
        common = dict(grid_t=grid_t, grid_size=side, embed_dim=width, predictor_dim=p.embed_dim, depth=p.depth,
                      num_heads=p.num_heads or heads, mlp_ratio=p.mlp_ratio,
                      num_mask_tokens=p.num_mask_tokens or len(c.mask.generators),
                      zero_init_mask_tokens=p.zero_init_mask_tokens, shared_mask_token=p.shared_mask_token,
                      depth_scaled_init=p.depth_scaled_init)
        if self.predictor_pos_embed == "rope":
            return VideoRoPEPredictor(**common)
        return VideoViTPredictor(**common, uniform_power=c.encoder.uniform_power)

    @property
    def predictor_pos_embed(self) -> str:
        """``predictor.pos_embed``, defaulting to ``encoder.pos_embed``."""
        return self.cfg.predictor.pos_embed or self.cfg.encoder.pos_embed

    def build_mask_sampler(self):
        return MultiMaskSampler(self.cfg.grid, self.cfg.mask)

    # ------------------------------------------------------------------ data
    def decode(self, sample: dict[str, Any]):
        from jepa.modalities.video.decode import probe_video  # deferred: PyAV, only when a video is decoded

        return probe_video(sample, self.cfg.input.clip_span, self.cfg.input.decoder, crop_size=self.cfg.input.crop_size)

    def train_batch(self, items: list[Any], generator: torch.Generator) -> Tensor:
        # deferred: PyAV and torchvision, only when a batch is made
        from jepa.modalities.video.transforms import train_batch

        return train_batch(items, self.cfg.input, generator)

    def train_views(self, items: list[Any], generator: torch.Generator, spec: ViewSpec) -> list[Tensor]:
        """Global clips as the training view, local clips smaller (``views.local_size``, ``views.local_num_frames``),
        each with flips, colour jitter and grayscale (:mod:`jepa.modalities.video.views`)."""
        # deferred: PyAV and torchvision, only when views are made
        from jepa.modalities.video.views import local_clip_frames, local_clip_size, train_views

        c = self.cfg
        return train_views(items, c.input, c.views, spec, generator,
                           local_size=local_clip_size(c.views, c.input.crop_size, c.encoder.patch_size),
                           local_frames=local_clip_frames(c.views, c.input.num_frames))

    def activation_bytes_per_sample(self, batch_size: int, *, act_bytes: int, checkpointing: bool):
        """Bytes autograd keeps per clip at this micro batch (``jepa plan``): every mask pair's context
        through the encoder and its predictor pass (:func:`jepa.nn.memory.masked_step_activation_bytes`),
        the token counts the sampler collates at this micro batch (mean of 8 seeded batches)."""
        from jepa.nn.memory import masked_step_activation_bytes  # deferred: timm (the ViT), only for `jepa plan`

        g, sampler, draws = torch.Generator().manual_seed(0), self.build_mask_sampler(), 8
        sums = None
        for _ in range(draws):
            counts = [(m.context_idx_BK.shape[1], *m.target_idx_BMT.shape[1:]) for m in as_mask_pairs(sampler(batch_size, g))]
            sums = counts if sums is None else [tuple(a + b for a, b in zip(s, c)) for s, c in zip(sums, counts)]
        pairs = [(k / draws, round(m / draws), t / draws) for k, m, t in sums]
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            encoder, predictor = self.build_encoder(), self.build_predictor()
        return masked_step_activation_bytes(encoder, predictor, tuple(self.example_input(1).shape[1:]), pairs,
                                            act_bytes=act_bytes, checkpointing=checkpointing)

    def view_shapes(self, spec: ViewSpec) -> list[tuple[int, ...]]:
        """Global clips (C, F, S, S) as the training view, local clips at ``views.local_size`` and
        ``views.local_num_frames`` (the encoder's layout, after :meth:`finish_batch`)."""
        # deferred: PyAV and torchvision, only when views are made
        from jepa.modalities.video.views import local_clip_frames, local_clip_size

        c = self.cfg
        ch, f, s = c.input.in_chans, c.input.num_frames, c.input.crop_size
        local_s = local_clip_size(c.views, s, c.encoder.patch_size)
        local_f = local_clip_frames(c.views, f)
        return [(ch, f, s, s)] * spec.num_global + [(ch, local_f, local_s, local_s)] * spec.num_local

    def finish_batch(self, inputs: Tensor) -> Tensor:
        # deferred: PyAV and torchvision, only when a batch is made
        from jepa.modalities.video.transforms import finish_batch

        return finish_batch(inputs, self.cfg.input)

    def eval_batch(self, items: list[Any]) -> Tensor:
        # deferred: PyAV and torchvision, only when a batch is made
        from jepa.modalities.video.transforms import eval_batch

        return eval_batch(items, self.cfg.input)

    def eval_augment(self, batch: Tensor, generator: torch.Generator) -> Tensor:
        """Mirror the width (last axis) of every frame of a random half of the clips (``jepa eval --augment
        flip``). Not label-preserving for labels that name a horizontal direction (the demo's left / right)."""
        flip = torch.rand(batch.shape[0], generator=generator) < 0.5
        batch[flip] = batch[flip].flip(-1)
        return batch

    def example_input(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        i = self.cfg.input
        return torch.randn(batch_size, i.in_chans, i.num_frames, i.crop_size, i.crop_size, generator=generator)

    def display_frames(self, inputs: Tensor) -> Tensor:
        """One clip (C, T, H, W), un-normalised with ``input.mean`` / ``input.std``, as T RGB frames (``jepa viz``)."""
        return display_pixels(inputs, self.cfg.input.mean, self.cfg.input.std)

    def token_boxes(self, input_shape: tuple[int, ...]) -> Tensor:
        """The tubelet grid of a clip of ``input_shape`` (C, T, H, W), raster order (``jepa viz``)."""
        t, h, w = (int(n) for n in input_shape[-3:])
        return grid_boxes(t, h, w, patch=self.cfg.encoder.patch_size, tubelet=self.cfg.encoder.tubelet_size)

    def file_suffixes(self) -> dict[str, str]:
        return {".mp4": "mp4", ".webm": "webm", ".avi": "avi"}

    def write_demo_data(self, out: Path, spec: DemoDataSpec) -> dict[str, Any]:
        """MP4 clips of a still shape under per-frame pixel noise and colour blobs, labelled by the shape (see
        :mod:`.demo_shapes`; the motion clips of :mod:`.demo` are ``tools/video_motion_clips.py``); ``spec.size``
        is the frame side in pixels (default 64); clips have ``DEMO_NUM_FRAMES`` (32) frames, enough for clip spans up
        to 32 (``recipes/video_demo.yaml``: 15)."""
        # deferred: PyAV, only for `jepa demo-data`
        from jepa.modalities.video.demo_shapes import ShapeClips, write_shape_dataset

        clips = ShapeClips(num_classes=spec.num_classes, size=64 if spec.size is None else spec.size)
        return write_shape_dataset(out, num_train=spec.num_train, num_val=spec.num_val, clips=clips, seed=spec.seed,
                                   max_count=spec.max_count, workers=spec.workers)

    # ------------------------------------------------------------------ description
    def check(self) -> list[tuple[str, str]]:
        # deferred: PyAV and torchvision, only when a recipe is checked, not for `jepa modalities`
        from jepa.modalities.video.views import check_views

        c, problems = self.cfg, []
        f, t = c.input.num_frames, c.encoder.tubelet_size
        s, p = c.input.crop_size, c.encoder.patch_size
        if f % t:
            problems.append(("input.num_frames", f"{f} is not divisible by encoder.tubelet_size={t}; use a multiple "
                             f"of {t} (e.g. {f // t * t or t})"))
        if s % p:
            problems.append(("input.crop_size", f"{s} is not divisible by encoder.patch_size={p}; use a multiple of "
                             f"{p} (e.g. {s // p * p or p})"))
        if c.input.in_chans != 3:
            problems.append(("input.in_chans", f"videos decode to RGB, so in_chans must be 3, got {c.input.in_chans}"))
        width, _, heads, _ = c.encoder.dims
        pheads = c.predictor.num_heads or heads
        for field, dim, h in (("encoder", width, heads), ("predictor", c.predictor.embed_dim, pheads)):
            if dim % h:
                problems.append((f"{field}.num_heads", f"{h} heads do not divide the {field} width {dim}"
                                 + (" (defaulted to the encoder's head count; set predictor.num_heads)"
                                    if field == "predictor" and not c.predictor.num_heads else "")))
            rope = (c.encoder.pos_embed if field == "encoder" else self.predictor_pos_embed) == "rope"
            try:
                if rope and not dim % h:
                    rope_axis_width(dim // h, 3)
                elif not rope:
                    axis_widths_3d(dim, c.encoder.uniform_power)
            except ValueError as exc:
                problems.append((f"{field}.num_heads" if rope else "encoder.uniform_power", f"{field} width {dim}: {exc}"))
        num_tokens, num_generators = c.predictor.num_mask_tokens, len(c.mask.generators)
        if num_tokens is not None and num_tokens < num_generators and not c.predictor.shared_mask_token:
            problems.append(("predictor.num_mask_tokens", f"{num_tokens} mask tokens for {num_generators} mask generators; "
                             f"use at least {num_generators}, or set predictor.shared_mask_token"))
        if not problems and (f // t < 1 or s // p < 1):
            problems.append(("input", f"the token grid {c.grid} is empty; use more frames or a larger crop"))
        if not problems:
            problems += [(f"mask.{k}", m) for k, m in check_mask_feasibility(c.grid, c.mask)]
        problems += [(f"views.{k}", m) for k, m in check_views(c.views, c.input, p, t)]
        return problems

    def describe(self) -> str:
        c = self.cfg
        return (f"{_SHORT_ARCH[c.encoder.arch]}/{c.encoder.patch_size} {c.input.num_frames}x{c.input.crop_size} "
                f"t{c.encoder.tubelet_size}" + (" RoPE" if c.encoder.pos_embed == "rope" else ""))

    def masks_depend_on_batch(self) -> bool:
        """Faithful masks cut every context and target to the shortest of the micro batch (see masks.py)."""
        return self.cfg.mask.mode == "faithful"

    def train_flops_per_sample(self) -> float:
        return train_flops_per_clip(self.cfg)

    # ------------------------------------------------------------------ export
    def export_dynamic_shapes(self, encoder: Encoder) -> DynamicShapes:
        """Frames (multiples of the tubelet), height and width (multiples of the patch), from 2 to 512 tokens
        along each axis (``torch.export`` specialises a single token away); the program computes the position
        table of every grid (:meth:`any_grid_tokens`)."""
        t, p = self.cfg.encoder.tubelet_size, self.cfg.encoder.patch_size
        dims = {2: ExportDim("frames", t, 512, min_multiple=2), 3: ExportDim("height", p, 512, min_multiple=2),
                4: ExportDim("width", p, 512, min_multiple=2)}
        if self.cfg.encoder.pos_embed == "rope":  # no stored table: the forward computes the rotations of every grid
            return DynamicShapes(dims)
        return DynamicShapes(dims, forward=VideoModality.any_grid_tokens)

    @staticmethod
    def any_grid_tokens(encoder: Encoder, x: Tensor) -> Tensor:
        """The encoder's forward (B, C, T, H, W) -> (B, N, D) with the sin-cos table always computed for the
        clip's grid (the encoder takes its stored table at the training grid: a branch on T, H, W)."""
        enc: Any = encoder
        tt, p = enc.tubelet_size, enc.patch_size
        tokens = enc.patch_embed(x)
        pos = sincos_3d(enc.embed_dim, x.shape[2] // tt, x.shape[3] // p, x.shape[4] // p, enc.uniform_power,
                        device=tokens.device)
        return enc.norm(enc.run_blocks(tokens + pos.to(enc.pos_embed.dtype).unsqueeze(0)))

    def export_inputs(self, encoder: Encoder, generator: torch.Generator) -> list[Tensor]:
        """The training shape, and one clip with another frame count (fewer, unless that leaves one tubelet, which
        a ``torch-export`` program refuses) and a non-square size."""
        i, t, p = self.cfg.input, self.cfg.encoder.tubelet_size, self.cfg.encoder.patch_size
        frames = i.num_frames - t if i.num_frames > 2 * t else i.num_frames + t
        width = i.crop_size - p if i.crop_size > p else i.crop_size + p
        other = torch.randn(1, i.in_chans, frames, i.crop_size, width, generator=generator)
        return [self.example_input(2, generator), other]

    def export_formats(self) -> dict[str, Any]:
        """Beyond the core's ``torchscript`` and ``torch-export``: ``official`` (the authors' V-JEPA checkpoint layout)
        and ``hf`` (a transformers ``VJEPA2Model`` folder, RoPE models)."""
        # deferred: transformers and the export stack, only when exporting to those formats
        from jepa.modalities.video.export_hf import export_hf
        from jepa.modalities.video.export_official import export_official

        return {"official": export_official, "hf": export_hf}

    def foreign_state_dicts(self, checkpoint: Mapping[str, Any], path: Path) -> dict[str, dict[str, Tensor]] | None:
        """The three state dicts of the authors' V-JEPA (2) layout in our naming (``module.`` / ``backbone.`` removed,
        mask tokens stacked, position tables dropped for RoPE models), for ``init_from``."""
        if not is_video_layout(checkpoint):
            return None
        return states_for(checkpoint, self.cfg.encoder.pos_embed, self.predictor_pos_embed)

    @classmethod
    def load_foreign(cls, checkpoint: Mapping[str, Any], path: Path, which: str,
                     options: Mapping[str, Any]) -> ForeignEncoder | None:
        """The authors' V-JEPA 2 / V-JEPA checkpoint layout (see :mod:`jepa.modalities.video.released`)."""
        return released_encoder(checkpoint, path, which, options, cls)

    def export_metadata(self, encoder: Encoder) -> dict[str, Any]:
        c = self.cfg
        width, depth, heads, mlp = c.encoder.dims
        return {
            "arch": {"embed_dim": width, "depth": depth, "num_heads": heads, "mlp_dim": mlp,
                     "patch_size": c.encoder.patch_size, "tubelet_size": c.encoder.tubelet_size,
                     "in_chans": c.input.in_chans, "class_token": False,
                     "pos_embed": ("rope-3d" if c.encoder.pos_embed == "rope"
                                   else "sincos-3d-uniform" if c.encoder.uniform_power else "sincos-3d")},
            "patch_size": c.encoder.patch_size,
            "tubelet_size": c.encoder.tubelet_size,
            "num_frames": c.input.num_frames,
            "frame_step": c.input.frame_step,
            "train_resolution": c.input.crop_size,
            "in_chans": c.input.in_chans,
            "mean": list(c.input.mean),
            "std": list(c.input.std),
            "input": "(B, C, T, H, W) float32 clips scaled to [0, 1] then normalised with mean/std per channel; "
                     "T a multiple of tubelet_size, H and W multiples of patch_size",
            "output": "(B, N, D) final-normed tokens in raster order (time slowest), "
                      "N = (T / tubelet_size) * (H / patch_size) * (W / patch_size)",
        }
