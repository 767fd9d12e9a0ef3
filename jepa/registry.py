"""Modality plugins, discovered from the ``jepa.modalities`` entry-point group.

A package ships a modality by declaring, in its ``pyproject.toml``::

    [project.entry-points."jepa.modalities"]
    audio = "my_package.audio:AudioModality"

Entry points are listed eagerly (cheap) but a modality's module is imported only when it is
first asked for by name. :func:`get` returns the modality *class*; :func:`bind` instantiates it
with a validated recipe section (``Modality(cfg)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from jepa.config import ModalityConfig
from jepa.interfaces import Modality

GROUP = "jepa.modalities"


@dataclass(frozen=True)
class ModalityInfo:
    name: str
    target: str  # "module:attr"
    package: str  # distribution that provides it


_extra: dict[str, type[Modality]] = {}
_cache: dict[str, type[Modality]] = {}


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


def register(name: str, modality: type[Modality]) -> None:
    """Register a modality class in-process (tests, notebooks). Entry points are the normal way."""
    if not (isinstance(modality, type) and issubclass(modality, Modality)):
        raise TypeError(f"register({name!r}, ...) takes a jepa.interfaces.Modality subclass, got {modality!r}")
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
        ModalityInfo(name, f"{m.__module__}:{m.__qualname__}", "(registered in-process)")
        for name, m in _extra.items()
    ]
    return sorted(infos, key=lambda i: i.name)


def get(name: str) -> type[Modality]:
    """The modality class registered as ``name`` (imported on first use).

    Raises:
        ValueError: no modality of that name is installed (the message lists the known ones).
        TypeError: the entry point does not name a :class:`Modality` subclass.
    """
    if name in _cache:
        return _cache[name]
    if name in _extra:
        obj: object = _extra[name]
    else:
        eps = _entry_points()
        if name not in eps:
            known = ", ".join(i.name for i in available()) or "none"
            raise ValueError(f"unknown modality {name!r}; known modalities: {known}")
        obj = eps[name].load()
    if not (isinstance(obj, type) and issubclass(obj, Modality)):
        raise TypeError(f"modality {name!r} loaded {obj!r}, which is not a jepa.interfaces.Modality subclass")
    if obj.name != name:
        raise TypeError(f"modality class {obj.__qualname__} is registered as {name!r} but its name is {obj.name!r}")
    _cache[name] = obj
    return obj


def bind(cfg: ModalityConfig) -> Modality:
    """The modality named by ``cfg.name``, bound to ``cfg`` (a validated recipe section)."""
    return get(cfg.name)(cfg)
