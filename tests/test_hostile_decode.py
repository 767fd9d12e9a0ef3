"""Hostile inputs, round three (#27): memory bombs that pass the pixel-count check, labels trusted,
and splits numbered by their own class names.

* A tall-thin image of a few hundred bytes passes the decoded-pixel bound but the evaluation view
  resizes its shorter side, so it grows by that factor times its aspect ratio: one bound on decoded
  *and resized* pixels refuses it from the header; the loaders skip and count it like an
  undecodable sample, and every view (training crop, LeJEPA views, evaluation view, video clips)
  refuses such an item before resizing it.
* A ``cls`` label is data: not a number, negative, or past the class count is refused by a scan
  (one line naming the sample) and skipped by the online k-NN; nothing is sized by a label's value.
* Splits are numbered by class name: a validation split holding some of the training classes
  scores as mapped by name; one holding a class the training split lacks is refused.

No test allocates a bomb: :func:`resize_guard` turns any resize past a few million pixels into a
``MemoryError`` (the stand-in for running out of memory), so the code before the fix fails these
tests without asking for gigabytes.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from jepa.eval.evaluate import EvalSettings, evaluate_shards
from jepa.eval.reader import PassSpec, ShardData, labelled_batches
from jepa.interfaces import ViewSpec
from jepa.modalities.image import ImageModality
from jepa.modalities.image.config import ImageConfig, ViewsConfig
from jepa.modalities.image.transforms import decode_image, eval_batch, train_batch
from jepa.modalities.image.views import train_views
from jepa.sources import load_source
from tar_files import labelled_members, write_tar
from tiny_recipes import tiny_image_recipe

RESIZE_LIMIT = 4_000_000
"""Most pixels (per image or frame) a resize may produce in these tests; the real bound is 89.5 M."""
COLORS = {"blue": (20, 20, 220), "green": (20, 200, 20), "red": (220, 20, 20)}


@pytest.fixture
def resize_guard(monkeypatch):
    """Resizes past :data:`RESIZE_LIMIT` pixels raise ``MemoryError`` instead of allocating."""
    import torchvision.transforms.v2.functional as TF

    resize, resized_crop = TF.resize, TF.resized_crop

    def out_pixels(x: torch.Tensor, size: list[int]) -> int:
        if len(size) == 2:
            return size[0] * size[1]
        h, w = x.shape[-2:]
        return size[0] * int(size[0] * max(h, w) / min(h, w))

    def guarded_resize(x, size, *args, **kwargs):
        if out_pixels(x, list(size)) > RESIZE_LIMIT:
            raise MemoryError(f"a resize of {tuple(x.shape)} to {size} would allocate past the test's limit")
        return resize(x, size, *args, **kwargs)

    def guarded_resized_crop(x, top, left, height, width, size, *args, **kwargs):
        if out_pixels(x, list(size)) > RESIZE_LIMIT:
            raise MemoryError(f"a resized crop to {size} would allocate past the test's limit")
        return resized_crop(x, top, left, height, width, size, *args, **kwargs)

    monkeypatch.setattr(TF, "resize", guarded_resize)
    monkeypatch.setattr(TF, "resized_crop", guarded_resized_crop)


def _png(width: int, height: int, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


def _colour_png(color: tuple[int, int, int], seed: int) -> bytes:
    gen = torch.Generator().manual_seed(seed)
    img = torch.tensor(color, dtype=torch.uint8).view(3, 1, 1).expand(3, 32, 32).clone()
    img[:, :8] = torch.randint(0, 255, (3, 8, 32), generator=gen, dtype=torch.uint8)
    buf = io.BytesIO()
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return buf.getvalue()


def _image_folder(root: Path, classes: list[str], per_class: int, seed: int) -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"{i:03d}.png").write_bytes(_colour_png(COLORS.get(name, (128, 128, 128)),
                                                                   seed * 1000 + c * 100 + i))
    return root


@pytest.fixture
def tiny_recipe(tmp_path) -> Path:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_image_recipe(1)))  # crop_size 32: the evaluation resize is to 37
    return recipe


def _input_cfg(crop_size: int = 32):
    return ImageConfig(**{**tiny_image_recipe(0)["modality"], "input": {"crop_size": crop_size}}).input


# --------------------------------------------------------------------------- 1. bounded views


def test_a_tall_thin_image_of_a_few_hundred_bytes_is_refused_from_its_header():
    thin = _png(1, 60_000)  # the issue's: at the default crop (224) its evaluation resize is 256 x 15,360,000
    assert len(thin) < 1000
    with pytest.raises(ValueError, match=r"'thin'.*refused.*aspect ratio 60,000:1.*skipped"):
        decode_image({"__key__": "thin", "png": thin})
    cfg = _input_cfg(32)  # resize to 37: 1 x 200,000 grows to 37 x 7,400,000
    for name, (w, h) in {"tall": (1, 200_000), "wide": (200_000, 1)}.items():
        with pytest.raises(ValueError, match=rf"'{name}'.*refused.*more than the 89,478,485"):
            decode_image({"__key__": name, "png": _png(w, h)}, cfg)
    assert decode_image({"__key__": "ok", "png": _png(40, 2000)}, cfg).shape == (3, 2000, 40)  # 13:1 is fine


def test_every_view_refuses_an_item_past_the_bound_before_resizing_it(resize_guard):
    cfg = _input_cfg(32)
    thin, good = torch.zeros(3, 200_000, 1, dtype=torch.uint8), torch.zeros(3, 40, 50, dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    views = ViewsConfig()
    makers = {
        "train crop": lambda items: train_batch(items, cfg, gen),
        "LeJEPA views": lambda items: train_views(items, cfg, views, 16, ViewSpec(num_global=2, num_local=2), gen),
        "evaluation view": lambda items: eval_batch(items, cfg),
    }
    for what, make in makers.items():
        with pytest.raises(ValueError, match=r"image 1 of the batch is refused"):
            make([good, thin])
        make([good, good])  # the bound is on the item, not the view


def test_a_tall_thin_image_in_an_eval_set_is_skipped_and_counted_and_the_evaluation_completes(
        tmp_path, tiny_recipe, resize_guard):
    train = _image_folder(tmp_path / "train", list(COLORS), 4, 0)
    (train / "red" / "thin.png").write_bytes(_png(1, 200_000))  # a folder: skipped by the scan's screening
    good = [(f"v{i:03d}", _colour_png(list(COLORS.values())[i % 3], 500 + i), i % 3) for i in range(6)]
    val = write_tar(tmp_path / "val" / "val-000000.tar",  # shards: skipped by the pass that decodes it
                    labelled_members([(k, "png", d, y) for k, d, y in good[:3] + [("thin", _png(1, 200_000), 0)]
                                      + good[3:]]))
    settings = EvalSettings(protocols=("knn",), k=3, device="cpu")
    report = evaluate_shards(load_source(f"pixels:{tiny_recipe}"), str(train), str(val), settings)
    assert report.skipped == {"train_files": 1, "val_files": 0, "train_undecodable": 0, "val_undecodable": 1}
    assert report.num_train == 12 and report.num_val == 6 and report.results[0].top1 == 1.0


def test_a_tall_thin_image_in_training_shards_is_skipped_and_counted(tmp_path):
    from jepa.data.build import build_train_loader
    from jepa.objectives.ijepa import MaskBatches
    from jepa.recipe import DataConfig

    modality = ImageModality(ImageConfig(**tiny_image_recipe(0)["modality"]))
    members = {f"g{i:03d}.png": _colour_png((10 * i, 100, 50), i) for i in range(7)}
    members["thin.png"] = _png(1, 200_000)
    shard = write_tar(tmp_path / "train-000000.tar", members)
    cfg = DataConfig(train_shards=str(shard), num_workers=0, shuffle_buffer=4, prefetch_factor=2)
    loader = build_train_loader(cfg, modality, MaskBatches(modality, modality.build_mask_sampler()), seed=0, rank=0,
                                world_size=1, micro_batch_size=4)
    it = iter(loader)
    batches = [next(it) for _ in range(2)]  # 8 samples: the shard's 7 good ones and one of its second pass
    assert all(b.inputs.shape == (4, 3, 32, 32) for b in batches)
    assert loader.stats["skipped"] == 1 and loader.stats["seen"] >= 9


# --------------------------------------------------------------------------- 1b. video frames


def _video(width: int, height: int, num_frames: int = 16) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"threads": "1"}
        for i in range(num_frames):
            frame = np.full((height, width, 3), 8 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


VIDEO_TINY = {"encoder": {"arch": "vit_tiny", "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 4},
              "predictor": {"embed_dim": 24, "depth": 1, "num_heads": 4},
              "input": {"num_frames": 8, "frame_step": 2, "crop_size": 32}}


def test_video_frames_past_the_bound_are_refused_by_the_probe_before_decoding():
    from jepa.modalities.video import pyav_io
    from jepa.modalities.video.decode import probe_video

    from jepa.vision.pixels import MAX_PIXELS

    assert pyav_io.MAX_FRAME_PIXELS == MAX_PIXELS  # one bound (the decoder's child imports no jepa)
    small = _video(32, 32)
    with pytest.raises(ValueError, match="declares 32x32 = 1,024 pixels a frame, more than the 1,000"):
        pyav_io.probe(small, max_pixels=1000)
    thin = _video(2, 4096)  # 2 KB; at crop 224 each frame's evaluation resize is 256 x 524,288
    assert len(thin) < 10_000
    for decoder in ("in_process", "process"):
        with pytest.raises(ValueError, match=r"'t'.*refused by its frame size.*aspect ratio 2,048:1"):
            probe_video({"__key__": "t", "mp4": thin}, 15, decoder, crop_size=224)


def test_a_video_whose_frames_exceed_the_bound_is_skipped_in_evaluation(tmp_path, resize_guard):
    from jepa.modalities.video import VideoModality
    from jepa.modalities.video.config import VideoConfig, VideoInputConfig
    from jepa.modalities.video.decode import probe_video
    from jepa.modalities.video.transforms import eval_batch as video_eval_batch
    from jepa.modalities.video.transforms import train_batch as video_train_batch

    # the probe bounds the eval resize at the recipe's crop size: 224 makes the 2 x 4096 frames 256 x 524,288
    modality = VideoModality(VideoConfig(**{**VIDEO_TINY, "input": {**VIDEO_TINY["input"], "crop_size": 224}}))
    good, thin = _video(32, 32), _video(2, 4096)
    shard = write_tar(tmp_path / "v-000000.tar",
                      labelled_members([("a", "mp4", good, 0), ("thin", "mp4", thin, 1), ("b", "mp4", good, 1)]))
    data = ShardData(str(shard), modality)
    data.scan()
    batches = list(data.passes(PassSpec(batch_size=4)))
    assert [tuple(x.shape) for x, _, _ in batches] == [(2, 3, 8, 224, 224)] and data.skipped_last_pass == 1

    # an item that did not come through the probe's check: every view refuses it before reading a frame
    item = probe_video({"__key__": "thin", "mp4": thin}, 15, "in_process", crop_size=32)
    cfg = VideoInputConfig(num_frames=8, frame_step=2, crop_size=224)
    with pytest.raises(ValueError, match="'thin'.*refused by its frame size"):
        video_eval_batch([item], cfg)
    with pytest.raises(ValueError, match="'thin'.*refused by its frame size"):
        video_train_batch([item], cfg, torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------- 2. labels


@pytest.mark.parametrize("cls, problem", [
    (b"1000000000000", r"label 1000000000000 is outside 0..1048575"),
    (b"-1", r"label -1 is outside"),
    ("\u0663".encode(), r"'cls' is .* not a class number"),  # an Arabic-Indic 3: int() takes it
    (b"1e3", r"'cls' is .* not a class number"),
    (b"", r"'cls' is .* not a class number"),
])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_bad_label_is_refused_by_the_scan_in_one_line_naming_the_sample(tmp_path, cls, problem, num_workers):
    members = labelled_members([(f"s{i}", "png", b"unused", i % 2) for i in range(4)])
    members["s2.cls"] = cls
    spec = f"{tmp_path}/l-{{000000..000001}}.tar"
    write_tar(tmp_path / "l-000000.tar", labelled_members([("t0", "png", b"unused", 0)]))
    write_tar(tmp_path / "l-000001.tar", members)
    with pytest.raises(ValueError, match=rf"sample 's2' of .*l-000001.tar: {problem}") as caught:
        ShardData(spec, None).scan(num_workers)  # type: ignore[arg-type]  # labels only: nothing is decoded
    assert "\n" not in str(caught.value)


def test_a_label_past_the_manifests_class_count_is_refused(tmp_path, tiny_recipe):
    from jepa.data import shard_folder

    src = load_source(f"pixels:{tiny_recipe}")
    manifest = shard_folder(_image_folder(tmp_path / "f", ["blue", "green"], 2, 0), tmp_path / "s", src.modality,
                            prefix="s", max_count=10, show_progress=False)
    tar = tmp_path / "s" / manifest.shards[0].name
    import tarfile

    with tarfile.open(tar) as t:
        members = {m.name: t.extractfile(m).read() for m in t.getmembers()}  # type: ignore[union-attr]
    first_cls = next(name for name in members if name.endswith(".cls"))
    members[first_cls] = b"2"  # the manifest names 2 classes
    write_tar(tar, members)
    with pytest.raises(ValueError, match=r"label 2 is outside 0..1 \(its manifest names 2 classes\)"):
        ShardData(str(tmp_path / "s"), src.modality).scan()


def test_online_evaluation_skips_and_counts_bad_labels_and_undecodable_samples(tmp_path, tiny_recipe):
    modality = load_source(f"pixels:{tiny_recipe}").modality
    samples = [(f"g{i}", "png", _colour_png((20, 20, 220), i), i % 2) for i in range(5)]
    members = labelled_members(samples)
    members.update(labelled_members([("neg", "png", _colour_png((1, 2, 3), 9), 0),
                                     ("huge", "png", _colour_png((1, 2, 3), 9), 0),
                                     ("thin", "png", _png(1, 200_000), 0)]))
    members["neg.cls"], members["huge.cls"] = b"-1", b"1000000000000"
    shard = write_tar(tmp_path / "o-000000.tar", members)
    skipped: list[str] = []
    batches = list(labelled_batches(str(shard), modality, 2, skipped=skipped))
    assert torch.cat([y for _, y in batches]).tolist() == [0, 1, 0, 1, 0]
    assert len(skipped) == 3 and "'neg'" in skipped[0] and "'huge'" in skipped[1] and "'thin'" in skipped[2]


class _OneRank:
    """The piece of an engine the online k-NN uses, for one CPU rank."""

    class dist:  # noqa: N801 - mirrors engine.dist
        rank, world_size, device = 0, 1, torch.device("cpu")

    def autocast(self):
        return contextlib.nullcontext()

    def all_gather_object(self, obj):
        return [obj]


class _Pixels(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, None]  # one token: the evaluation view's pixels


def _online_knn(tmp_path: Path, tiny_recipe: Path, bank: list[str], query: list[str], bank_members=None):
    from jepa.data import shard_folder
    from jepa.online_eval import OnlineKNN
    from jepa.recipe import EvalConfig

    modality = load_source(f"pixels:{tiny_recipe}").modality
    shard_folder(_image_folder(tmp_path / "bank", bank, 4, 0), tmp_path / "bank_s", modality, prefix="b",
                 max_count=100, show_progress=False)
    shard_folder(_image_folder(tmp_path / "query", query, 3, 1), tmp_path / "query_s", modality, prefix="q",
                 max_count=100, show_progress=False)
    if bank_members is not None:
        write_tar(tmp_path / "bank_s" / "b-000001.tar", bank_members)
    cfg = EvalConfig(every_steps=1, train_shards=f"{tmp_path}/bank_s/b-{{000000..{1 if bank_members else 0:06d}}}.tar",
                     val_shards=str(tmp_path / "query_s"), k=3)
    return OnlineKNN(cfg, modality, _OneRank())  # type: ignore[arg-type]


def test_online_knn_survives_a_negative_label(tmp_path, tiny_recipe):
    bad = labelled_members([("neg", "png", _colour_png((220, 20, 20), 7), 0)])
    bad["neg.cls"] = b"-1"  # in the bank: its vote went to class -1
    knn = _online_knn(tmp_path, tiny_recipe, list(COLORS), list(COLORS), bad)
    assert knn(_Pixels())["knn_top1"] == 1.0


def test_online_knn_numbers_the_queries_by_the_banks_class_names(tmp_path, tiny_recipe):
    knn = _online_knn(tmp_path, tiny_recipe, list(COLORS), ["green", "red"])
    assert knn(_Pixels())["knn_top1"] == 1.0
    with pytest.raises(ValueError, match=r"eval.val_shards=.*names class 'purple'.*not among the 3 classes"):
        _online_knn(tmp_path / "2", tiny_recipe, list(COLORS), ["green", "purple"])


# --------------------------------------------------------------------------- 3. classes by name


@pytest.mark.parametrize("as_shards", [False, True])
def test_a_validation_split_holding_some_of_the_classes_is_scored_by_class_name(tmp_path, tiny_recipe, as_shards):
    from jepa.data import shard_folder

    src = load_source(f"pixels:{tiny_recipe}")
    train = _image_folder(tmp_path / "train", list(COLORS), 4, 0)
    val = _image_folder(tmp_path / "val", ["green", "red"], 3, 1)  # numbered 0, 1 on its own; 1, 2 in train's
    if as_shards:
        for split in ("train", "val"):
            shard_folder(tmp_path / split, tmp_path / f"{split}_s", src.modality, prefix=split, max_count=100,
                         show_progress=False)
        train, val = tmp_path / "train_s", tmp_path / "val_s"
    settings = EvalSettings(protocols=("knn", "logreg"), k=3, lbfgs_iters=20, device="cpu")
    report = evaluate_shards(src, str(train), str(val), settings)
    assert report.num_classes == 3 and [r.top1 for r in report.results] == [1.0, 1.0]


def test_a_validation_class_the_training_split_lacks_is_refused_in_one_line(tmp_path, tiny_recipe):
    src = load_source(f"pixels:{tiny_recipe}")
    train = _image_folder(tmp_path / "train", list(COLORS), 2, 0)
    val = _image_folder(tmp_path / "val", ["green", "purple"], 2, 1)
    settings = EvalSettings(protocols=("knn",), k=3, device="cpu")
    with pytest.raises(ValueError, match=r"val: class 'purple' not among the 3 classes of .*train") as caught:
        evaluate_shards(src, str(train), str(val), settings)
    assert "\n" not in str(caught.value)
