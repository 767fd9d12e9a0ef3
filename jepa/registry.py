"""Plugins discovered from entry-point groups: modalities (``jepa.modalities``) and objectives
(``jepa.objectives``, :mod:`jepa.objectives`).

A package ships a modality (or an objective) by declaring, in its ``pyproject.toml``::

    [project.entry-points."jepa.modalities"]
    audio = "my_package.audio:AudioModality"

Entry points are listed eagerly (cheap) but a plugin's module is imported only when it is
first asked for by name. :func:`get` returns the modality *class*; :func:`bind` instantiates it
with a validated recipe section (``Modality(cfg)``). The built-ins register the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

from jepa.config import ModalityConfig
from jepa.interfaces import Modality

GROUP = "jepa.modalities"

T = TypeVar("T")


@dataclass(frozen=True)
class PluginInfo:
    name: str
    target: str  # "module:attr"
    package: str  # distribution that provides it


ModalityInfo = PluginInfo


class PluginGroup(Generic[T]):
    """The plugins of one entry-point group, each a subclass of ``base`` whose ``name`` is its
    registered name.

    Args:
        group: the entry-point group, e.g. ``"jepa.modalities"``.
        base: the class every plugin subclasses.
        kind, kinds: the plugin's noun in messages, singular and plural.
    """

    def __init__(self, group: str, base: type[T], kind: str, kinds: str):
        self.group, self.base, self.kind, self.kinds = group, base, kind, kinds
        self._extra: dict[str, type[T]] = {}
        self._cache: dict[str, type[T]] = {}

    def _entry_points(self) -> dict[str, EntryPoint]:
        found: dict[str, EntryPoint] = {}
        for ep in entry_points(group=self.group):
            if ep.name in found and found[ep.name].value != ep.value:
                raise RuntimeError(
                    f"{self.kind} {ep.name!r} is registered twice in entry-point group {self.group!r}: "
                    f"{found[ep.name].value} and {ep.value}; uninstall one of the packages")
            found[ep.name] = ep
        return found

    def register(self, name: str, plugin: type[T]) -> None:
        """Register a plugin class in-process (tests, notebooks). Entry points are the normal way."""
        if not (isinstance(plugin, type) and issubclass(plugin, self.base)):
            raise TypeError(f"register({name!r}, ...) takes a {self.base.__module__}.{self.base.__qualname__} "
                            f"subclass, got {plugin!r}")
        if name in self._extra or name in self._entry_points():
            raise ValueError(f"{self.kind} {name!r} is already registered; pick another name")
        self._extra[name] = plugin

    def unregister(self, name: str) -> None:
        """Remove an in-process registration (tests)."""
        self._extra.pop(name, None)
        self._cache.pop(name, None)

    def available(self) -> list[PluginInfo]:
        """Every known plugin, sorted by name (imports nothing)."""
        infos = [PluginInfo(name, ep.value, ep.dist.name if ep.dist is not None else "?")
                 for name, ep in self._entry_points().items()]
        infos += [PluginInfo(name, f"{m.__module__}:{m.__qualname__}", "(registered in-process)")
                  for name, m in self._extra.items()]
        return sorted(infos, key=lambda i: i.name)

    def get(self, name: str) -> type[T]:
        """The plugin class registered as ``name`` (imported on first use).

        Raises:
            ValueError: no plugin of that name is installed (the message lists the known ones).
            TypeError: the entry point does not name a subclass of ``base`` carrying that name.
        """
        if name in self._cache:
            return self._cache[name]
        if name in self._extra:
            obj: object = self._extra[name]
        else:
            eps = self._entry_points()
            if name not in eps:
                known = ", ".join(i.name for i in self.available()) or "none"
                raise ValueError(f"unknown {self.kind} {name!r}; known {self.kinds}: {known}")
            obj = eps[name].load()
        if not (isinstance(obj, type) and issubclass(obj, self.base)):
            raise TypeError(f"{self.kind} {name!r} loaded {obj!r}, which is not a "
                            f"{self.base.__module__}.{self.base.__qualname__} subclass")
        if obj.name != name:  # type: ignore[attr-defined]
            raise TypeError(f"{self.kind} class {obj.__qualname__} is registered as {name!r} but its name is "
                            f"{obj.name!r}")  # type: ignore[attr-defined]
        self._cache[name] = obj
        return obj


MODALITIES: PluginGroup[Modality] = PluginGroup(GROUP, Modality, "modality", "modalities")
register, unregister, available, get = MODALITIES.register, MODALITIES.unregister, MODALITIES.available, MODALITIES.get


def bind(cfg: ModalityConfig) -> Modality:
    """The modality named by ``cfg.name``, bound to ``cfg`` (a validated recipe section)."""
    return get(cfg.name)(cfg)
