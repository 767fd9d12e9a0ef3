"""Streaming evaluation: grid heads equal separate probes, the streamed k-NN equals the full one,
the memory plan refuses up front, peak memory does not grow with the token count of the split,
and an image folder is read directly with its corrupt files skipped and counted."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from jepa.eval.evaluate import EvalSettings, evaluate, evaluate_shards, holdout_mask
from jepa.eval.grid import Grid
from jepa.eval.heads import AttentiveGrid, GridAdamW, LinearGrid, grid_loss
from jepa.eval.knn import StreamingKNN
from jepa.eval.probes import topk_accuracy
from jepa.eval.synthetic import SyntheticData, TokenEncoder
from jepa.sources import EncoderSource, load_source
from knn_reference import knn_scores
from tar_files import labelled_members, write_tar
from tiny_recipes import tiny_image_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread (threads only add synchronisation on busy cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _plain_attentive(m: AttentiveGrid, g: int, x: torch.Tensor) -> torch.Tensor:
    """Head ``g`` of ``m`` written the plain way: keys and values of every token, attention, MLP."""
    B, T, D = x.shape
    h = m.attn_heads
    for blk in m.blocks:
        xn = F.layer_norm(x, (D,)) * blk.norm1.weight[g] + blk.norm1.bias[g]
        q, k, v = (xn @ blk.qkv_w[g] + blk.qkv_b[g]).view(B, T, 3, h, D // h).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // h), -1) @ v
        x = x + a.transpose(1, 2).reshape(B, T, D) @ blk.proj_w[g] + blk.proj_b[g]
        hn = F.layer_norm(x, (D,)) * blk.norm2.weight[g] + blk.norm2.bias[g]
        x = x + F.gelu(hn @ blk.mlp.fc1_w[g] + blk.mlp.fc1_b[g]) @ blk.mlp.fc2_w[g] + blk.mlp.fc2_b[g]
    xn = F.layer_norm(x, (D,)) * m.norm_x.weight[g] + m.norm_x.bias[g]
    q = (m.query[g] @ m.q_w[g] + m.q_b[g]).view(h, D // h)
    k = (xn @ m.k_w[g]).view(B, T, h, D // h)
    v = (xn @ m.v_w[g] + m.v_b[g]).view(B, T, h, D // h)
    attn = (torch.einsum("he,bthe->bht", q, k) / math.sqrt(D // h)).softmax(-1)
    q1 = m.query[g] + torch.einsum("bht,bthe->bhe", attn, v).reshape(B, D) @ m.o_w[g] + m.o_b[g]
    hidden = F.gelu((F.layer_norm(q1, (D,)) * m.norm_q.weight[g] + m.norm_q.bias[g]) @ m.mlp.fc1_w[g] + m.mlp.fc1_b[g])
    q2 = q1 + hidden @ m.mlp.fc2_w[g] + m.mlp.fc2_b[g]
    return q2 @ m.head_w[g] + m.head_b[g]


@pytest.mark.parametrize("depth", [1, 2])
def test_attentive_grid_equals_the_plain_cross_attention_probe(depth):
    gen = torch.Generator().manual_seed(0)
    m = AttentiveGrid(3, 16, 5, attn_heads=4, depth=depth, generator=gen)
    with torch.no_grad():
        for p in m.parameters():  # away from the initial values (unit norms, zero biases) so every term counts
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    x = 2.0 * torch.randn(4, 7, 16, generator=gen) + 0.5
    out = m(x)
    assert out.shape == (3, 4, 5)
    for g in range(3):
        assert torch.allclose(out[g], _plain_attentive(m, g, x), atol=1e-5), g


def test_grid_heads_train_exactly_like_separate_adamw_probes():
    grid = Grid((1e-2, 3e-2), (0.0, 0.1))
    lin = LinearGrid(len(grid), 6, 4)
    with torch.no_grad():
        lin.weight.normal_(generator=torch.Generator().manual_seed(0))
    refs = []
    for g, (lr, wd) in enumerate(grid.pairs()):
        w, b = lin.weight[g].detach().clone().requires_grad_(), lin.bias[g].detach().clone().requires_grad_()
        refs.append((w, b, torch.optim.AdamW([{"params": [w], "weight_decay": wd}, {"params": [b], "weight_decay": 0.0}],
                                             lr=lr)))
    opt = GridAdamW(lin.parameters(), lin.decayed(), *grid.tensors())
    gen = torch.Generator().manual_seed(1)
    for _ in range(6):
        x, y = torch.randn(16, 6, generator=gen), torch.randint(0, 4, (16,), generator=gen)
        loss, _ = grid_loss(lin(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step(0.7)  # a schedule factor scales every head's lr
        xn = F.batch_norm(x, None, None, training=True, eps=1e-6)
        for (w, b, ref), (lr, _) in zip(refs, grid.pairs()):
            for group in ref.param_groups:
                group["lr"] = lr * 0.7
            ref.zero_grad()
            F.cross_entropy(xn @ w + b, y).backward()
            ref.step()
    for g, (w, b, _) in enumerate(refs):
        assert torch.allclose(lin.weight[g], w, atol=1e-6) and torch.allclose(lin.bias[g], b, atol=1e-6), g

    # Attentive heads are independent too: head 1 of a 2-head grid trains as it would alone.
    pair = AttentiveGrid(2, 8, 3, attn_heads=2, generator=torch.Generator().manual_seed(2))
    alone = AttentiveGrid(1, 8, 3, attn_heads=2)
    with torch.no_grad():
        for p_alone, p_pair in zip(alone.parameters(), pair.parameters()):
            p_alone.copy_(p_pair[1:2])
    grids = (Grid((1e-3, 5e-3), (0.05,)), Grid((5e-3,), (0.05,)))
    opts = [GridAdamW(h.parameters(), h.decayed(), *gr.tensors()) for h, gr in zip((pair, alone), grids)]
    for _ in range(4):
        x, y = torch.randn(5, 6, 8, generator=gen), torch.randint(0, 3, (5,), generator=gen)
        for h, o in zip((pair, alone), opts):
            loss, _ = grid_loss(h(x), y)
            o.zero_grad()
            loss.backward()
            o.step()
    assert all(torch.allclose(a[0], p[1], atol=1e-6) for a, p in zip(alone.parameters(), pair.parameters()))


def test_streamed_knn_equals_the_full_knn_in_any_chunking(monkeypatch):
    import jepa.eval.knn as knn_module

    gen = torch.Generator().manual_seed(0)
    train, labels = torch.randn(300, 12, generator=gen), torch.randint(0, 7, (300,), generator=gen)
    query = torch.randn(90, 12, generator=gen)
    full = knn_scores(train, labels, query, 7, k=15, temperature=0.1)
    monkeypatch.setattr(knn_module, "QUERY_CHUNK_ELEMENTS", 500)  # 500 // 41 = 12 queries per block
    knn = StreamingKNN(query, k=15, temperature=0.1)
    for i in torch.arange(300).split(41):
        knn.add(train[i], labels[i])
    assert knn.seen == 300 and knn.top_sim_QK.shape == (90, 15)
    assert torch.allclose(knn.scores(7), full, rtol=1e-5, atol=1e-6)


def test_holdout_is_class_stratified_seeded_and_never_takes_a_class_last_sample():
    labels = torch.cat([torch.full((50,), 0), torch.full((20,), 1), torch.full((1,), 2), torch.full((3,), 3)])
    eligible = torch.ones(74, dtype=torch.bool)
    eligible[:10] = False
    held = holdout_mask(labels, eligible, 0.1, seed=0)
    assert torch.bincount(labels[held], minlength=4).tolist() == [4, 2, 0, 1]
    assert not (held & ~eligible).any()
    assert torch.equal(held, holdout_mask(labels, eligible, 0.1, seed=0))
    assert not torch.equal(held, holdout_mask(labels, eligible, 0.1, seed=1))


class _CountingData(SyntheticData):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.passes_started = 0

    def passes(self, spec, num_workers=0):
        self.passes_started += 1
        return super().passes(spec, num_workers)


def _synthetic_source(tokens: int, dim: int) -> EncoderSource:
    return EncoderSource(TokenEncoder(16, tokens, dim).eval(), None, "random", "token encoder", "target",  # type: ignore[arg-type]
                         "synthetic")


def test_a_plan_that_does_not_fit_is_refused_with_numbers_before_any_work(monkeypatch):
    import importlib

    evaluate_module = importlib.import_module("jepa.eval.evaluate")  # the package exports a function of that name
    monkeypatch.setattr(evaluate_module, "host_available_bytes", lambda: 300 << 20)
    monkeypatch.setattr(evaluate_module, "device_available_bytes", lambda device: 300 << 20)
    train, val = _CountingData(1000, 4, seed=1), _CountingData(100, 4, seed=2)
    settings = EvalSettings(protocols=("attentive",), batch_size=512, device="cpu")
    with pytest.raises(ValueError) as err:
        evaluate(_synthetic_source(1024, 64), train, val, settings)
    message = str(err.value)
    assert "nothing was run" in message and "host memory: needs about" in message and "but 0.29 GiB are free" in message
    assert "attentive needs about" in message and "lower --batch-size, --attentive-depth" in message
    assert train.passes_started == 0 and val.passes_started == 1  # one pass of 2 samples measured the encoder

    settings = EvalSettings(protocols=("attentive",), batch_size=16, device="cpu", epochs=1,
                            attentive_lrs=(1e-3,), attentive_wds=(0.0,))
    report = evaluate(_synthetic_source(64, 32), train, val, settings)  # a small batch fits the same budget
    assert report.results[0].top1 > 0.5 and report.memory_plan[-1]["what"] == "attentive"


def test_attentive_stores_tokens_once_when_they_fit_and_learns_as_the_streamed_probe(tmp_path):
    """Without augmentation the attentive probe encodes each split once and trains on the stored tokens
    (4 epochs: the training split is read once, not 4 times), when the tokens fit; a --feature-cache
    folder keeps the streamed probe. Both learn the synthetic classes equally well."""
    settings = dict(protocols=("attentive",), batch_size=32, device="cpu", epochs=4, attentive_lrs=(1e-3, 1e-2),
                    attentive_wds=(1e-2,))
    reports, passes = {}, {}
    for cache in ("auto", str(tmp_path)):
        train, val = _CountingData(400, 4, noise=1.0, seed=1), _CountingData(100, 4, noise=1.0, seed=2)
        reports[cache] = evaluate(_synthetic_source(16, 32), train, val, EvalSettings(**settings, feature_cache=cache))
        passes[cache] = (train.passes_started, val.passes_started)
    stored, streamed = reports["auto"].results[0], reports[str(tmp_path)].results[0]
    assert stored.settings.get("stored_tokens") and not streamed.settings.get("stored_tokens")
    assert passes["auto"] == (1, 2)  # train: one encoding pass; val: the shape probe and one encoding pass
    assert passes[str(tmp_path)] == (4 + 1, 2)  # 4 epochs and the held-out pass; val: shape probe and scoring
    assert any(n["what"] == "stored tokens (attentive)" for n in reports["auto"].memory_plan)
    assert stored.top1 > 0.8 and abs(stored.top1 - streamed.top1) <= 0.1, (stored.top1, streamed.top1)


def test_attentive_probe_peak_memory_stays_far_below_the_token_cache(capsys):
    """tools/eval_memory.py scaled down, in this process (2000 samples x 256 tokens x 256): the previous
    evaluation cached 250 MiB of float16 tokens; the streamed probe's peak resident memory (restarted
    just before it runs) must grow by far less, and the probe must still learn."""
    from tool_module import load_tool

    tool = load_tool("eval_memory")
    if not tool.reset_peak():
        pytest.skip("the kernel does not let this process restart its peak RSS (/proc/self/clear_refs)")
    result = tool.main(["--samples", "2000", "--val-samples", "200", "--tokens", "256", "--dim", "256",
                        "--batch-size", "16", "--classes", "4", "--noise", "1.0", "--lrs", "1e-3", "--wds", "1e-2"])
    capsys.readouterr()
    assert result["old_token_cache_bytes"] == 2000 * 256 * 256 * 2 and result["peak_was_reset"]
    assert result["peak_rss_growth_bytes"] < 0.4 * result["old_token_cache_bytes"], result
    assert result["val_top1"] > 0.5, result  # chance is 0.25: the streamed probe learned


def _png(color: tuple[int, int, int], seed: int) -> bytes:
    from torchvision.io import encode_png

    gen = torch.Generator().manual_seed(seed)
    img = torch.tensor(color, dtype=torch.uint8).view(3, 1, 1).expand(3, 32, 32).clone()
    img[:, :8] = torch.randint(0, 255, (3, 8, 32), generator=gen, dtype=torch.uint8)
    return encode_png(img).numpy().tobytes()


def _image_folder(root: Path, per_class: int, seed: int) -> Path:
    colors = {"blue": (20, 20, 220), "green": (20, 200, 20), "red": (220, 20, 20)}
    for c, (name, color) in enumerate(colors.items()):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"{i:03d}.png").write_bytes(_png(color, seed * 1000 + c * 100 + i))
    return root


def test_an_image_folder_is_read_directly_skipping_corrupt_files_like_its_shards(tmp_path):
    from jepa.data import shard_folder

    train = _image_folder(tmp_path / "train", 8, 0)
    (train / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a PNG header, then nothing
    (train / "red" / "notes.txt").write_text("not an image: ignored")
    val = _image_folder(tmp_path / "val", 4, 1)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_image_recipe(1)))
    src = load_source(f"random:{recipe}")
    settings = EvalSettings(protocols=("knn", "logreg"), k=3, lbfgs_iters=20, device="cpu")
    report = evaluate_shards(src, str(train), str(val), settings)
    assert report.num_train == 24 and report.num_val == 12 and report.skipped["train_files"] == 1
    assert report.results[0].top1 > 0.9  # one colour per class: the neighbours agree

    shards = shard_folder(train, tmp_path / "shards", src.modality, prefix="train", max_count=10, show_progress=False)
    assert shards.total == 24 and len(shards.skipped) == 1
    again = evaluate_shards(src, str(tmp_path / "shards"), str(val), settings)
    assert [(r.protocol, r.top1) for r in again.results] == [(r.protocol, r.top1) for r in report.results]


def test_raw_pixels_reference_is_the_flattened_evaluation_view(tmp_path):
    """``pixels:RECIPE``: no network, one token per sample holding the modality's normalised evaluation view."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_image_recipe(1)))
    src = load_source(f"pixels:{recipe}")
    x = src.modality.example_input(2, torch.Generator().manual_seed(0))
    assert src.kind == "pixels" and src.encoder.embed_dim == x[0].numel() and not list(src.encoder.parameters())
    assert torch.equal(src.encoder(x), x.flatten(1)[:, None])
    train, val = _image_folder(tmp_path / "train", 6, 0), _image_folder(tmp_path / "val", 3, 1)
    report = evaluate_shards(src, str(train), str(val), EvalSettings(protocols=("knn",), k=3, device="cpu"))
    assert report.tokens == 1 and report.width == x[0].numel() and report.results[0].top1 > 0.9
    with pytest.raises(ValueError, match="name a recipe after 'pixels:'"):
        load_source("pixels:")


@pytest.mark.parametrize("protocols", [("knn", "logreg", "linear"), ("attentive",)])
def test_samples_of_a_shard_that_do_not_decode_are_not_counted_as_used(tmp_path, protocols):
    # a corrupt sample inside a shard is only found when decoded: it is skipped by every probe, and the
    # report's sample counts say how many were used (they counted it before)
    colors = [(20, 20, 220), (20, 200, 20), (220, 20, 20)]
    good = [(f"s{i:03d}", _png(colors[i % 3], i), i % 3) for i in range(24)]
    broken = [(f"b{i:03d}", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, i % 3) for i in range(6)]
    write_tar(tmp_path / "train" / "train-000000.tar",
              labelled_members([(key, "png", data, label) for key, data, label in good + broken]))
    val = _image_folder(tmp_path / "val", 4, 1)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_image_recipe(1)))
    settings = EvalSettings(protocols=protocols, k=3, lbfgs_iters=20, device="cpu", epochs=1, linear_lrs=(1e-2,),
                            linear_wds=(0.0,), attentive_lrs=(1e-3,), attentive_wds=(0.0,), holdout=0.25)
    report = evaluate_shards(load_source(f"random:{recipe}"), str(tmp_path / "train" / "train-000000.tar"), str(val),
                             settings)
    assert report.num_train == 24 and report.num_val == 12
    labels = torch.tensor([label for _, _, label in good + broken])
    held = holdout_mask(labels, torch.ones(30, dtype=torch.bool), 0.25, 0)
    fit_decoded = int((~held[:24]).sum())  # the first 24 decode; the shard's order is the index's
    assert 0 < fit_decoded < int((~held).sum())
    for r in report.results:
        assert r.num_train == (24 if r.protocol in ("knn", "logreg") else fit_decoded), (r.protocol, r.num_train)
