"""Plugin loading: importing the modules that register methods, backbones, datasets, presets and
tasks: bench's own, those of installed packages (entry-point groups ``bench.methods``,
``bench.backbones``, ``bench.datasets``, ``bench.tasks``, ``bench.presets``, each naming a module
whose import registers entries), and modules named at run time (``--plugin``, ``BENCH_PLUGINS``,
comma-separated). Kept out of ``bench.registry`` so that the registry imports no other bench
module (every plugin imports the registry; the registry imports none of them).

A plugin may only add names: one that registers a name (or alias) already taken, that fails to
import, or that registers nothing is a ``BenchError`` naming it, and whatever it registered before
failing is removed again. Every entry remembers the plugin that registered it, so listings can
mark it and each run can record the plugins (package and version) it used.
"""
from __future__ import annotations

import functools
import importlib
import os
import sys
import traceback
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Iterable, Optional

from bench.errors import BenchError
from bench.registry import BACKBONES, DATASETS, METHODS, PRESETS, TASKS, DuplicateName, Registry

PLUGINS_ENV = "BENCH_PLUGINS"  # comma-separated modules to import as plugins, in every process
# entry-point group -> the registry its modules must add to
GROUPS: dict[str, Registry] = {"bench.methods": METHODS, "bench.backbones": BACKBONES,
                               "bench.datasets": DATASETS, "bench.tasks": TASKS,
                               "bench.presets": PRESETS}
REGISTRIES = tuple(GROUPS.values())


@dataclass(frozen=True)
class Plugin:
    """A module that registered entries: the installed distribution it belongs to (None for a
    module on the path only) and how it was named (an entry point ``group:name``, or None for a
    module named at run time)."""

    module: str
    distribution: Optional[str] = None
    version: Optional[str] = None
    entry_point: Optional[str] = None

    @property
    def label(self) -> str:
        """``bench-plugin-srm 0.1.0``, or the module's name outside any distribution."""
        if self.distribution is None:
            return f"module {self.module}"
        return f"{self.distribution} {self.version}"

    def record(self) -> dict[str, Optional[str]]:
        """What a run stores about the plugin (beside its torch version and git commit)."""
        return {"module": self.module, "distribution": self.distribution, "version": self.version}


_PLUGINS: dict[str, Plugin] = {}  # module -> the plugin it was loaded as
_ORIGIN: dict[tuple[str, str], Plugin] = {}  # (kind, name) -> the plugin that registered it
_RUNTIME: list[str] = []  # modules named at run time in this process, in order
_ENTRY_POINTS_LOADED = False


def load_all(modules: Iterable[str] = ()) -> None:
    """Import every module that registers entries: bench's own, every installed plugin (entry
    points, read once per process), the modules named in ``BENCH_PLUGINS`` and ``modules``."""
    global _ENTRY_POINTS_LOADED
    import bench.data  # noqa: F401
    import bench.methods  # noqa: F401
    import bench.models  # noqa: F401
    import bench.presets  # noqa: F401
    import bench.tasks  # noqa: F401

    if not _ENTRY_POINTS_LOADED:  # a failure is raised again by the next call
        for group, registry in GROUPS.items():
            for point in sorted(metadata.entry_points(group=group), key=lambda p: p.name):
                _load_entry_point(point, group, registry)
        _ENTRY_POINTS_LOADED = True
    for module in [*env_modules(), *modules]:
        load_module(module)


def env_modules() -> list[str]:
    """The modules ``BENCH_PLUGINS`` names (comma-separated, blanks ignored)."""
    return [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]


def _snapshot() -> dict[str, set[str]]:
    return {r.kind: set(r.names()) for r in REGISTRIES}


def _added(before: dict[str, set[str]]) -> list[tuple[str, str]]:
    return [(r.kind, n) for r in REGISTRIES for n in r.names() if n not in before[r.kind]]


def _rollback(before: dict[str, set[str]]) -> None:
    for kind, name in _added(before):
        next(r for r in REGISTRIES if r.kind == kind).remove(name)
        _ORIGIN.pop((kind, name), None)


def _last_line(error: BaseException) -> str:
    return traceback.format_exception_only(type(error), error)[-1].strip()


def _import(module: str, plugin: Plugin, where: str) -> list[tuple[str, str]]:
    """Import ``module`` as ``plugin``; the entries it registered (those of an already imported
    module: the registered entries defined in it). A BenchError (and no entry left behind) when
    the import fails or registers a taken name."""
    before = _snapshot()
    imported = module in sys.modules
    try:
        importlib.import_module(module)
    except Exception as error:  # anything a third-party module raises on import
        _rollback(before)
        missing = isinstance(error, ModuleNotFoundError) and error.name is not None and (
            module == error.name or module.startswith(error.name + "."))
        if missing:
            raise BenchError(f"{where}: no module named {module!r} (is the package installed, or "
                             "the module on PYTHONPATH?)") from None
        hint = ("; a plugin cannot replace a built-in or already registered entry: rename it"
                if isinstance(error, DuplicateName) else "")
        raise BenchError(f"{where} failed to load: {_last_line(error)}{hint}") from None
    added = _added(before)
    if imported and not added:
        added = [(r.kind, e.name) for r in REGISTRIES for e in r
                 if _defined_in(e.obj) == module or _defined_in(e.obj).startswith(module + ".")]
    for key in added:
        _ORIGIN.setdefault(key, plugin)
    return added


def _load_entry_point(point: metadata.EntryPoint, group: str, registry: Registry) -> None:
    module = point.value.split(":", 1)[0].strip()
    dist = getattr(point, "dist", None)
    name, version = (dist.metadata["Name"], dist.version) if dist is not None else (None, None)
    plugin = Plugin(module, name, version, f"{group}:{point.name}")
    where = f"plugin {plugin.label} (entry point {group}:{point.name} = {point.value})"
    plugin = _PLUGINS.get(module, plugin)  # a module may serve several groups
    _import(module, plugin, where)
    _PLUGINS[module] = plugin
    if not any(kind == registry.kind and p.module == module for (kind, _), p in _ORIGIN.items()):
        raise BenchError(f"{where} registers no {registry.kind}; its module must register at "
                         f"least one with @{registry.kind.upper()}S.register")


def load_module(module: str) -> Plugin:
    """Import a module named at run time (``--plugin``, ``BENCH_PLUGINS``) as a plugin and
    remember it, so worker processes import it too; a BenchError when it cannot be imported or
    registers nothing."""
    if module in _PLUGINS:
        return _PLUGINS[module]
    if not all(part.isidentifier() for part in module.split(".")):
        raise BenchError(f"plugin {module!r} is not a module name (write package.module)")
    plugin = Plugin(module, *distribution_of(module))
    where = f"plugin module {module!r}"
    if not _import(module, plugin, where):
        raise BenchError(f"{where} registers nothing: a plugin registers methods, backbones, "
                         "datasets, tasks or presets when imported (@METHODS.register, ...)")
    _PLUGINS[module] = plugin
    _RUNTIME.append(module)
    return plugin


@functools.lru_cache(maxsize=8)
def _distributions_by_package(path: tuple[str, ...]) -> dict[str, list[str]]:
    """``importlib.metadata.packages_distributions()`` for the import path ``path`` (it reads every
    installed distribution's file list, about a second, so once per path)."""
    return metadata.packages_distributions()


def distribution_of(module: str) -> tuple[Optional[str], Optional[str]]:
    """The installed distribution a module belongs to and its version, or (None, None)."""
    top = module.split(".", 1)[0]
    names = _distributions_by_package(tuple(sys.path)).get(top, [])
    if not names:
        return None, None
    return names[0], metadata.version(names[0])


def _defined_in(obj: Any) -> str:
    """The module an entry's object was defined in (its class's, for an instance)."""
    return str(getattr(obj, "__module__", None) or getattr(type(obj), "__module__", ""))


def origin(kind: str, name: str) -> Optional[Plugin]:
    """The plugin that registered entry ``name`` of ``kind``, or None for bench's own and for
    entries registered outside any plugin."""
    return _ORIGIN.get((kind, name))


def provenance(entries: Iterable[tuple[Registry, str]]) -> list[dict[str, Optional[str]]]:
    """What a run records about the code of its entries beyond bench itself: per module
    (a plugin's, or one that registered entries directly, ``__main__`` included) its distribution
    and version, sorted by module."""
    found: dict[str, Plugin] = {}
    for registry, name in entries:
        entry = registry.get(name)
        plugin = origin(registry.kind, entry.name)
        if plugin is None:
            module = _defined_in(entry.obj)
            if module == "bench" or module.startswith("bench."):
                continue
            plugin = Plugin(module, *distribution_of(module))
        found[plugin.module] = plugin
    return [found[m].record() for m in sorted(found)]


def worker_modules(entries: Iterable[tuple[Registry, str]], remote: bool) -> tuple[str, ...]:
    """The modules a worker process must import to know ``entries``: every module named at run
    time, and the modules outside bench and its installed plugins that defined one of them. An
    entry defined in ``__main__`` is refused when workers cannot import it: a notebook or standard
    input (no file to re-import), or any ``__main__`` on a cluster (``remote``)."""
    modules = list(_RUNTIME)
    for registry, name in entries:
        entry = registry.get(name)
        if origin(registry.kind, entry.name) is not None:
            continue
        module = _defined_in(entry.obj)
        if module == "bench" or module.startswith("bench."):
            continue
        if module in ("__main__", "__mp_main__"):
            main = getattr(sys.modules.get("__main__"), "__file__", None)
            if remote or main is None or not os.path.isfile(main):
                where = "a Ray cluster" if remote else "worker processes"
                raise BenchError(
                    f"{registry.kind} {entry.name!r} is registered in __main__ (a notebook, "
                    f"standard input or the script itself), which {where} cannot import: move "
                    f"it into a module and name it with --plugin MODULE (plugins=[...] in "
                    f"Python, or {PLUGINS_ENV}), or run with jobs=1")
            continue
        if module not in modules:
            modules.append(module)
    return tuple(modules)
