"""V-JEPA 2: 3-D RoPE encoder and predictor against an independent plain-PyTorch forward of the authors'
architecture, and checkpoints in the authors' layout (written here with their key names and shapes) through
``jepa eval``, ``jepa export --format official / hf`` and ``init_from``; parameter counts of ViT-L/H/g."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from typer.testing import CliRunner

from jepa.cli import app
from jepa.modalities.video import VideoModality
from jepa.modalities.video.config import VideoConfig
from jepa.modalities.video.released import HUB_ARCHS, infer_arch
from jepa.nn.config import VIT_ARCHS
from jepa.sources import load_source

ROOT = Path(__file__).resolve().parents[1]
# A tiny V-JEPA 2: ViT-Ti width and depth (192, 12 blocks of 3 heads of 64: 20 + 20 + 20 rotated channels, 4
# not), 2 x 8 x 8 tubelets; predictor width 96 in 12 heads of 8 (2 + 2 + 2 rotated, 2 not), 3 mask tokens.
D, DEPTH, HEADS, MLP, PATCH, TUBELET = 192, 12, 3, 768, 8, 2
P, P_DEPTH, P_HEADS, P_MLP, NUM_TOKENS = 96, 2, 12, 384, 3
LAYER_NORM_EPS = 1e-6


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"jepa {' '.join(args)} exited {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result.output


# ------------------------------------------------------------------------ a checkpoint in the authors' layout
def _block_shapes(prefix: str, dim: int, mlp: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.norm1.weight": (dim,), f"{prefix}.norm1.bias": (dim,),
            f"{prefix}.attn.qkv.weight": (3 * dim, dim), f"{prefix}.attn.qkv.bias": (3 * dim,),
            f"{prefix}.attn.proj.weight": (dim, dim), f"{prefix}.attn.proj.bias": (dim,),
            f"{prefix}.norm2.weight": (dim,), f"{prefix}.norm2.bias": (dim,),
            f"{prefix}.mlp.fc1.weight": (mlp, dim), f"{prefix}.mlp.fc1.bias": (mlp,),
            f"{prefix}.mlp.fc2.weight": (dim, mlp), f"{prefix}.mlp.fc2.bias": (dim,)}


def authors_shapes() -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """Key -> shape of the authors' RoPE ``VisionTransformer`` and ``VisionTransformerPredictor`` (no position
    tables with ``use_rope``; mask tokens a ParameterList of (1, 1, P)), in their registration order."""
    enc = {"patch_embed.proj.weight": (D, 3, TUBELET, PATCH, PATCH), "patch_embed.proj.bias": (D,)}
    for i in range(DEPTH):
        enc |= _block_shapes(f"blocks.{i}", D, MLP)
    enc |= {"norm.weight": (D,), "norm.bias": (D,)}
    pred = {"predictor_embed.weight": (P, D), "predictor_embed.bias": (P,)}
    pred |= {f"mask_tokens.{g}": (1, 1, P) for g in range(NUM_TOKENS)}
    for i in range(P_DEPTH):
        pred |= _block_shapes(f"predictor_blocks.{i}", P, P_MLP)
    pred |= {"predictor_norm.weight": (P,), "predictor_norm.bias": (P,), "predictor_proj.weight": (D, P),
             "predictor_proj.bias": (D,)}
    return enc, pred


def random_state(shapes: dict[str, tuple[int, ...]], gen: torch.Generator) -> dict[str, torch.Tensor]:
    out = {}
    for key, shape in shapes.items():
        scale = 0.1 if key.endswith("bias") or "norm" in key else 0.05
        value = scale * torch.randn(shape, generator=gen)
        out[key] = value + 1 if "norm" in key and key.endswith("weight") else value
    return out


def write_authors_checkpoint(path: Path, seed: int = 0) -> dict:
    """What the authors' ``app/vjepa/train.py`` saves: three ``module.backbone.``-prefixed state dicts and metadata."""
    gen = torch.Generator().manual_seed(seed)
    enc_shapes, pred_shapes = authors_shapes()

    def wrapped(state):
        return {"module.backbone." + k: v for k, v in state.items()}

    ckpt = {"encoder": wrapped(random_state(enc_shapes, gen)), "predictor": wrapped(random_state(pred_shapes, gen)),
            "opt": {"state": {}, "param_groups": []}, "scaler": None,
            "target_encoder": wrapped(random_state(enc_shapes, gen)),
            "epoch": 7, "loss": 0.25, "batch_size": 24, "world_size": 128, "lr": 5.25e-4}
    torch.save(ckpt, path)
    return ckpt


def plain(state: dict) -> dict:
    return {k.replace("module.backbone.", ""): v.double() for k, v in state.items()}


# ------------------------------------------------------------------------ reference forward, written from the paper's code
def ref_rotate(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The authors' rotate_queries_or_keys: frequencies 1/10000^(i/(D/2)), sin/cos tiled twice, adjacent pairs."""
    half = x.shape[-1] // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=x.dtype) / half)
    freq = pos.to(x.dtype).unsqueeze(-1) * omega
    sin, cos = freq.sin(), freq.cos()
    sin, cos = torch.cat([sin, sin], -1), torch.cat([cos, cos], -1)
    pairs = x.unflatten(-1, (-1, 2))
    swapped = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return x * cos + swapped * sin


def ref_block(x, s, prefix, heads, pos_thw):
    """Pre-norm block with the authors' RoPEAttention, plain tensors, explicit softmax attention."""
    b, n, dim = x.shape
    hd = dim // heads
    y = F.layer_norm(x, (dim,), s[f"{prefix}.norm1.weight"], s[f"{prefix}.norm1.bias"], LAYER_NORM_EPS)
    qkv = (y @ s[f"{prefix}.attn.qkv.weight"].T + s[f"{prefix}.attn.qkv.bias"]).reshape(b, n, 3, heads, hd)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    a = 2 * ((hd // 3) // 2)

    def rope(t):
        parts = [ref_rotate(t[..., i * a:(i + 1) * a], pos_thw[i]) for i in range(3)]
        return torch.cat(parts + [t[..., 3 * a:]], dim=-1)

    q, k = rope(q), rope(k)
    attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hd), dim=-1)
    y = (attn @ v).transpose(1, 2).reshape(b, n, dim)
    x = x + y @ s[f"{prefix}.attn.proj.weight"].T + s[f"{prefix}.attn.proj.bias"]
    y = F.layer_norm(x, (dim,), s[f"{prefix}.norm2.weight"], s[f"{prefix}.norm2.bias"], LAYER_NORM_EPS)
    y = F.gelu(y @ s[f"{prefix}.mlp.fc1.weight"].T + s[f"{prefix}.mlp.fc1.bias"])
    return x + y @ s[f"{prefix}.mlp.fc2.weight"].T + s[f"{prefix}.mlp.fc2.bias"]


def ref_positions(ids: torch.Tensor, h: int, w: int) -> list[torch.Tensor]:
    """The authors' separate_positions: frame, row and column of raster ids; (B, N) -> (B, 1, N) over heads."""
    frame = ids // (h * w)
    row = (ids - frame * h * w) // w
    col = ids - frame * h * w - row * w
    return [p.unsqueeze(-2) if p.dim() == 2 else p for p in (frame, row, col)]


def ref_encoder(s: dict, x: torch.Tensor, keep=None) -> torch.Tensor:
    x = x.double()
    tokens = F.conv3d(x, s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=(TUBELET, PATCH, PATCH))
    t, h, w = tokens.shape[2:]
    tokens = tokens.flatten(2).transpose(1, 2)
    ids = torch.arange(t * h * w) if keep is None else keep
    if keep is not None:
        tokens = torch.stack([tokens[i, keep[i]] for i in range(len(keep))])
    pos = ref_positions(ids, h, w)
    for i in range(DEPTH):
        tokens = ref_block(tokens, s, f"blocks.{i}", HEADS, pos)
    return F.layer_norm(tokens, (D,), s["norm.weight"], s["norm.bias"], LAYER_NORM_EPS)


def ref_predictor(s: dict, ctx: torch.Tensor, ctx_idx, tgt_idx, grid: tuple[int, int, int], mask_index: int):
    """The authors' predictor: embed, mask tokens at the targets, sort by position, blocks, unsort, norm, proj."""
    x = ctx.double() @ s["predictor_embed.weight"].T + s["predictor_embed.bias"]
    queries = s[f"mask_tokens.{mask_index % NUM_TOKENS}"].reshape(1, 1, P).expand(len(ctx), tgt_idx.shape[1], P)
    x = torch.cat([x, queries], 1)
    masks = torch.cat([ctx_idx, tgt_idx], 1)
    order = torch.argsort(masks, dim=1)
    masks = torch.gather(masks, 1, order)
    x = torch.stack([x[i, order[i]] for i in range(len(x))])
    pos = ref_positions(masks, grid[1], grid[2])
    for i in range(P_DEPTH):
        x = ref_block(x, s, f"predictor_blocks.{i}", P_HEADS, pos)
    x = F.layer_norm(x, (P,), s["predictor_norm.weight"], s["predictor_norm.bias"], LAYER_NORM_EPS)
    back = torch.argsort(order, dim=1)
    x = torch.stack([x[i, back[i]] for i in range(len(x))])[:, ctx_idx.shape[1]:]
    return x @ s["predictor_proj.weight"].T + s["predictor_proj.bias"]


# ------------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("vjepa2") / "vitt.pt"
    return path, write_authors_checkpoint(path)


def clips(shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_architecture_is_named_from_the_shapes(checkpoint):
    path, ckpt = checkpoint
    inferred = infer_arch(ckpt, "vit_tiny")
    assert inferred["pos_embed"] == "rope" and inferred["arch"] == "vit_tiny"
    assert inferred["encoder"] == dict(embed_dim=D, depth=DEPTH, num_heads=HEADS, mlp_dim=MLP, patch_size=PATCH,
                                       tubelet_size=TUBELET, in_chans=3)
    assert inferred["predictor"] == dict(embed_dim=P, num_heads=P_HEADS, depth=P_DEPTH, mlp_ratio=4.0,
                                         num_mask_tokens=NUM_TOKENS)
    with pytest.raises(ValueError, match="heads is unknown"):  # width 192 is no V-JEPA 2 size: --arch needed
        load_source(str(path))
    with pytest.raises(ValueError, match=r"blocks.0.mlp.fc1.weight") as err:  # a mismatched arch names the keys
        load_source(str(path), arch="vit_small")
    assert "patch_embed.proj.weight" in str(err.value)
    assert HUB_ARCHS["vjepa2_vit_giant"] == "vit_giant_xformers"


def test_encoder_matches_the_authors_forward_full_and_masked(checkpoint):
    path, ckpt = checkpoint
    src = load_source(str(path), arch="vit_tiny", crop_size=32)
    assert src.kind == "foreign" and src.step == 7 and "RoPE" in src.description
    ref_state = plain(ckpt["target_encoder"])
    x = clips((2, 3, 8, 32, 24))  # 4 x 4 x 3 tokens: a non-square grid, another frame count than the default
    with torch.no_grad():
        full = (src.encoder(x).double() - ref_encoder(ref_state, x)).abs().max().item()
        keep = torch.stack([torch.randperm(48, generator=torch.Generator().manual_seed(i))[:20] for i in range(2)])
        masked = (src.encoder(x, keep).double() - ref_encoder(ref_state, x, keep)).abs().max().item()
        ctx = load_source(str(path), which="context", arch="vit_tiny", crop_size=32)
        context = (ctx.encoder(x).double() - ref_encoder(plain(ckpt["encoder"]), x)).abs().max().item()
    print(f"encoder vs reference: full {full:.2e}, masked {masked:.2e}, context encoder {context:.2e}")
    assert full < 1e-5 and masked < 1e-5 and context < 1e-5


def test_predictor_matches_the_authors_forward(checkpoint):
    from jepa.modalities.video.released import load_checkpoint

    path, ckpt = checkpoint
    cfg = VideoConfig.model_validate({
        "encoder": {"arch": "vit_tiny", "patch_size": PATCH, "pos_embed": "rope"},
        "predictor": {"embed_dim": P, "depth": P_DEPTH, "num_heads": P_HEADS, "num_mask_tokens": NUM_TOKENS},
        "input": {"num_frames": 8, "crop_size": 32}})
    modality = VideoModality(cfg)
    encoder, predictor = modality.build_encoder().eval(), modality.build_predictor().eval()
    load_checkpoint(path, encoder, predictor, which="encoder")
    x = clips((2, 3, 8, 32, 32), seed=1)
    gen = torch.Generator().manual_seed(2)
    ctx_idx = torch.stack([torch.randperm(64, generator=gen)[:24].sort().values for _ in range(2)])
    tgt_idx = torch.stack([torch.randperm(64, generator=gen)[:10] for _ in range(2)])  # any order
    with torch.no_grad():
        ctx = encoder(x, ctx_idx)
        worst = max((predictor(ctx, ctx_idx, tgt_idx, g).double()
                     - ref_predictor(plain(ckpt["predictor"]), ctx, ctx_idx, tgt_idx, cfg.grid, g)).abs().max().item()
                    for g in range(2))
    print(f"predictor vs reference: {worst:.2e}")
    assert worst < 1e-5


def test_official_export_round_trip_is_bitwise(checkpoint, tmp_path):
    path, ckpt = checkpoint
    out = tmp_path / "official.pt"
    invoke("export", str(path), "--format", "official", "--out", str(out), "--arch", "vit_tiny", "--crop-size", "32")
    back = torch.load(out, weights_only=True)
    for part in ("encoder", "predictor", "target_encoder"):
        assert list(back[part]) == list(ckpt[part]), part  # the authors' keys, in their order
        assert all(torch.equal(back[part][k], v) for k, v in ckpt[part].items()), part
    assert {k: back[k] for k in ("epoch", "batch_size", "world_size", "lr")} == \
        {"epoch": 7, "batch_size": 24, "world_size": 128, "lr": 5.25e-4}
    assert len(back["opt"]["param_groups"]) == 4


def test_hf_export_loads_in_transformers_and_matches(checkpoint, tmp_path):
    transformers = pytest.importorskip("transformers")
    path, ckpt = checkpoint
    out = tmp_path / "hf"
    invoke("export", str(path), "--format", "hf", "--out", str(out), "--arch", "vit_tiny", "--crop-size", "32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, info = transformers.VJEPA2Model.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    model = transformers.VJEPA2Model.from_pretrained(out).eval()  # and with no argument at all
    src = load_source(str(path), arch="vit_tiny", crop_size=32)
    x = clips((2, 3, 16, 32, 32), seed=3)
    with torch.no_grad():
        ours = src.encoder(x)
        hf = model(pixel_values_videos=x.transpose(1, 2), skip_predictor=True).last_hidden_state
        vs_ours = (hf - ours).abs().max().item()
        vs_ref = (hf.double() - ref_encoder(plain(ckpt["target_encoder"]), x)).abs().max().item()
    print(f"transformers VJEPA2Model vs ours {vs_ours:.2e}, vs the reference {vs_ref:.2e}")
    assert vs_ours < 1e-5 and vs_ref < 1e-5


def test_eval_through_the_cli(checkpoint, tmp_path):
    from jepa.modalities.video.demo import write_demo_dataset

    path, _ = checkpoint
    data = tmp_path / "clips"
    write_demo_dataset(data, num_train=12, num_val=8, size=32, num_frames=64, show_progress=False)  # 16 x step 4
    train, val = sorted((data / "train").glob("*.tar")), sorted((data / "val").glob("*.tar"))
    output = invoke("eval", str(path), "--train-data", str(train[0]), "--val-data", str(val[0]), "--protocol", "knn",
                    "--arch", "vit_tiny", "--crop-size", "32", "--batch-size", "4", "--json", str(tmp_path / "r.json"))
    assert "knn" in output.lower()


def test_continued_pretraining_from_the_authors_checkpoint(checkpoint, tmp_path):
    from jepa.modalities.video.demo import write_demo_dataset

    path, _ = checkpoint
    data = tmp_path / "clips"  # generated here: a clean clone has no data/ folder
    write_demo_dataset(data, num_train=8, num_val=4, size=32, num_frames=64, show_progress=False)
    raw = yaml.safe_load((ROOT / "recipes" / "video_demo.yaml").read_text())
    raw["modality"]["encoder"] = {"arch": "vit_tiny", "patch_size": PATCH, "tubelet_size": TUBELET,
                                  "pos_embed": "rope", "depth_scaled_init": True}
    raw["modality"]["predictor"] = {"embed_dim": P, "depth": P_DEPTH, "num_heads": P_HEADS,
                                    "num_mask_tokens": NUM_TOKENS, "depth_scaled_init": True}
    raw["data"] |= {"global_batch_size": 4, "num_workers": 0, "shuffle_buffer": 8, "samples_per_epoch": 24,
                    "train_shards": str(data / "train")}
    raw |= {"max_steps": 2, "run_dir": str(tmp_path / "run"), "init_from": {"path": str(path),
                                                                             "parts": ["encoder", "predictor", "target"]}}
    raw["log"] = {"every_steps": 1}
    raw["checkpoint"] = {"every_steps": 1000}
    recipe = tmp_path / "continue.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    invoke("train", str(recipe))
    from jepa.checkpoint import load_model_weights

    weights = load_model_weights(tmp_path / "run")
    assert weights.step == 2 and weights.predictor["mask_tokens"].shape == (NUM_TOKENS, 1, P)


def closed_form_encoder(d: int, depth: int, mlp: int, patch: int, tubelet: int) -> int:
    block = (3 * d * d + 3 * d) + (d * d + d) + 4 * d + (d * mlp + mlp) + (mlp * d + d)
    return (3 * tubelet * patch * patch * d + d) + depth * block + 2 * d  # no position table with RoPE


def closed_form_predictor(d: int, p: int, depth: int, tokens: int) -> int:
    block = (3 * p * p + 3 * p) + (p * p + p) + 4 * p + (p * 4 * p + 4 * p) + (4 * p * p + p)
    return (d * p + p) + tokens * p + depth * block + 2 * p + (p * d + d)


@pytest.mark.parametrize("arch,expected", [("vit_large", 303_885_312), ("vit_huge", 631_648_000),
                                           ("vit_giant_xformers", 1_012_173_952)])
def test_parameter_counts_of_the_vjepa2_sizes(arch, expected):
    """ViT-L/H/g at 64 x 256 with the V-JEPA 2 predictor (384 wide, 12 blocks of 12 heads, 10 mask tokens)."""
    d, depth, heads, mlp = VIT_ARCHS[arch]
    cfg = VideoConfig.model_validate({
        "encoder": {"arch": arch, "pos_embed": "rope", "depth_scaled_init": True},
        "predictor": {"embed_dim": 384, "depth": 12, "num_heads": 12, "num_mask_tokens": 10},
        "input": {"num_frames": 64, "crop_size": 256}})
    with torch.device("meta"):
        enc, pred = VideoModality(cfg).build_encoder(), VideoModality(cfg).build_predictor()
    n_enc = sum(p.numel() for p in enc.parameters())
    n_pred = sum(p.numel() for p in pred.parameters())
    assert n_enc == closed_form_encoder(d, depth, mlp, 16, 2) and len(enc.state_dict()) == 4 + 12 * depth
    assert n_pred == closed_form_predictor(d, 384, 12, 10)
    assert n_enc == expected and enc.blocks[0].attn.num_heads == heads  # the paper's 300M, 600M, 1B
    print(f"{arch}: encoder {n_enc:,}, predictor {n_pred:,}")
    info = invoke("info", str(ROOT / "recipes" / "video_demo.yaml"), "--set", f"modality.encoder.arch={arch}",
                  *[a for kv in ("encoder.pos_embed=rope", "encoder.depth=null", "encoder.patch_size=16",
                                 "predictor.embed_dim=384", "predictor.depth=12", "predictor.num_heads=12",
                                 "predictor.num_mask_tokens=10", "input.crop_size=256", "input.num_frames=16")
                    for a in ("--set", "modality." + kv)])
    assert f" {n_enc:,} " in info and f" {n_pred:,} " in info, info
