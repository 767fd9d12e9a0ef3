"""The image modality is a plugin like any other: nothing in ``jepa/`` (nor the example plugin in
``examples/``) outside ``jepa/modalities/image`` imports it, names it in a docstring, or loads it
when imported. What several modalities share lives in the core (:mod:`jepa.nn`, :mod:`jepa.vision`)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "jepa.modalities.image"
IMAGE_DIR = ROOT / "jepa" / "modalities" / "image"
SOURCES = sorted(p for top in ("jepa", "examples") for p in (ROOT / top).rglob("*.py")
                 if IMAGE_DIR not in p.parents and ".venv" not in p.parts)


def _module_name(path: Path) -> str:
    """Dotted name of a module under ``jepa/`` (relative imports resolve against it); '' elsewhere."""
    rel = path.relative_to(ROOT)
    if rel.parts[0] != "jepa":
        return ""
    parts = rel.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in ``tree``, at any depth, relative ones resolved."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def _docstrings(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of the module's and every class's and function's docstring."""
    nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                                         ast.AsyncFunctionDef))]
    return [(getattr(n, "lineno", 1), doc) for n in nodes if (doc := ast.get_docstring(n, clean=False))]


def test_sources_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in SOURCES}
    assert "jepa/modalities/video/views.py" in names and "jepa/vision/crops.py" in names
    assert not any(n.startswith("jepa/modalities/image/") for n in names)


def test_no_module_outside_the_image_modality_imports_it():
    offenders = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, name in _imported(tree, _module_name(path), path.name == "__init__.py"):
            if name == IMAGE or name.startswith(IMAGE + "."):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    assert not offenders, "import the shared pieces from jepa.nn / jepa.vision instead:\n" + "\n".join(offenders)


def test_relative_imports_resolve():
    tree = ast.parse("from ..image import config\nfrom . import decode\nfrom .views import x\n")
    assert [n for _, n in _imported(tree, "jepa.modalities.video.views", False)] == [
        "jepa.modalities.image.config", "jepa.modalities.video.decode", "jepa.modalities.video.views.x"]
    assert [n for _, n in _imported(tree, "jepa.modalities.video", True)] == [
        "jepa.modalities.image.config", "jepa.modalities.video.decode", "jepa.modalities.video.views.x"]


def test_no_docstring_outside_the_image_modality_points_into_it():
    offenders = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, doc in _docstrings(tree):
            if IMAGE in doc or "modalities/image" in doc:
                offenders.append(f"{path.relative_to(ROOT)}:{line}")
    assert not offenders, "docstrings that name the image modality (point at the core module):\n" + "\n".join(offenders)


@pytest.mark.parametrize("modules", [
    "jepa.nn.config, jepa.nn.transformer, jepa.nn.flops, jepa.nn.grid_masks",
    "jepa.vision.pixels, jepa.vision.crops, jepa.vision.photometric",
    "jepa.modalities.video, jepa.modalities.video.config, jepa.modalities.video.decode, "
    "jepa.modalities.video.transforms, jepa.modalities.video.views, jepa.modalities.video.vit, "
    "jepa.modalities.video.masks, jepa.modalities.video.flops, jepa.modalities.video.pos_embed, "
    "jepa.modalities.video.baseline, jepa.modalities.video.demo",
])
def test_importing_does_not_load_the_image_modality(modules):
    code = (f"import sys; import {modules}; "
            f"loaded = sorted(m for m in sys.modules if m == {IMAGE!r} or m.startswith({IMAGE + '.'!r})); "
            "assert not loaded, loaded")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
