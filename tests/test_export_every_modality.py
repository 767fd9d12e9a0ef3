"""`jepa export --format torch-export` for every modality (the toy, the example time-series plugin, image,
video), the TorchScript deprecation note only where its advice works, one-line errors for encoders
that cannot be scripted or traced, and a full disk reported as one error line.

Tolerance: ``EXPORT_TOLERANCE`` (1e-4, fp32 max abs difference) between the reloaded program and
the eager encoder.
"""

# No ``from __future__ import annotations``: _ValueBranch below is scripted, and TorchScript needs
# real annotations.
import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Optional

import pytest
import torch
from torch import Tensor
from typer.testing import CliRunner

from jepa import registry
from jepa.cli import app
from jepa.cli.errors import message_of
from jepa.export import EXPORT_TOLERANCE, ExportVerificationError, export
from jepa.sources import EXPORT_METADATA_NAME, EncoderSource
from test_export import _bare_python_run
from toy_modality import ToyEncoder

ROOT = Path(__file__).resolve().parents[1]
REGISTERED = [info.name for info in registry.available()]

#: Per modality: (one input shape after the batch at sizes other than the training ones, the program's
#: ``input_shape``). The toy declares nothing, so only its batch varies.
OTHER_SIZES = {
    "toy": (None, ["batch", 4, 32]),
    "timeseries": ((3, 40), ["batch", 3, "length"]),
    "image": ((3, 24, 40), ["batch", 3, "height", "width"]),
    "video": ((3, 6, 24, 40), ["batch", 3, "frames", "height", "width"]),
}


def _quiet(_line: str) -> None:
    pass


def tiny_source(name: str, encoder: torch.nn.Module | None = None) -> EncoderSource:
    """The modality ``name`` at its ``tiny_config``, with a randomly initialised (or the given) encoder."""
    cls = registry.get(name)
    modality = cls(cls.config_model.model_validate({"name": name, **cls.tiny_config()}))
    if encoder is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            encoder = modality.build_encoder()
    encoder.eval().requires_grad_(False)
    return EncoderSource(encoder, modality, "random", modality.describe(), "target", f"tiny {name}")


@pytest.mark.parametrize("name", list(OTHER_SIZES))
def test_torch_export_of_every_modality_reloads_and_matches_eager(name, tmp_path):
    if name not in REGISTERED:
        pytest.skip(f"the {name} modality is not installed (tests/test_example_plugin.py installs the example plugin)")
    source = tiny_source(name)
    out = tmp_path / "encoder.pt2"
    result = export(source, out, fmt="torch-export", log=_quiet)
    assert result.format == "torch-export" and max(result.max_abs_diff.values()) <= EXPORT_TOLERANCE

    extra = {EXPORT_METADATA_NAME: ""}
    program = torch.export.load(str(out), extra_files=extra).module()
    meta = json.loads(extra[EXPORT_METADATA_NAME])
    assert meta["format"] == "torch-export" and meta["modality_name"] == name
    assert meta["verification"]["tolerance"] == EXPORT_TOLERANCE and meta["verification"]["max_abs_diff"]
    assert meta["dynamic"]["batch"] == "any >= 1" and meta["input_shape"] == OTHER_SIZES[name][1]
    for key, value in source.modality.export_metadata(source.encoder).items():
        assert meta[key] == value, key

    gen = torch.Generator().manual_seed(7)
    example = source.modality.example_input(1, gen)
    inputs = [example, torch.randn(5, *example.shape[1:], generator=gen)]  # two batch sizes
    other = OTHER_SIZES[name][0]
    if other is not None:  # and another size of every declared dimension
        inputs.append(torch.randn(2, *other, generator=gen))
    with torch.no_grad():
        for x in inputs:
            ref, got = source.encoder(x), program(x)
            assert got.shape == ref.shape and (got - ref).abs().max().item() <= EXPORT_TOLERANCE, tuple(x.shape)
        if other is None:  # an undeclared size is refused, not silently wrong
            with pytest.raises((RuntimeError, AssertionError)):
                program(torch.randn(2, example.shape[1], example.shape[2] // 2))


def test_a_declared_size_the_program_refuses_fails_verification(tmp_path, monkeypatch):
    """torch.export specialises a one-patch side away; declaring it anyway is caught before writing."""
    from jepa.interfaces import DynamicShapes, ExportDim
    from jepa.modalities.image import ImageModality
    from jepa.modalities.image.export_program import any_resolution_tokens

    def one_patch_too(self, encoder):
        p = encoder.patch_size
        return DynamicShapes({2: ExportDim("height", p, 64), 3: ExportDim("width", p, 64)}, any_resolution_tokens)

    monkeypatch.setattr(ImageModality, "export_dynamic_shapes", one_patch_too)
    with pytest.raises(ExportVerificationError, match="fails on an input the encoder accepts.*nothing was written"):
        export(tiny_source("image"), tmp_path / "enc.pt2", fmt="torch-export", log=_quiet)
    assert list(tmp_path.iterdir()) == []


def test_a_plugin_program_loads_without_jepa_or_the_plugin(tmp_path):
    source = tiny_source("toy")
    export(source, tmp_path / "toy.pt2", fmt="torch-export", pooled=True, log=_quiet)
    x = source.modality.example_input(3, torch.Generator().manual_seed(1))
    torch.save(x, tmp_path / "x.pt")
    proc = _bare_python_run(f"""
        import torch
        for module in ("jepa", "toy_modality"):
            try:
                __import__(module)
            except ModuleNotFoundError:
                pass
            else:
                raise SystemExit(module + " is importable: the test would prove nothing")
        program = torch.export.load({str(tmp_path / "toy.pt2")!r}).module()
        torch.save(program(torch.load({str(tmp_path / "x.pt")!r})), {str(tmp_path / "y.pt")!r})
    """, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with torch.no_grad():
        ref = source.encoder(x).mean(dim=1)
    assert (torch.load(tmp_path / "y.pt") - ref).abs().max().item() <= EXPORT_TOLERANCE


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_the_cli_points_from_torchscript_to_torch_export_and_that_works(toy_recipe_file, tmp_path):
    """The issue's steps: the TorchScript note names --format torch-export; following it writes a program."""
    recipe = toy_recipe_file("run")
    runner = CliRunner()
    res = runner.invoke(app, ["export", f"random:{recipe}", "--out", str(tmp_path / "enc.pt")])
    assert res.exit_code == 0, res.output
    assert "--format torch-export writes its successor" in _flat(res.output)
    res = runner.invoke(app, ["export", f"random:{recipe}", "--out", str(tmp_path / "enc.pt2"),
                              "--format", "torch-export"])
    assert res.exit_code == 0, res.output
    assert "torch.export program vs eager" in _flat(res.output) and (tmp_path / "enc.pt2").is_file()


class _ValueBranch(ToyEncoder):
    """The toy encoder with a branch on tensor values: TorchScript compiles it, torch.export cannot trace it."""

    def forward(self, x: Tensor, keep_idx_BK: Optional[Tensor] = None) -> Tensor:
        tokens_BND = self.embed(x.transpose(1, 2)) + self.pos_embed
        if bool(tokens_BND.abs().amax() > 1e6):
            tokens_BND = tokens_BND.clamp(-1e6, 1e6)
        return self.norm(self._run_blocks(tokens_BND))


def test_the_deprecation_note_names_torch_export_only_where_it_works(tmp_path):
    toy = tiny_source("toy")
    lines: list[str] = []
    export(toy, tmp_path / "toy.pt", log=lines.append)
    assert any("--format torch-export writes its successor" in line for line in lines), lines

    untraceable = tiny_source("toy", _ValueBranch(toy.modality.cfg))
    lines.clear()
    export(untraceable, tmp_path / "branch.pt", log=lines.append)  # TorchScript works...
    notes = [line for line in lines if "deprecated" in line]
    assert len(notes) == 1 and "writes its successor" not in notes[0], notes
    assert "--format torch-export, cannot capture this encoder" in notes[0]
    with pytest.raises(ValueError) as info:  # ...and torch-export says why it does not, in one line
        export(untraceable, tmp_path / "branch.pt2", fmt="torch-export", log=_quiet)
    message = str(info.value)
    assert f"cannot export _ValueBranch (module {__name__}, the toy encoder) with torch.export: " in message
    assert "the usual cause: a Python branch on tensor values" in message and "\n" not in message
    assert not (tmp_path / "branch.pt2").exists()


FUTURE_ENCODER = '''
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from jepa.interfaces import Encoder


class FutureEncoder(Encoder):
    """An outside plugin's encoder, written with postponed annotations."""

    embed_dim: int
    depth: int

    def __init__(self, in_chans: int, embed_dim: int):
        super().__init__()
        self.embed_dim, self.depth = embed_dim, 1
        self.embed = nn.Linear(in_chans, embed_dim)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor, keep_idx_BK: Optional[Tensor] = None) -> Tensor:
        return self.norm(self.embed(x.transpose(1, 2)))
'''


def test_a_script_error_names_the_class_the_module_and_the_cause(tmp_path, monkeypatch):
    (tmp_path / "future_plugin_encoder.py").write_text(FUTURE_ENCODER)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("future_plugin_encoder")
    toy = tiny_source("toy")
    source = tiny_source("toy", module.FutureEncoder(toy.modality.cfg.in_chans, 16))
    with pytest.raises(ValueError) as info:
        export(source, tmp_path / "enc.pt", log=_quiet)
    shown = message_of(info.value)  # what `jepa export` prints after "error: "
    assert shown == str(info.value) and "\n" not in shown
    assert ("cannot script FutureEncoder (module future_plugin_encoder, the toy encoder) with torch.jit.script: "
            in shown)
    assert "Unknown type annotation: 'int'" in shown and " at ;" not in shown and not shown.endswith("at ")
    assert ("the cause: `from __future__ import annotations` in future_plugin_encoder, which turns the annotation "
            "`embed_dim` of FutureEncoder into a string") in shown
    assert not (tmp_path / "enc.pt").exists()
    # The format the message points to traces instead of scripting: it works for this encoder.
    result = export(source, tmp_path / "enc.pt2", fmt="torch-export", log=_quiet)
    assert max(result.max_abs_diff.values()) <= EXPORT_TOLERANCE


_FULL_DISK = """
import resource, signal, sys
from jepa.cli import app
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))  # the toy's exports are over 100 kB
sys.argv = ["jepa", *sys.argv[1:]]
app()
"""


@pytest.mark.parametrize("fmt, name", [("torchscript", "enc.pt"), ("torch-export", "enc.pt2")])
def test_a_full_disk_is_one_error_line_not_an_abort(toy_recipe_file, tmp_path, fmt, name):
    recipe = toy_recipe_file("run")
    out = tmp_path / "out" / name
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_FULL_DISK), "export", f"random:{recipe}",
                           "--out", str(out), "--format", fmt],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DS_ACCELERATOR": "cpu", "COLUMNS": "400", "NO_COLOR": "1"})
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "terminate called" not in proc.stderr and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {out}: File too large (writing the export)"], proc.stderr[-3000:]
    assert list(out.parent.iterdir()) == []  # no partial file, no scratch folder
