"""Modality plugins, discovered from the ``jepa.modalities`` entry-point group.

A package ships a modality by declaring, in its ``pyproject.toml``::

    [project.entry-points."jepa.modalities"]
    audio = "my_package.audio:AudioModality"

Entry points are listed eagerly (cheap) but a modality's module is imported only when it is
first asked for by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from jepa.interfaces import Modality

GROUP = "jepa.modalities"


@dataclass(frozen=True)
class ModalityInfo:
    name: str
    target: str  # "module:attr"
    package: str  # distribution that provides it


_extra: dict[str, type[Modality] | Modality] = {}
_cache: dict[str, Modality] = {}


def _entry_points() -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        if ep.name in found and found[ep.name].value != ep.value:
            raise RuntimeError(
                f"modality {ep.name!r} is registered twice in entry-point group {GROUP!r}: "
                f"{found[ep.name].value} and {ep.value}; uninstall one of the packages"
            )
        found[ep.name] = ep
    return found


def register(name: str, modality: type[Modality] | Modality) -> None:
    """Register a modality in-process (tests, notebooks). Entry points are the normal way."""
    if name in _extra or name in _entry_points():
        raise ValueError(f"modality {name!r} is already registered; pick another name")
    _extra[name] = modality


def unregister(name: str) -> None:
    """Remove an in-process registration (tests)."""
    _extra.pop(name, None)
    _cache.pop(name, None)


def available() -> list[ModalityInfo]:
    """Every known modality, sorted by name (imports nothing)."""
    infos = [
        ModalityInfo(name, ep.value, ep.dist.name if ep.dist is not None else "?")
        for name, ep in _entry_points().items()
    ]
    infos += [
        ModalityInfo(name, f"{getattr(m, '__module__', '?')}:{getattr(m, '__qualname__', type(m).__qualname__)}", "(registered in-process)")
        for name, m in _extra.items()
    ]
    return sorted(infos, key=lambda i: i.name)


def get(name: str) -> Modality:
    """The modality registered as ``name`` (loaded on first use)."""
    if name in _cache:
        return _cache[name]
    if name in _extra:
        obj = _extra[name]
    else:
        eps = _entry_points()
        if name not in eps:
            known = ", ".join(i.name for i in available()) or "none"
            raise ValueError(f"unknown modality {name!r}; known modalities: {known}")
        obj = eps[name].load()
    modality = obj() if isinstance(obj, type) else obj
    if not isinstance(modality, Modality):
        raise TypeError(f"modality {name!r} loaded {obj!r}, which is not a jepa.interfaces.Modality")
    _cache[name] = modality
    return modality
