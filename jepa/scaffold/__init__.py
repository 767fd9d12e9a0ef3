"""``jepa new-modality NAME DIR``: a complete modality plugin package, written from templates.

The templates (``templates/*.tmpl``, package data of jepa) are :class:`string.Template` texts with
``$name`` (the modality's registered name), ``$package`` (``jepa_NAME``, the import package),
``$dist`` (``jepa-NAME``, the distribution), ``$cls`` (``NAME`` in CamelCase, the class prefix) and
``$title`` (``NAME`` in words). The written plugin models 2-D float grids stored as ``.npy`` files on
the core's building blocks (:mod:`jepa.nn`), generates its own labelled demo set, and passes the
contract suite (:mod:`jepa.testing`) as written.
"""

from __future__ import annotations

import importlib.util
import re
from importlib import resources
from pathlib import Path
from string import Template

from jepa import registry
from jepa.errors import ConfigError

#: Output path (relative to DIR, itself a template) -> template file.
FILES: dict[str, str] = {
    "pyproject.toml": "pyproject.toml.tmpl",
    "README.md": "README.md.tmpl",
    "$package/__init__.py": "init.py.tmpl",
    "$package/config.py": "config.py.tmpl",
    "$package/transformer.py": "transformer.py.tmpl",
    "$package/masks.py": "masks.py.tmpl",
    "$package/transforms.py": "transforms.py.tmpl",
    "$package/demo_data.py": "demo_data.py.tmpl",
    "recipes/${name}_demo.yaml": "recipe.yaml.tmpl",
    "tests/test_${name}_contract.py": "test_contract.py.tmpl",
}
NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
MAX_NAME_LENGTH = 32


def check_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` can name a new modality here.

    It must be lower case letters and digits in words joined by single underscores, start with a
    letter, be at most :data:`MAX_NAME_LENGTH` long, not be a registered modality, and ``jepa_NAME``
    must not be an importable package already.
    """
    if not NAME_PATTERN.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        raise ConfigError(f"modality name {name!r} is not usable: lower-case letters and digits, words joined by single "
                         f"'_', starting with a letter, at most {MAX_NAME_LENGTH} characters (e.g. 'spectrogram')")
    known = [info.name for info in registry.available()]
    if name in known:
        raise ConfigError(f"modality {name!r} is already registered (known: {', '.join(known)}); pick another name")
    if importlib.util.find_spec(f"jepa_{name}") is not None:
        raise ConfigError(f"a package named jepa_{name} is already importable here; pick another modality name")


def template_values(name: str) -> dict[str, str]:
    """The substitutions of the templates for modality ``name``."""
    return {"name": name, "package": f"jepa_{name}", "dist": f"jepa-{name.replace('_', '-')}",
            "cls": "".join(word.capitalize() for word in name.split("_")), "title": name.replace("_", " ")}


def render(name: str) -> dict[str, str]:
    """``{relative path: text}`` of the plugin package for modality ``name`` (nothing written)."""
    values = template_values(name)
    templates = resources.files(__package__) / "templates"
    return {Template(path).substitute(values): Template((templates / source).read_text(encoding="utf-8")).substitute(values)
            for path, source in FILES.items()}


def write_plugin(name: str, out: str | Path) -> list[Path]:
    """Write the plugin package for the new modality ``name`` into the folder ``out``.

    Returns:
        The files written, in :data:`FILES` order.

    Raises:
        ValueError: a name :func:`check_name` refuses, or ``out`` exists and is not an empty folder.
    """
    check_name(name)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists and is not an empty folder; give a new or empty folder")
    files = render(name)
    written = []
    for rel, text in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
