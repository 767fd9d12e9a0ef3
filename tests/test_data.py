"""The training stream (exact resume, sharding, corrupt data), the synthetic source and the labelled reader."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from jepa.objectives.ijepa import MaskBatches
from jepa import data as data_mod
from jepa.data import Batch, ShardSample, expand_shards, read_shard, write_shard_set
from jepa.data.build import build_train_loader
from jepa.data import stream as stream_mod
from jepa.eval.reader import labelled_batches
from jepa.interfaces import MaskSampler, MaskSet, Modality
from jepa.modalities.image import ImageModality
from jepa.modalities.image.config import ImageConfig
from jepa.modalities.image.demo_data import write_demo_dataset
from jepa.modalities.image.transforms import decode_image
from jepa.recipe import DataConfig
from tiny_recipes import tiny_image_recipe

# --------------------------------------------------------------------------- test doubles


class TinySampler(MaskSampler):
    """Random context/target split of 16 tokens, drawn only from the generator."""

    num_tokens = 16

    def __call__(self, batch_size: int, generator: torch.Generator) -> MaskSet:
        perm = torch.rand(batch_size, 16, generator=generator).argsort(dim=1)
        return MaskSet(perm[:, :10], perm[:, 10:14].reshape(batch_size, 1, 4))


class IdModality(Modality):
    """Decodes a sample to its integer id (after checking the image decodes), so batches show
    exactly which samples they hold; ``train_batch`` adds a generator draw to prove it is used."""

    name = "ids"
    config_model = ImageConfig

    def build_encoder(self):
        raise NotImplementedError

    def build_predictor(self):
        raise NotImplementedError

    def build_mask_sampler(self):
        return TinySampler()

    def decode(self, sample: dict[str, Any]) -> int:
        decode_image(sample)
        return int(sample["__key__"].rsplit("_", 1)[1])

    def train_batch(self, items, generator):
        return torch.stack([torch.tensor(items), torch.randint(0, 1000, (len(items),), generator=generator)], dim=1)

    def eval_batch(self, items):
        return torch.tensor(items)

    def example_input(self, batch_size, generator=None):
        return torch.randn(batch_size, 2, generator=generator)


IMAGE_CFG = ImageConfig.model_validate({"encoder": {"arch": "vit_tiny", "patch_size": 8}, "input": {"crop_size": 32}})


def _png(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (6 + seed % 5, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _write_id_shards(out: Path, num_shards: int, per_shard: int, corrupt: set[int] = frozenset()) -> list[str]:
    """Shards of tiny PNGs keyed ``s_<id>``, ids 0..num_shards*per_shard-1; ids in ``corrupt`` hold garbage."""
    def job(start: int):
        return lambda: [ShardSample(f"s_{i}", "png", b"garbage" if i in corrupt else _png(i), i % 3)
                        for i in range(start, start + per_shard)]

    m = write_shard_set([job(k * per_shard) for k in range(num_shards)], out, prefix="s", max_count=per_shard,
                        max_bytes=1 << 30, workers=1, show_progress=False)
    return [str(out / s.name) for s in m.shards]


@pytest.fixture(scope="module")
def id_shards(tmp_path_factory) -> list[str]:
    return _write_id_shards(tmp_path_factory.mktemp("ids"), num_shards=8, per_shard=20)


@pytest.fixture(scope="module")
def image_shards(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("demo")
    write_demo_dataset(out, num_images=160, num_val=30, size=24, num_classes=5, max_count=20, workers=1,
                       show_progress=False)
    return str(out)


def _cfg(shards: list[str] | str, **kw) -> DataConfig:
    pattern = shards if isinstance(shards, str) else "::".join(shards)
    return DataConfig(train_shards=pattern, **{"num_workers": 0, "shuffle_buffer": 20, "prefetch_factor": 2, **kw})


def _loader(cfg: DataConfig, modality=None, *, seed=0, rank=0, world=1, mb=8, state=None, sampler=None):
    modality = modality or IdModality()
    return build_train_loader(cfg, modality, MaskBatches(modality, sampler or TinySampler()), seed=seed, rank=rank,
                              world_size=world, micro_batch_size=mb, state=state)


def _take(it, n: int) -> list[Batch]:
    return [next(it) for _ in range(n)]


def _assert_same(a: list[Batch], b: list[Batch]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x.inputs, y.inputs)
        assert len(x.masks) == len(y.masks)
        for mx, my in zip(x.masks, y.masks):
            assert torch.equal(mx.context_idx_BK, my.context_idx_BK)
            assert torch.equal(mx.target_idx_BMT, my.target_idx_BMT)


# --------------------------------------------------------------------------- stream semantics


def test_every_sample_once_per_shard_epoch_and_endless(id_shards):
    it = iter(_loader(_cfg(id_shards)))
    ids = torch.cat([b.inputs[:, 0] for b in _take(it, 40)])  # 2 shard-epochs of 160
    first, second = ids[:160], ids[160:]
    assert sorted(first.tolist()) == list(range(160)) == sorted(second.tolist())
    assert not torch.equal(first, second)  # a new permutation and buffer each shard-epoch
    assert abs(first[:80].float().mean().item() - 79.5) < 25  # shuffled across shards, not file order


def test_same_seed_same_stream_other_seed_other_stream(id_shards):
    a = _take(iter(_loader(_cfg(id_shards), seed=5)), 6)
    _assert_same(a, _take(iter(_loader(_cfg(id_shards), seed=5)), 6))
    c = _take(iter(_loader(_cfg(id_shards), seed=6)), 6)
    assert not torch.equal(a[0].inputs, c[0].inputs)
    draws = torch.stack([b.inputs[:, 1] for b in a])  # train_batch's generator draws, per batch
    assert len({tuple(d.tolist()) for d in draws}) == 6  # every batch has its own generator


def test_ranks_are_disjoint_within_a_shard_epoch(id_shards):
    per_rank = []
    for rank in range(2):
        it = iter(_loader(_cfg(id_shards), rank=rank, world=2))
        per_rank.append(torch.cat([b.inputs[:, 0] for b in _take(it, 10)]).tolist())  # 80 = one shard-epoch
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == list(range(160))


def test_workers_split_shards_disjointly(id_shards):
    it = iter(_loader(_cfg(id_shards, num_workers=2), mb=8))
    batches = _take(it, 20)  # 10 per worker = 80 samples = one shard-epoch of each worker
    ids = torch.cat([b.inputs[:, 0] for b in batches]).tolist()
    assert sorted(ids) == list(range(160))


def test_fewer_shards_than_workers_resamples_and_warns(id_shards, caplog):
    with caplog.at_level(logging.WARNING, logger="jepa.data"):
        loader = _loader(_cfg(id_shards[:3]), rank=1, world=4)
    assert "only 3 shards for 4 loader workers" in caplog.text
    ids = torch.cat([b.inputs[:, 0] for b in _take(iter(loader), 10)])
    assert ids.numel() == 80 and ids.max() < 60


# --------------------------------------------------------------------------- exact resume


@pytest.mark.parametrize("k", [0, 3, 13, 17, 20])
def test_exact_resume_single_process(image_shards, k):
    """Resume points in the buffer-fill, steady, flush phases and at a shard-epoch end (20 batches)."""
    cfg = _cfg(f"{image_shards}/train")
    modality = ImageModality(IMAGE_CFG)
    full = _take(iter(_loader(cfg, modality)), k + 12)
    head = _loader(cfg, modality)
    it = iter(head)
    _take(it, k)
    state = json.loads(json.dumps(head.state_dict()))  # survives a JSON round trip
    resumed = _loader(cfg, modality, state=state)
    _assert_same(_take(iter(resumed), 12), full[k:])
    assert resumed.stats["batches"] == k + 12


def test_second_iter_continues_where_the_first_stopped(id_shards):
    full = _take(iter(_loader(_cfg(id_shards))), 7)
    loader = _loader(_cfg(id_shards))
    first = _take(iter(loader), 3)  # the first iterator read ahead into its buffer; the second must not skip
    _assert_same(first + _take(iter(loader), 4), full)


def test_manifest_total_checked_against_samples_per_epoch(id_shards, caplog):
    assert data_mod.shards_total(id_shards) == 160 and data_mod.shards_total(["http://x/a.tar"]) is None
    with caplog.at_level(logging.WARNING, logger="jepa.data"):
        _loader(_cfg(id_shards, samples_per_epoch=160))
        assert "samples_per_epoch" not in caplog.text
        _loader(_cfg(id_shards, samples_per_epoch=1000))
    assert "the shards hold 160 samples but data.samples_per_epoch is 1000" in caplog.text


def test_resume_skips_shards_without_buffered_samples(id_shards, monkeypatch):
    cfg = _cfg(id_shards)  # one worker: 8 shards of 20 per shard-epoch, buffer 20
    head = _loader(cfg)
    it = iter(head)
    _take(it, 14)  # 112 emitted, 132 consumed: the oldest shards have left the buffer
    state = head.state_dict()
    expected = next(it)
    opened: list[str] = []
    real = stream_mod.read_shard
    monkeypatch.setattr(stream_mod, "read_shard", lambda url, limit=None: opened.append(url) or real(url, limit))
    _assert_same([next(iter(_loader(cfg, state=state)))], [expected])
    finished = state["workers"][0]["shard_counts"]
    assert finished == [20] * 6
    assert 1 <= len(opened) <= 6  # the live shard plus only the finished shards still in the buffer


@pytest.mark.parametrize("k", [5, 8])
def test_exact_resume_with_two_workers(image_shards, k):
    """Odd k: the next batch is the second worker's, so the resumed loader rotates worker ids."""
    cfg = _cfg(f"{image_shards}/train", num_workers=2)
    modality = ImageModality(IMAGE_CFG)
    full = _take(iter(_loader(cfg, modality)), k + 6)
    head = _loader(cfg, modality)
    it = iter(head)
    _take(it, k)
    state = head.state_dict()
    assert state["next_worker"] == k % 2
    del it
    _assert_same(_take(iter(_loader(cfg, modality, state=state)), 6), full[k:])


def test_exact_resume_with_real_mask_sampler(image_shards):
    cfg_img = ImageConfig.model_validate({"encoder": {"arch": "vit_tiny", "patch_size": 4},
                                          "input": {"crop_size": 32}, "mask": {"min_keep": 4}})
    modality = ImageModality(cfg_img)
    sampler = modality.build_mask_sampler()
    cfg = _cfg(f"{image_shards}/train")

    def make(state=None):
        return build_train_loader(cfg, modality, MaskBatches(modality, sampler), seed=1, rank=0, world_size=1, micro_batch_size=8,
                                  state=state)

    full = _take(iter(make()), 10)
    head = make()
    it = iter(head)
    _take(it, 6)
    _assert_same(_take(iter(make(head.state_dict())), 4), full[6:])
    assert full[0].inputs.shape == (8, 3, 32, 32) and full[0].masks[0].batch_size == 8


def test_state_from_other_settings_is_rejected(id_shards):
    head = _loader(_cfg(id_shards))
    _take(iter(head), 2)
    state = head.state_dict()
    with pytest.raises(ValueError, match="num_workers was 0.*now 2"):
        _loader(_cfg(id_shards, num_workers=2), state=state)
    with pytest.raises(ValueError, match="micro_batch_size"):
        _loader(_cfg(id_shards), mb=4, state=state)
    with pytest.raises(ValueError, match="data.train_shards"):
        _loader(_cfg(id_shards[:-1]), state=state)


# --------------------------------------------------------------------------- corrupt data


def test_corrupt_sample_and_truncated_shard_are_skipped_and_counted(tmp_path, caplog):
    urls = _write_id_shards(tmp_path, num_shards=4, per_shard=10, corrupt={13})
    data = Path(urls[2]).read_bytes()
    Path(urls[2]).write_bytes(data[: len(data) // 2])  # cut in the middle of a member
    got = []
    with pytest.raises(data_mod.SHARD_ERRORS):
        for sample in read_shard(urls[2]):
            got.append(sample)
    total = 30 + len(got)  # raw samples per shard-epoch
    loader = _loader(_cfg(urls, shuffle_buffer=5, min_samples_for_skip_check=10_000), mb=1)
    it = iter(loader)
    with caplog.at_level(logging.WARNING, logger="jepa.data"):
        ids = [next(it).inputs[0, 0].item() for _ in range(2 * (total - 1))]  # two shard-epochs
    assert 13 not in ids and len(set(ids)) == total - 1
    stats = loader.stats
    assert stats["seen"] == 2 * total and stats["skipped"] == 2 and stats["broken_shards"] == 2
    assert caplog.text.count(f"shard {urls[2]} is broken") == 1  # warned once per shard
    assert "s_13" in caplog.text and "skipped as corrupt" in caplog.text


def test_truncation_at_member_boundary_is_detected(tmp_path):
    urls = _write_id_shards(tmp_path, num_shards=1, per_shard=6)
    data = Path(urls[0]).read_bytes()
    offsets = [o for o in range(512, len(data), 512) if data[o + 257:o + 262] == b"ustar"]  # member headers
    Path(urls[0]).write_bytes(data[: offsets[4]])  # ends cleanly after a member, no end-of-archive blocks
    got = []
    with pytest.raises(data_mod.SHARD_ERRORS):
        for s in read_shard(urls[0]):
            got.append(s["__key__"])
    assert got and len(got) < 6


def test_skip_rate_threshold_raises(tmp_path):
    urls = _write_id_shards(tmp_path, num_shards=2, per_shard=10, corrupt=set(range(0, 20, 3)))  # 7 of 20
    loader = _loader(_cfg(urls, max_skip_rate=0.2, min_samples_for_skip_check=15), mb=2)
    with pytest.raises(RuntimeError, match="max_skip_rate=0.2"):
        _take(iter(loader), 20)


def test_all_corrupt_raises_instead_of_hanging(tmp_path):
    urls = _write_id_shards(tmp_path, num_shards=2, per_shard=10, corrupt=set(range(20)))
    loader = _loader(_cfg(urls, min_samples_for_skip_check=30), mb=4)
    with pytest.raises(RuntimeError, match="could not be decoded"):
        next(iter(loader))


def test_expand_shards(id_shards, tmp_path):
    folder = str(Path(id_shards[0]).parent)
    assert expand_shards(f"{folder}/s-{{000000..000003}}.tar::{folder}/s-000007.tar") == id_shards[:4] + id_shards[7:]
    assert expand_shards(folder) == id_shards  # a shard folder: its manifest's shards
    with pytest.raises(ValueError, match="do not exist"):
        expand_shards(f"{folder}/s-{{000000..000009}}.tar")
    with pytest.raises(ValueError, match="empty shard pattern"):
        expand_shards(f"{id_shards[0]}::")
    piped = [s["__key__"] for s in read_shard(f"pipe:cat {id_shards[1]}")]
    assert piped == [s["__key__"] for s in read_shard(id_shards[1])] == [f"s_{i}" for i in range(20, 40)]


# --------------------------------------------------------------------------- synthetic source


def test_synthetic_global_batch_is_the_same_for_any_world_size():
    """Global batch 8 in micro batches of 2: 1 rank accumulating 4, 2 ranks accumulating 2 and 4 ranks
    with one micro batch each see the same rows and masks; the inputs of a step do not depend on the
    micro batch either."""
    cfg = DataConfig(source="synthetic", global_batch_size=8)
    modality = ImageModality(IMAGE_CFG)

    def batches(rank, world, mb, n=4, state=None):
        return _take(iter(build_train_loader(cfg, modality, MaskBatches(modality, TinySampler()), seed=3, rank=rank,
                                             world_size=world, micro_batch_size=mb, state=state)), n)

    def step_rows(world, mb, step):  # the step's micro batches in global row order
        accum = 8 // (world * mb)
        per_rank = [batches(r, world, mb, n=accum * (step + 1))[accum * step:] for r in range(world)]
        return [per_rank[r][a] for a in range(accum) for r in range(world)]

    for step in range(2):
        ref = step_rows(1, 2, step)
        for world in (2, 4):
            got = step_rows(world, 2, step)
            for a, b in zip(ref, got):
                assert torch.equal(a.inputs, b.inputs)
                for field in ("context_idx_BK", "target_idx_BMT"):
                    assert torch.equal(getattr(a.masks[0], field), getattr(b.masks[0], field))
        whole = batches(0, 1, 8, n=step + 1)[step]
        assert torch.equal(whole.inputs, torch.cat([b.inputs for b in ref]))
    one = batches(0, 1, 4)
    assert one[0].inputs.shape == (4, 3, 32, 32)
    loader = build_train_loader(cfg, modality, MaskBatches(modality, TinySampler()), seed=3, rank=0, world_size=1, micro_batch_size=4)
    it = iter(loader)
    _take(it, 1)
    assert loader.state_dict()["step"] == 1
    _assert_same(batches(0, 1, 4, state=loader.state_dict())[:2], one[1:3])


# --------------------------------------------------------------------------- labelled reader


def test_labelled_batches(image_shards):
    modality = ImageModality(IMAGE_CFG)
    pattern = f"{image_shards}/train/train-{{000000..000007}}.tar"
    batches = list(labelled_batches(pattern, modality, batch_size=32))
    assert [b[0].shape for b in batches] == [(32, 3, 32, 32)] * 5
    labels = torch.cat([b[1] for b in batches])
    assert labels.dtype == torch.int64 and labels.tolist() == [i % 5 for i in range(160)]  # file order
    again = torch.cat([b[1] for b in labelled_batches(f"{image_shards}/train", modality, 32, num_workers=2)])
    assert sorted(again.tolist()) == sorted(labels.tolist())


def test_labelled_batches_without_labels(tmp_path):
    m = write_shard_set([lambda: [ShardSample(f"u_{i}", "png", _png(i)) for i in range(3)]], tmp_path, prefix="u",
                        max_count=10, max_bytes=1 << 30, workers=1, show_progress=False)
    with pytest.raises(ValueError, match="shards have no labels"):
        list(labelled_batches(str(tmp_path / m.shards[0].name), ImageModality(IMAGE_CFG), 2))


def test_batch_to_and_pin_memory_protocol():
    b = Batch(torch.zeros(2, 3), MaskSet(torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 1, 1, dtype=torch.long)))
    moved = b.to("cpu")
    assert torch.equal(moved.inputs, b.inputs) and moved.masks[0].batch_size == 2
    if torch.cuda.is_available():
        assert b.pin_memory().inputs.is_pinned()


def test_bench_data_cli(image_shards, tmp_path):
    from typer.testing import CliRunner

    from jepa.cli import app

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""name: bench
modality: {{name: image, encoder: {{arch: vit_tiny, patch_size: 4}}, input: {{crop_size: 32}}, mask: {{min_keep: 4}}}}
data: {{train_shards: {image_shards}/train, num_workers: 0, shuffle_buffer: 10, global_batch_size: 16,
       samples_per_epoch: 160}}
optim: {{epochs: 2, warmup_epochs: 1}}
""")
    result = CliRunner().invoke(app, ["bench", "data", str(recipe), "--batches", "2", "--repeats", "1"])
    assert result.exit_code == 0, result.output
    for stage in ("decode", "train view", "masks", "whole pipeline, 1 worker"):
        assert stage in result.output


def test_uint8_batches_train_bitwise_like_float_batches(image_shards, tmp_path):
    """modality.input.batch_dtype uint8 (two loader workers hand over uint8 crops, the loop normalises them)
    trains exactly as the float32 default: the same losses, step after step."""
    from jepa.monitor import read_metrics
    from jepa.recipe import parse_recipe
    from jepa.train import train

    def losses(batch_dtype: str) -> list[float]:
        raw = tiny_image_recipe(0, crop_size=24, batch_dtype=batch_dtype)
        raw["modality"]["encoder"]["patch_size"] = 6
        raw["data"] = {"train_shards": f"{image_shards}/train", "global_batch_size": 8, "samples_per_epoch": 160,
                       "num_workers": 2, "shuffle_buffer": 20}
        raw.update(run_dir=str(tmp_path / batch_dtype), max_steps=4, log={"every_steps": 1})
        train(parse_recipe(raw, batch_dtype))
        return [r["loss"] for r in read_metrics(tmp_path / batch_dtype)]

    reference = losses("float32")
    assert len(reference) == 4 and losses("uint8") == reference
