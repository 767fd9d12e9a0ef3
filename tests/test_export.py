"""`jepa export`: TorchScript that runs without jepa, timm-named safetensors, verification, errors.

Tolerance: exports must reproduce the eager encoder within ``EXPORT_TOLERANCE`` (1e-4, fp32
max abs difference) at the training resolution and a second, non-square multiple of the patch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

import jepa.export as export_mod
import jepa.modalities.image.export_timm as timm_mod
from jepa.cli import app
from jepa.export import EXPORT_FORMAT_VERSION, EXPORT_TOLERANCE, ExportVerificationError, export
from jepa.modalities.image.export_timm import check_resolutions, load_timm_export
from jepa.sources import EXPORT_METADATA_NAME, load_source, quiet_jit_deprecation, read_export_metadata
from tiny_recipes import tiny_image_recipe


TINY = tiny_image_recipe(3, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])


@pytest.fixture(scope="module")
def tiny_recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def tiny_source(tiny_recipe):
    return load_source(f"random:{tiny_recipe}")


def _quiet(_line: str) -> None:
    pass


def _bare_python_run(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``script`` in a Python that can import torch but not jepa.

    ``-I -S``: no user site, no PYTHONPATH, no site-packages ``.pth`` files (the editable
    install of jepa is one); the site-packages folder holding torch is appended by hand.
    """
    site_packages = str(Path(torch.__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    prelude = f"import sys; sys.path.append({site_packages!r})\n"
    return subprocess.run([sys.executable, "-I", "-S", "-c", prelude + textwrap.dedent(script)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_torchscript_round_trip_in_a_python_without_jepa(tiny_source, tmp_path):
    tokens_path, pooled_path = tmp_path / "enc.pt", tmp_path / "enc_pooled.pt"
    result = export(tiny_source, tokens_path, log=_quiet)
    export(tiny_source, pooled_path, pooled=True, log=_quiet)
    assert max(result.max_abs_diff.values()) <= EXPORT_TOLERANCE

    sizes = check_resolutions(32, 8)
    assert sizes[0] == (32, 32) and sizes[1] != sizes[0] and all(h % 8 == 0 and w % 8 == 0 for h, w in sizes)
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(2, 3, h, w, generator=gen) for h, w in sizes]
    torch.save(inputs, tmp_path / "inputs.pt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = _bare_python_run(f"""
        import json, torch
        try:
            import jepa
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit("jepa is importable: the test would prove nothing")
        extra = {{{EXPORT_METADATA_NAME!r}: ""}}
        model = torch.jit.load({str(tokens_path)!r}, _extra_files=extra)
        pooled = torch.jit.load({str(pooled_path)!r})
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad():
            out = {{"tokens": [model(x) for x in inputs], "pooled": [pooled(x) for x in inputs],
                    "layers": [torch.stack(model.forward_layers(x, 2)) for x in inputs]}}
        torch.save(out, {str(tmp_path / "outputs.pt")!r})
        print(extra[{EXPORT_METADATA_NAME!r}].decode())
    """, cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads(proc.stdout)
    got = torch.load(tmp_path / "outputs.pt")

    encoder = tiny_source.encoder
    with torch.no_grad():
        for x, tokens, pooled, layers in zip(inputs, got["tokens"], got["pooled"], got["layers"], strict=True):
            ref = encoder(x)
            n = (x.shape[-2] // 8) * (x.shape[-1] // 8)
            assert tokens.shape == (2, n, 64) and pooled.shape == (2, 64)
            assert (tokens - ref).abs().max().item() <= EXPORT_TOLERANCE
            assert (pooled - ref.mean(dim=1)).abs().max().item() <= EXPORT_TOLERANCE
            assert (layers - torch.stack(encoder.forward_layers(x, 2))).abs().max().item() <= EXPORT_TOLERANCE

    assert meta["format"] == "torchscript" and meta["format_version"] == EXPORT_FORMAT_VERSION
    assert meta["model"] == "ViT-Ti/8 @32" and meta["patch_size"] == 8 and meta["train_resolution"] == 32
    assert meta["mean"] == [0.5, 0.4, 0.3] and meta["std"] == [0.2, 0.25, 0.3]
    assert meta["recipe"]["name"] == "tiny" and meta["recipe"]["modality"]["encoder"]["embed_dim"] == 64
    assert meta["encoder"] == "target" and meta["source_kind"] == "random" and meta["source_step"] is None
    assert meta["pooled"] is False and meta["verification"]["tolerance"] == EXPORT_TOLERANCE


class _Perturbed(nn.Module):
    """A stand-in for a faulty scripting step: outputs off by ``offset``."""

    def __init__(self, inner: nn.Module, offset: float):
        super().__init__()
        self.inner, self.offset = inner, offset

    def forward(self, x):
        return self.inner(x) + self.offset

    def forward_layers(self, x, num_last: int):
        return [h + self.offset for h in self.inner.forward_layers(x, num_last)]


@pytest.mark.parametrize("offset, shown", [(1e-3, r"0\.001"), (float("nan"), "nan")])
def test_export_refuses_to_write_when_the_scripted_model_differs(tiny_source, tmp_path, monkeypatch, offset, shown):
    monkeypatch.setattr(export_mod, "_script", lambda module: _Perturbed(module, offset))
    out = tmp_path / "sub" / "enc.pt"
    with pytest.raises(ExportVerificationError, match=rf"max abs difference {shown} > tolerance 0\.0001.*nothing was written"):
        export(tiny_source, out, log=_quiet)
    assert not out.exists()
    assert not any(out.parent.iterdir()) if out.parent.exists() else True


def test_export_refuses_when_timm_differs(tiny_source, tmp_path, monkeypatch):
    real = timm_mod.build_timm_model

    def skewed(name, kwargs, state):
        return real(name, kwargs, {**state, "norm.bias": state["norm.bias"] + 1e-2})

    monkeypatch.setattr(timm_mod, "build_timm_model", skewed)
    out = tmp_path / "enc.safetensors"
    with pytest.raises(ExportVerificationError, match="timm"):
        export(tiny_source, out, fmt="safetensors-timm", log=_quiet)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_safetensors_timm_export_loads_into_timm_and_matches(tiny_source, tmp_path):
    import timm
    from safetensors import safe_open
    from safetensors.torch import load_file

    out = tmp_path / "enc.safetensors"
    result = export(tiny_source, out, fmt="safetensors-timm", log=_quiet)
    assert max(result.max_abs_diff.values()) <= EXPORT_TOLERANCE
    with safe_open(str(out), framework="pt") as f:
        header = f.metadata()
    kwargs = json.loads(header["timm_kwargs"])
    state = load_file(str(out))
    assert "cls_token" not in state and state["pos_embed"].shape == (1, 16, 64)
    # What a user does, with timm only:
    model = timm.create_model(header["timm_model"], pretrained=False, **kwargs).eval()
    model.load_state_dict(state, strict=True)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = tiny_source.encoder(x)
        tokens = model.forward_features(x)
        pooled = model(x)  # num_classes=0: the head is the identity after average pooling
    assert (tokens - ref).abs().max().item() <= EXPORT_TOLERANCE
    assert (pooled - ref.mean(dim=1)).abs().max().item() <= EXPORT_TOLERANCE
    data_cfg = timm.data.resolve_data_config(model=model)
    assert tuple(data_cfg["mean"]) == (0.5, 0.4, 0.3) and tuple(data_cfg["std"]) == (0.2, 0.25, 0.3)
    assert tuple(data_cfg["input_size"]) == (3, 32, 32)
    meta = json.loads(header["jepa_export"])
    assert meta["format"] == "safetensors-timm" and meta["timm_kwargs"] == kwargs
    rebuilt, meta2 = load_timm_export(out)
    assert meta2["model"] == "ViT-Ti/8 @32"


def _released(tmp_path: Path) -> tuple[Path, nn.Module]:
    """A tiny checkpoint in the authors' layout; returns its path and the target encoder saved in it."""
    from jepa.modalities.image.released import save_released
    from jepa.modalities.image.vit import ViTEncoder, ViTPredictor

    torch.manual_seed(0)
    encoder = ViTEncoder(32, 8, 3, 192, 1, 3, 768)
    target = ViTEncoder(32, 8, 3, 192, 1, 3, 768)  # different init: the export must pick this one
    predictor = ViTPredictor(4, 192, 32, 1, 4)
    path = tmp_path / "released.pth.tar"
    save_released(path, encoder, predictor, target, epoch=7)
    return path, target.eval()


def test_export_from_released_checkpoint(tmp_path):
    path, target = _released(tmp_path)
    src = load_source(str(path))
    assert src.kind == "foreign" and src.step == 7
    out = tmp_path / "released.pt"
    export(src, out, log=_quiet)
    meta = read_export_metadata(out)
    assert meta["train_resolution"] == 32 and meta["source_kind"] == "foreign" and meta["recipe"] is None
    with quiet_jit_deprecation():
        model = torch.jit.load(str(out))
    x = torch.randn(2, 3, 40, 24)
    with torch.no_grad():
        assert (model(x) - target(x)).abs().max().item() <= EXPORT_TOLERANCE

    # --crop-size records another training resolution; same weights, the table of the new grid.
    src48 = load_source(str(path), crop_size=48)
    out48 = tmp_path / "released48.pt"
    export(src48, out48, log=_quiet)
    assert read_export_metadata(out48)["train_resolution"] == 48
    x48 = torch.randn(2, 3, 48, 48)
    with torch.no_grad(), quiet_jit_deprecation():
        assert (torch.jit.load(str(out48))(x48) - target(x48)).abs().max().item() <= EXPORT_TOLERANCE


def test_bad_inputs_give_one_clear_message(tiny_source, tmp_path):
    with pytest.raises(ValueError, match="no such run directory"):
        load_source(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="--format must be one of torchscript, torch-export, timm, hf, official, safetensors-timm"):
        export(tiny_source, tmp_path / "x", fmt="onnx", log=_quiet)
    path, _ = _released(tmp_path)
    with pytest.raises(ValueError, match="not the vit_huge given with --arch"):
        load_source(str(path), arch="vit_huge")
    exported = tmp_path / "e.pt"
    export(tiny_source, exported, log=_quiet)
    with pytest.raises(ValueError, match="a TorchScript file; loading it runs the code stored in it"):
        load_source(str(exported))  # refused before any of its code runs
    with pytest.raises(ValueError, match="already an exported file"):
        export(load_source(str(exported), trust_torchscript=True), tmp_path / "again.pt", log=_quiet)

    runner = CliRunner()
    res = runner.invoke(app, ["export", str(tmp_path / "missing"), "--out", str(tmp_path / "o.pt")])
    assert res.exit_code == 2
    assert "no such run directory" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o.pt").exists()
