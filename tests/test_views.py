"""Multi-view augmentation for view-based objectives (``Modality.train_views``): the image and video
views (shapes, dtypes, determinism, row order, the photometric steps), their ``views:`` recipe
sections, the default hook, and that the I-JEPA / V-JEPA training views are untouched."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from jepa.interfaces import ViewSpec
from jepa.modalities.image import ImageModality
from jepa.modalities.image import transforms as image_transforms
from jepa.modalities.image.config import ImageConfig, ViewsConfig
from jepa.modalities.image.decode import ReducedImage
from jepa.modalities.image.views import local_view_size
from jepa.modalities.video import VideoModality
from jepa.modalities.video.config import VideoConfig
from jepa.modalities.video.decode import probe_video
from jepa.modalities.video.demo import demo_clip, encode_mp4
from jepa.modalities.video.views import local_clip_size
from jepa.recipe import RecipeError, parse_recipe
from jepa.vision.photometric import (
    adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, apply_photometric, draw_photometric,
    gaussian_blur,
)
from tiny_recipes import tiny_image_recipe
from toy_modality import ToyModality

NO_COLOUR = {"jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0, "local_blur_p": 0.0, "solarize_p": 0.0}
SPEC = ViewSpec(num_global=2, num_local=3)


# --------------------------------------------------------------------------- image


def image_modality(batch_dtype: str = "float32", **views) -> ImageModality:
    """Crop 32 at patch 8 (default local views: 16 px)."""
    return ImageModality(ImageConfig(encoder={"arch": "vit_tiny", "patch_size": 8},
                                     input={"crop_size": 32, "batch_dtype": batch_dtype}, views=views))


def random_images(num: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sizes = [(40, 48), (33, 60), (64, 64), (50, 37)]
    return [torch.randint(0, 256, (3, *sizes[i % 4]), dtype=torch.uint8, generator=g) for i in range(num)]


def flat_images(colours: list[tuple[int, int, int]], size: tuple[int, int] = (40, 52)) -> list[torch.Tensor]:
    return [torch.tensor(c, dtype=torch.uint8).view(3, 1, 1).expand(3, *size).contiguous() for c in colours]


def to_uint8(batch: torch.Tensor, m) -> torch.Tensor:
    """A normalised float batch back to 0..255 (undoing the normalisation of the modality ``m``)."""
    i = m.cfg.input
    shape = (1, 3) + (1,) * (batch.ndim - 2)
    return batch * torch.tensor(i.std).view(shape) * 255 + torch.tensor(i.mean).view(shape) * 255


def test_default_local_size_is_96_of_224_rounded_to_the_patch():
    v = ViewsConfig()
    assert local_view_size(v, 224, 16) == 96
    assert local_view_size(v, 224, 14) == 98
    assert local_view_size(v, 32, 8) == 16
    assert local_view_size(v, 8, 8) == 8  # at least one patch
    assert local_view_size(ViewsConfig(local_size=24), 32, 8) == 24


@pytest.mark.parametrize("batch_dtype", ["float32", "uint8"])
def test_image_views_have_the_training_shape_and_dtype(batch_dtype):
    m = image_modality(batch_dtype)
    items = random_images(5)
    reference = m.train_batch(items, torch.Generator().manual_seed(0))
    views = m.train_views(items, torch.Generator().manual_seed(0), SPEC)
    assert len(views) == SPEC.num_views
    for v in views[:2]:
        assert v.shape == reference.shape == (5, 3, 32, 32) and v.dtype == reference.dtype
    for v in views[2:]:
        assert v.shape == (5, 3, 16, 16) and v.dtype == reference.dtype
    finished = [m.finish_batch(v) for v in views]
    assert all(f.dtype == torch.float32 for f in finished)


def test_uint8_views_finish_to_the_float_views_bitwise():
    items = random_images(6)
    floats = image_modality("float32").train_views(items, torch.Generator().manual_seed(3), SPEC)
    m8 = image_modality("uint8")
    compact = m8.train_views(items, torch.Generator().manual_seed(3), SPEC)
    for f, c in zip(floats, compact):
        assert torch.equal(m8.finish_batch(c), f)


def test_image_views_are_a_function_of_the_seed_and_differ_from_each_other():
    m, items = image_modality(), random_images(4)
    a = m.train_views(items, torch.Generator().manual_seed(7), SPEC)
    b = m.train_views(items, torch.Generator().manual_seed(7), SPEC)
    c = m.train_views(items, torch.Generator().manual_seed(8), SPEC)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not any(torch.equal(x, y) for x, y in zip(a, c))
    for row in range(len(items)):  # two views of one image are different crops / augmentations
        assert not torch.equal(a[0][row], a[1][row])
        assert not torch.equal(a[2][row], a[3][row])


def test_without_colour_augmentation_a_global_view_is_the_training_view():
    """Crop boxes are drawn first, as train_batch draws them: same pixels, dtype and normalisation."""
    items = random_images(5)
    for batch_dtype in ("float32", "uint8"):
        m = image_modality(batch_dtype, flip_p=0.0, global_scale=(0.3, 1.0), **NO_COLOUR)
        assert m.cfg.views.global_scale == m.cfg.input.crop_scale
        view = m.train_views(items, torch.Generator().manual_seed(11), ViewSpec(1, 2))[0]
        assert torch.equal(view, m.train_batch(items, torch.Generator().manual_seed(11)))


def test_row_b_of_every_view_comes_from_item_b():
    colours = [(250, 10, 10), (10, 250, 10), (10, 10, 250), (128, 128, 0), (0, 90, 200)]
    items = flat_images(colours)
    m = image_modality(**NO_COLOUR)
    for view in m.train_views(items, torch.Generator().manual_seed(0), SPEC):
        pixels = to_uint8(view, m).round()
        assert torch.equal(pixels, torch.tensor(colours, dtype=torch.float32).view(5, 3, 1, 1).expand_as(pixels))
    # Full augmentation keeps a flat image flat (per row and channel): no step mixes rows or positions.
    m = image_modality(jitter_p=1.0, grayscale_p=0.5, blur_p=1.0, local_blur_p=1.0, solarize_p=0.5)
    for view in m.train_views(items, torch.Generator().manual_seed(0), SPEC):
        pixels = to_uint8(view, m)
        assert (pixels - pixels[..., :1, :1]).abs().max() < 1e-3


def test_views_of_reduced_images_have_the_view_shapes():
    full = random_images(3, seed=1)
    reduced = [ReducedImage(x[:, ::2, ::2].contiguous(), x.shape[1], x.shape[2], 2) for x in full]
    views = image_modality().train_views(reduced, torch.Generator().manual_seed(0), SPEC)
    assert [tuple(v.shape) for v in views] == [(3, 3, 32, 32)] * 2 + [(3, 3, 16, 16)] * 3


def test_colour_steps_match_torchvision_on_float_images():
    """Our batched steps (a factor per row) against torchvision's (one factor per call)."""
    x = torch.randint(0, 256, (3, 3, 12, 17), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).float()
    for ours, theirs, factor in ((adjust_brightness, TF.adjust_brightness, 1.3), (adjust_contrast, TF.adjust_contrast, 0.65),
                                 (adjust_saturation, TF.adjust_saturation, 1.2), (adjust_hue, TF.adjust_hue, 0.08),
                                 (adjust_hue, TF.adjust_hue, -0.1)):
        expected = theirs(x / 255, factor) * 255
        assert (ours(x.clone(), torch.full((3,), factor)) - expected).abs().max() < 1e-2, ours.__name__
    expected = TF.gaussian_blur(x / 255, [9, 9], [1.5, 1.5]) * 255
    assert (gaussian_blur(x, torch.full((3,), 1.5), 4) - expected).abs().max() < 1e-2


def test_photometric_rows_are_augmented_independently():
    """A batch gives each row what that row alone would get (to the rounding of one level)."""
    cfg = ViewsConfig(jitter_p=0.8, grayscale_p=0.3, blur_p=0.5, solarize_p=0.3)
    x = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    draws = draw_photometric(12, cfg, torch.Generator().manual_seed(2), blur_p=0.5, solarize_p=0.3)
    batched = apply_photometric(x, draws)
    for i in range(12):
        row = dataclasses.replace(draws, **{f.name: getattr(draws, f.name)[i:i + 1] for f in dataclasses.fields(draws)
                                            if f.name != "blur_radius"})
        assert (apply_photometric(x[i:i + 1], row)[0].int() - batched[i].int()).abs().max() <= 1


def test_photometric_probabilities_are_the_configured_ones():
    n = 2000
    x = torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cfg = ViewsConfig(flip_p=0.5, jitter_p=0.0, grayscale_p=0.2)
    draws = draw_photometric(n, cfg, torch.Generator().manual_seed(1), solarize_p=0.0)
    out = apply_photometric(x, draws)
    grey = (out[:, 0] == out[:, 1]).all(-1).all(-1) & (out[:, 1] == out[:, 2]).all(-1).all(-1)
    assert abs(grey.float().mean().item() - 0.2) < 0.04
    flipped = torch.equal(out[~draws.grey_B], torch.where(draws.flip_B[~draws.grey_B].view(-1, 1, 1, 1),
                                                          x[~draws.grey_B].flip(-1), x[~draws.grey_B]))
    assert flipped and abs(draws.flip_B.float().mean().item() - 0.5) < 0.05
    none = apply_photometric(x, draw_photometric(n, ViewsConfig(flip_p=0.0, **NO_COLOUR), torch.Generator()))
    assert torch.equal(none, x)


# --------------------------------------------------------------------------- image: recipes and I-JEPA untouched


def test_recipes_without_views_validate_with_the_defaults():
    recipe = parse_recipe(tiny_image_recipe(0))
    assert recipe.modality.views == ViewsConfig()
    assert ImageConfig().views == ViewsConfig()


@pytest.mark.parametrize("views,match", [
    ({"local_size": 12}, r"modality\.views\.local_size: 12 is not a multiple of encoder\.patch_size=8"),
    ({"local_size": 40}, r"modality\.views\.local_size: 40 is larger than input\.crop_size=32"),
    ({"local_scale": [0.3, 0.1]}, r"local_scale must satisfy 0 < low <= high"),
    ({"global_scale": [0.3, 1.5]}, r"global_scale must be <= 1"),
    ({"jitter_p": 1.5}, r"modality\.views\.jitter_p"),
    ({"blur": 0.5}, r"modality\.views\.blur"),
])
def test_infeasible_views_are_recipe_errors(views, match):
    raw = tiny_image_recipe(0)
    raw["modality"]["views"] = views
    with pytest.raises(RecipeError, match=match):
        parse_recipe(raw)


def test_feasible_local_size_validates():
    raw = tiny_image_recipe(0)
    raw["modality"]["views"] = {"local_size": 16, "blur_p": 0.0}
    assert parse_recipe(raw).modality.views.local_size == 16


def test_image_train_batch_is_unchanged_by_the_views():
    """ImageModality.train_batch is the training view of transforms.train_batch, a function of the seed."""
    m, items = image_modality(), random_images(5)
    a = m.train_batch(items, torch.Generator().manual_seed(4))
    m.train_views(items, torch.Generator().manual_seed(4), SPEC)
    b = m.train_batch(items, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert torch.equal(a, image_transforms.train_batch(items, m.cfg.input, torch.Generator().manual_seed(4)))
    plain = ImageModality(ImageConfig(encoder={"arch": "vit_tiny", "patch_size": 8}, input={"crop_size": 32}))
    assert torch.equal(plain.train_batch(items, torch.Generator().manual_seed(4)), a)


# --------------------------------------------------------------------------- default hook


def test_default_train_views_draws_train_batch_per_view():
    m = ToyModality()
    g = torch.Generator().manual_seed(0)
    items = [torch.randn(m.cfg.in_chans, m.cfg.seq_len, generator=g) for _ in range(3)]
    views = m.train_views(items, torch.Generator().manual_seed(1), ViewSpec(2, 2))
    shape = m.train_batch(items, torch.Generator().manual_seed(1)).shape
    assert len(views) == 4 and all(v.shape == shape for v in views)
    assert torch.equal(views[0], m.train_batch(items, torch.Generator().manual_seed(1)))


# --------------------------------------------------------------------------- video

VIDEO = {"encoder": {"arch": "vit_tiny", "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 4},
         "predictor": {"embed_dim": 24, "depth": 1, "num_heads": 4},
         "input": {"num_frames": 8, "frame_step": 2, "crop_size": 32, "decoder": "in_process"}}


def video_modality(batch_dtype: str = "float32", **views) -> VideoModality:
    section = {**VIDEO, "input": {**VIDEO["input"], "batch_dtype": batch_dtype}, "views": views}
    return VideoModality(VideoConfig.model_validate(section))


@pytest.fixture(scope="module")
def demo_items():
    return [probe_video({"__key__": str(i), "mp4": demo_clip(i, 0, 40, 18)[0]}, 15, "in_process") for i in range(3)]


@pytest.fixture(scope="module")
def flat_items():
    colours = [(220, 30, 30), (30, 220, 30), (30, 30, 220), (200, 200, 40)]
    clips = [np.broadcast_to(np.array(c, dtype=np.uint8), (16, 40, 48, 3)).copy() for c in colours]
    return colours, [probe_video({"__key__": str(i), "mp4": encode_mp4(c)}, 15, "in_process") for i, c in enumerate(clips)]


@pytest.mark.parametrize("batch_dtype", ["float32", "uint8"])
def test_video_views_have_the_training_shape_and_dtype(demo_items, batch_dtype):
    m = video_modality(batch_dtype, local_num_frames=4)
    reference = m.train_batch(demo_items, torch.Generator().manual_seed(0))
    views = m.train_views(demo_items, torch.Generator().manual_seed(0), SPEC)
    assert len(views) == SPEC.num_views
    local = (3, 3, 4, 16, 16) if batch_dtype == "float32" else (3, 4, 3, 16, 16)
    for v in views[:2]:
        assert v.shape == reference.shape and v.dtype == reference.dtype
    for v in views[2:]:
        assert v.shape == local and v.dtype == reference.dtype
    assert [tuple(m.finish_batch(v).shape) for v in views] == [(3, 3, 8, 32, 32)] * 2 + [(3, 3, 4, 16, 16)] * 3


def test_video_default_local_views_are_half_size_with_all_frames(demo_items):
    m = video_modality()
    assert local_clip_size(m.cfg.views, 224, 16) == 112 and local_clip_size(m.cfg.views, 32, 8) == 16
    views = m.train_views(demo_items, torch.Generator().manual_seed(0), ViewSpec(1, 1))
    assert views[1].shape == (3, 3, 8, 16, 16)


def test_video_views_are_deterministic_differ_and_finish_bitwise(demo_items):
    m, m8 = video_modality(), video_modality("uint8")
    a = m.train_views(demo_items, torch.Generator().manual_seed(5), SPEC)
    b = m.train_views(demo_items, torch.Generator().manual_seed(5), SPEC)
    c = m8.train_views(demo_items, torch.Generator().manual_seed(5), SPEC)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(torch.equal(m8.finish_batch(z), x) for x, z in zip(a, c))
    for row in range(len(demo_items)):
        assert not torch.equal(a[0][row], a[1][row]) and not torch.equal(a[2][row], a[3][row])


def test_without_colour_augmentation_a_global_video_view_is_the_training_view(demo_items):
    """Clip starts, crop boxes and flips are drawn first, in the training view's order."""
    m = video_modality(jitter_p=0.0, grayscale_p=0.0)
    view = m.train_views(demo_items, torch.Generator().manual_seed(9), ViewSpec(1, 1))[0]
    assert torch.equal(view, m.train_batch(demo_items, torch.Generator().manual_seed(9)))


def test_row_b_of_every_video_view_comes_from_item_b(flat_items):
    colours, items = flat_items
    m = video_modality(jitter_p=0.0, grayscale_p=0.0, local_num_frames=4)
    target = torch.tensor(colours, dtype=torch.float32)
    for view in m.train_views(items, torch.Generator().manual_seed(0), SPEC):
        mean = to_uint8(view, m).mean(dim=(2, 3, 4))  # (B, 3)
        nearest = torch.cdist(mean, target).argmin(dim=1)
        assert torch.equal(nearest, torch.arange(len(items)))
        assert (mean - target).abs().max() < 12  # yuv420p rounding of flat colours


@pytest.mark.parametrize("views,match", [
    ({"local_size": 12}, r"modality\.views\.local_size: 12 is not a multiple of encoder\.patch_size=8"),
    ({"local_size": 40}, r"modality\.views\.local_size: 40 is larger than input\.crop_size=32"),
    ({"local_num_frames": 3}, r"modality\.views\.local_num_frames: 3 is not a multiple of encoder\.tubelet_size=2"),
    ({"local_num_frames": 10}, r"modality\.views\.local_num_frames: 10 is more than input\.num_frames=8"),
])
def test_infeasible_video_views_are_recipe_errors(views, match):
    raw = {"name": "tiny-video", "data": {"source": "synthetic", "samples_per_epoch": 8, "global_batch_size": 2},
           "optim": {"epochs": 1, "warmup_epochs": 0}, "modality": {"name": "video", **VIDEO, "views": views}}
    with pytest.raises(RecipeError, match=match):
        parse_recipe(raw)
    del raw["modality"]["views"]
    assert parse_recipe(raw).modality.views == VideoConfig().views
