"""Plugins discovered from entry-point groups: modalities (``jepa.modalities``) and objectives
(``jepa.objectives``, :mod:`jepa.objectives`).

A package ships a modality (or an objective) by declaring, in its ``pyproject.toml``::

    [project.entry-points."jepa.modalities"]
    audio = "my_package.audio:AudioModality"

Entry points are listed eagerly (cheap) but a plugin's module is imported only when it is
first asked for by name. :func:`get` returns the modality *class*; :func:`bind` instantiates it
with a validated recipe section (``Modality(cfg)``). The built-ins register the same way.

A broken plugin breaks only itself: an entry point whose import raises, that names something other
than a plugin class, whose class carries another name, or a name two packages register, is a
:class:`~jepa.errors.PluginError` (a :class:`~jepa.errors.UserError`: one line naming the package, the entry
point and the fix) when that name is used, and listed by :meth:`PluginGroup.problems`; every other plugin works.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

from jepa.config import ModalityConfig
from jepa.errors import ConfigError, PluginError
from jepa.interfaces import Modality

GROUP = "jepa.modalities"

T = TypeVar("T")


@dataclass(frozen=True)
class PluginInfo:
    name: str
    target: str  # "module:attr"
    package: str  # distribution that provides it


ModalityInfo = PluginInfo


def _package(ep: EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else "?"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
        self._broken: dict[str, str] = {}  # name -> why it cannot be loaded (import failures are not retried)

    def _where(self, name: str, ep: EntryPoint) -> str:
        return f"{self.kind} plugin {name!r} of package {_package(ep)} (entry point {self.group}:{name} = {ep.value})"

    def _scan(self) -> tuple[dict[str, EntryPoint], dict[str, str]]:
        """The group's entry points by name, and the names registered by two different entry points
        (each with its one-line problem)."""
        found: dict[str, EntryPoint] = {}
        twice: dict[str, list[EntryPoint]] = {}
        for ep in entry_points(group=self.group):
            first = found.setdefault(ep.name, ep)
            if first.value != ep.value and all(other.value != ep.value for other in twice.get(ep.name, [])):
                twice.setdefault(ep.name, [first]).append(ep)
        duplicates = {
            name: (f"{self.kind} plugin {name!r} is registered twice in entry-point group {self.group}: "
                   + " and ".join(f"by package {_package(ep)} ({name} = {ep.value})" for ep in eps)
                   + "; uninstall one of the packages (pip uninstall "
                   + " or ".join(dict.fromkeys(_package(ep) for ep in eps)) + ")")
            for name, eps in twice.items()}
        return found, duplicates

    def _entry_points(self) -> dict[str, EntryPoint]:
        return self._scan()[0]

    def register(self, name: str, plugin: type[T]) -> None:
        """Register a plugin class in-process (tests, notebooks). Entry points are the normal way."""
        if not (isinstance(plugin, type) and issubclass(plugin, self.base)):
            raise TypeError(f"register({name!r}, ...) takes a {self.base.__module__}.{self.base.__qualname__} "
                            f"subclass, got {plugin!r}")
        if name in self._extra or name in self._entry_points():
            raise PluginError(f"{self.kind} {name!r} is already registered; pick another name")
        self._extra[name] = plugin

    def unregister(self, name: str) -> None:
        """Remove an in-process registration (tests)."""
        self._extra.pop(name, None)
        self._cache.pop(name, None)
        self._broken.pop(name, None)

    def available(self) -> list[PluginInfo]:
        """Every known plugin, sorted by name (imports nothing; a broken one is listed too, see
        :meth:`problems`)."""
        infos = [PluginInfo(name, ep.value, _package(ep)) for name, ep in self._entry_points().items()]
        infos += [PluginInfo(name, f"{m.__module__}:{m.__qualname__}", "(registered in-process)")
                  for name, m in self._extra.items()]
        return sorted(infos, key=lambda i: i.name)

    def problems(self) -> dict[str, str]:
        """Import every plugin: ``{name: one-line problem}`` of those that cannot be used."""
        found: dict[str, str] = {}
        for info in self.available():
            try:
                self.get(info.name)
            except PluginError as exc:
                found[info.name] = str(exc)
        return found

    def loadable(self) -> list[str]:
        """The names of the plugins that load (every plugin imported), sorted."""
        broken = self.problems()
        return [info.name for info in self.available() if info.name not in broken]

    def get(self, name: str) -> type[T]:
        """The plugin class registered as ``name`` (imported on first use).

        Raises:
            ValueError: no plugin of that name is installed (the message lists the known ones).
            PluginError: the plugin is installed but cannot be used: two packages register the name,
                its module fails to import, or the entry point does not name a subclass of ``base``
                whose ``name`` is ``name``.
        """
        if name in self._cache:
            return self._cache[name]
        if name in self._broken:
            raise PluginError(self._broken[name])
        if name in self._extra:
            obj: object = self._extra[name]
            where = f"{self.kind} plugin {name!r} (registered in-process)"
        else:
            eps, duplicates = self._scan()
            if name in duplicates:
                raise PluginError(duplicates[name])
            if name not in eps:
                known = ", ".join(i.name for i in self.available()) or "none"
                raise ConfigError(f"unknown {self.kind} {name!r}; known {self.kinds}: {known}")
            ep = eps[name]
            where = self._where(name, ep)
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001 - any failure of a plugin's import is that plugin's problem
                module = ep.value.split(":")[0].strip()
                self._broken[name] = (f"{where} cannot be imported ({_one_line(exc)}); fix or reinstall the package, or "
                                      f"uninstall it (`python -c 'import {module}'` shows the traceback)")
                raise PluginError(self._broken[name]) from exc
        base = f"{self.base.__module__}.{self.base.__qualname__}"
        if not (isinstance(obj, type) and issubclass(obj, self.base)):
            what = f"class {obj.__qualname__}" if isinstance(obj, type) else f"a {type(obj).__name__}"
            self._broken[name] = (f"{where} names {what}, which is not a {base} subclass; point the entry point at "
                                  f"the package's {self.kind} class")
            raise PluginError(self._broken[name])
        if getattr(obj, "name", None) != name:
            self._broken[name] = (f"{where} names class {obj.__qualname__}, whose name is {getattr(obj, 'name', None)!r}, "
                                  f"not {name!r}; the entry-point name must equal the class's name: rename one of them")
            raise PluginError(self._broken[name])
        self._cache[name] = obj
        return obj


MODALITIES: PluginGroup[Modality] = PluginGroup(GROUP, Modality, "modality", "modalities")
register, unregister, available, get = MODALITIES.register, MODALITIES.unregister, MODALITIES.available, MODALITIES.get


def bind(cfg: ModalityConfig) -> Modality:
    """The modality named by ``cfg.name``, bound to ``cfg`` (a validated recipe section)."""
    return get(cfg.name)(cfg)
