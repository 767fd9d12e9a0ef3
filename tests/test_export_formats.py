"""`jepa export --format torch-export | timm | hf | official`: each loads where `import jepa` fails and
reproduces the eager encoder; nothing is written when verification fails; loading TorchScript warns.

Tolerance: ``EXPORT_TOLERANCE`` (1e-4, fp32 max abs difference).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import yaml

import jepa.modalities.image.export_timm as timm_mod
from jepa.checkpoint import FORMAT_VERSION
from jepa.export import EXPORT_TOLERANCE, ExportVerificationError, export
from jepa.recipe import load_recipe
from jepa.sources import load_source
from test_export import _bare_python_run
from tiny_recipes import tiny_image_recipe

TINY = tiny_image_recipe(3, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])
NO_JEPA = """
try:
    import jepa
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("jepa is importable: the test would prove nothing")
"""


def _quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module")
def run_source(tmp_path_factory):
    """A checkpoint in the layout `jepa train` writes, with distinct encoder / predictor / target weights."""
    root = tmp_path_factory.mktemp("run")
    recipe_path = root / "tiny.yaml"
    recipe_path.write_text(yaml.safe_dump(TINY))
    recipe = load_recipe(recipe_path)
    from jepa import registry

    modality = registry.bind(recipe.modality)
    torch.manual_seed(1)
    encoder, predictor, target = modality.build_encoder(), modality.build_predictor(), modality.build_encoder()
    models = root / "ckpt" / "models.pt"
    models.parent.mkdir()
    torch.save({"format_version": FORMAT_VERSION, "encoder": encoder.state_dict(), "predictor": predictor.state_dict(),
                "target_encoder": target.state_dict(), "step": 17, "recipe": recipe.model_dump(mode="json")}, models)
    return load_source(str(models))


def _inputs(tmp_path: Path) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    inputs = [torch.randn(2, 3, 32, 32, generator=gen), torch.randn(1, 3, 48, 24, generator=gen),
              torch.randn(5, 3, 16, 40, generator=gen)]
    torch.save(inputs, tmp_path / "inputs.pt")
    return inputs


def test_torch_export_timm_and_official_load_without_jepa(run_source, tmp_path):
    enc = run_source.encoder
    results = {fmt: export(run_source, tmp_path / name, fmt=fmt, log=_quiet)
               for fmt, name in [("torch-export", "enc.pt2"), ("timm", "timm_dir"), ("official", "run.pth.tar")]}
    pooled = export(run_source, tmp_path / "pooled.pt2", fmt="torch-export", pooled=True, log=_quiet)
    for r in [*results.values(), pooled]:
        assert r.max_abs_diff and max(r.max_abs_diff.values()) <= EXPORT_TOLERANCE, r.max_abs_diff
    assert sorted(p.name for p in (tmp_path / "timm_dir").iterdir()) == ["config.json", "model.safetensors"]
    inputs = _inputs(tmp_path)
    proc = _bare_python_run(NO_JEPA + f"""
import json, math, timm, torch
import torch.nn.functional as F
d = {str(tmp_path)!r}
inputs = torch.load(d + "/inputs.pt")
extra = {{"jepa_export.json": ""}}
program = torch.export.load(d + "/enc.pt2", extra_files=extra).module()
pooled = torch.export.load(d + "/pooled.pt2").module()
model = timm.create_model("local-dir:" + d + "/timm_dir", pretrained=True).eval()  # no other argument

# The authors' layout, read with plain torch and run by a minimal re-implementation of their ViT.
ck = torch.load(d + "/run.pth.tar", weights_only=True)
assert sorted(ck) == sorted(["encoder", "predictor", "target_encoder", "opt", "scaler", "epoch", "loss",
                             "batch_size", "world_size", "lr"]), sorted(ck)
assert all(k.startswith("module.") for s in ("encoder", "predictor", "target_encoder") for k in ck[s])
assert len(ck["opt"]["param_groups"]) == 4
t = {{k[len("module."):]: v for k, v in ck["target_encoder"].items()}}

def authors_vit(x, s, heads):
    x = F.conv2d(x, s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=s["patch_embed.proj.weight"].shape[-1])
    x = x.flatten(2).transpose(1, 2) + s["pos_embed"]
    depth = len({{k.split(".")[1] for k in s if k.startswith("blocks.")}})
    B, N, D = x.shape
    for i in range(depth):
        b = lambda n: s["blocks.%d.%s" % (i, n)]
        h = F.layer_norm(x, (D,), b("norm1.weight"), b("norm1.bias"), 1e-6)
        qkv = F.linear(h, b("attn.qkv.weight"), b("attn.qkv.bias")).reshape(B, N, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
        a = ((qkv[0] @ qkv[1].transpose(-2, -1)) / math.sqrt(D // heads)).softmax(-1) @ qkv[2]
        x = x + F.linear(a.transpose(1, 2).reshape(B, N, D), b("attn.proj.weight"), b("attn.proj.bias"))
        h = F.layer_norm(x, (D,), b("norm2.weight"), b("norm2.bias"), 1e-6)
        x = x + F.linear(F.gelu(F.linear(h, b("mlp.fc1.weight"), b("mlp.fc1.bias"))), b("mlp.fc2.weight"), b("mlp.fc2.bias"))
    return F.layer_norm(x, (D,), s["norm.weight"], s["norm.bias"], 1e-6)

with torch.no_grad():
    out = {{"program": [program(x) for x in inputs], "pooled": [pooled(x) for x in inputs],
            "timm": model.forward_features(inputs[0]), "timm_pooled": model(inputs[0]),
            "authors": authors_vit(inputs[0], t, 4)}}
torch.save(out, d + "/outputs.pt")
print(extra["jepa_export.json"])
""", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads(proc.stdout.strip().splitlines()[-1])
    assert meta["format"] == "torch-export" and meta["verification"]["tolerance"] == EXPORT_TOLERANCE
    got = torch.load(tmp_path / "outputs.pt")
    with torch.no_grad():
        for x, tokens, mean in zip(inputs, got["program"], got["pooled"], strict=True):
            ref = enc(x)  # dynamic batch (1, 2, 5) and resolutions (32x32, 48x24, 16x40)
            assert tokens.shape == ref.shape and (tokens - ref).abs().max().item() <= EXPORT_TOLERANCE
            assert (mean - ref.mean(dim=1)).abs().max().item() <= EXPORT_TOLERANCE
        ref = enc(inputs[0])
        assert (got["timm"] - ref).abs().max().item() <= EXPORT_TOLERANCE
        assert (got["timm_pooled"] - ref.mean(dim=1)).abs().max().item() <= EXPORT_TOLERANCE
        assert (got["authors"] - ref).abs().max().item() <= EXPORT_TOLERANCE

    # `official` also reads back through jepa's released-checkpoint loader, all three models.
    from jepa.modalities.image.released import load_released

    weights = torch.load(Path(run_source.source), weights_only=True)
    modality = run_source.modality
    back_enc, back_pred, back_tgt = modality.build_encoder(), modality.build_predictor(), modality.build_encoder()
    meta = load_released(tmp_path / "run.pth.tar", back_tgt, back_pred)
    load_released(tmp_path / "run.pth.tar", back_enc, which="encoder")
    for module, key in [(back_enc, "encoder"), (back_pred, "predictor"), (back_tgt, "target_encoder")]:
        for k, v in module.state_dict().items():
            assert torch.equal(v, weights[key][k]), (key, k)
    assert meta["epoch"] == 17 // run_source.recipe.steps_per_epoch and meta["batch_size"] == 8


def test_hf_folder_loads_through_transformers_without_jepa(run_source, tmp_path):
    pytest.importorskip("transformers", reason="the hf export needs transformers: pip install -e '.[dev]' installs it")
    result = export(run_source, tmp_path / "hf", fmt="hf", log=_quiet)
    assert max(result.max_abs_diff.values()) <= EXPORT_TOLERANCE
    assert {"config.json", "model.safetensors"} <= {p.name for p in (tmp_path / "hf").iterdir()}
    inputs = _inputs(tmp_path)
    proc = _bare_python_run(NO_JEPA + f"""
import torch
from transformers import IJepaModel
d = {str(tmp_path)!r}
model = IJepaModel.from_pretrained(d + "/hf").eval()
with torch.no_grad():
    torch.save(model(pixel_values=torch.load(d + "/inputs.pt")[0]).last_hidden_state, d + "/hf_out.pt")
""", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with torch.no_grad():
        ref = run_source.encoder(inputs[0])
    assert (torch.load(tmp_path / "hf_out.pt") - ref).abs().max().item() <= EXPORT_TOLERANCE


def test_nothing_is_written_when_a_format_fails_verification(run_source, tmp_path, monkeypatch):
    real = timm_mod.load_timm_folder

    def skewed(path):
        model = real(path)
        with torch.no_grad():
            model.norm.bias += 1e-2
        return model

    monkeypatch.setattr(timm_mod, "load_timm_folder", skewed)
    with pytest.raises(ExportVerificationError, match="timm folder.*nothing was written"):
        export(run_source, tmp_path / "timm_dir", fmt="timm", log=_quiet)
    real_load = torch.export.load
    monkeypatch.setattr(torch.export, "load", lambda path, **kw: _Offset(real_load(path, **kw), 1e-3))
    with pytest.raises(ExportVerificationError, match="torch.export program.*nothing was written"):
        export(run_source, tmp_path / "enc.pt2", fmt="torch-export", log=_quiet)
    assert list(tmp_path.iterdir()) == []


class _Offset:
    """Stands in for a faulty loaded program: its module's outputs are off by ``offset``."""

    def __init__(self, program, offset: float):
        self.program, self.offset = program, offset

    def module(self):
        inner = self.program.module()
        return lambda x: inner(x) + self.offset


def test_official_needs_a_predictor_and_torchscript_loading_warns(run_source, tmp_path):
    random_src = load_source(f"random:{_recipe_file(tmp_path)}")
    with pytest.raises(ValueError, match="needs a run directory or checkpoint"):
        export(random_src, tmp_path / "x.pth.tar", fmt="official", log=_quiet)
    assert not (tmp_path / "x.pth.tar").exists()
    export(run_source, tmp_path / "enc.pt", log=_quiet)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_source(str(tmp_path / "enc.pt"), trust_torchscript=True)
    assert any(issubclass(w.category, FutureWarning) and "torch.jit.load" in str(w.message) for w in caught)


def _recipe_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path
