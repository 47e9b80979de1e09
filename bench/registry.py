"""Everything selectable by name: methods, backbones, datasets, presets and tasks.

Entries register themselves with a decorator (timm-style); a *spec* such as ``se[r=8]`` names an
entry and overrides some of its declared options, like pip extras. An option whose default is
``Auto(...)`` reads ``auto`` until the entry's ``resolve`` function replaces it with a value derived
from the run's input (dataset, input size, backbone), e.g. SSIA's predictor grid.
"""
from __future__ import annotations

import importlib
import math
import pkgutil
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from bench.errors import BenchError


def normalize_name(name: str) -> str:
    """Canonical form of a registered name: lower case, hyphens (``GAP_FC`` -> ``gap-fc``)."""
    return name.strip().lower().replace("_", "-")


@dataclass(frozen=True)
class Auto:
    """An option default that the entry's ``resolve`` derives from the run's input. ``like`` is a
    value of the option's type: what a user writes instead of ``auto`` is parsed as that type."""

    like: Any

    def __str__(self) -> str:
        return "auto"


# resolve(options, context) -> the options with every Auto value replaced (context: what the
# entry's rules may depend on, e.g. bench.methods.base.BuildContext for methods)
Resolver = Callable[[dict[str, Any], Any], dict[str, Any]]


@dataclass(frozen=True)
class Entry:
    """One registered object with its description, declared options (name -> default) and, when
    some default is ``Auto``, the function that resolves those from the run's input."""

    name: str
    obj: Any
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    order: int = 1000  # position in listings (ties keep registration order)
    search: dict[str, Any] = field(default_factory=dict)  # tuning space of a method's options
    resolve: Optional[Resolver] = None


class DuplicateName(ValueError):
    """A name (or alias) registered twice: an entry is never silently replaced."""


class Registry:
    """A name -> Entry table for one kind of thing ("method", "backbone", ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, description: str, aliases: tuple[str, ...] = (),
                 order: int = 1000, search: Optional[dict[str, Any]] = None,
                 resolve: Optional[Resolver] = None, **defaults: Any) -> Callable[[Any], Any]:
        """Decorator registering ``obj`` under ``name``; keyword arguments declare its options;
        ``order`` places it in listings (and in the default suite); ``search`` declares the
        tuning space of its options (bench/search.py); ``resolve`` replaces the ``Auto``
        defaults from the run's input."""
        def wrap(obj: Any) -> Any:
            self.add(name, obj, description, aliases=aliases, order=order, search=search,
                     resolve=resolve, **defaults)
            return obj
        return wrap

    def add(self, name: str, obj: Any, description: str, aliases: tuple[str, ...] = (),
            order: int = 1000, search: Optional[dict[str, Any]] = None,
            resolve: Optional[Resolver] = None, **defaults: Any) -> Entry:
        key = normalize_name(name)
        taken = [n for n in (key, *map(normalize_name, aliases)) if n in self]
        if taken:
            raise DuplicateName(f"{self.kind} {taken[0]!r} is already registered")
        unknown = sorted(set(search or {}) - set(defaults) - RECIPE_SEARCHABLE)
        if unknown:
            raise ValueError(f"{self.kind} {key!r}: search space names {unknown}, which are not "
                             "its options")
        if resolve is None and any(isinstance(v, Auto) for v in defaults.values()):
            raise ValueError(f"{self.kind} {key!r} has auto options but no resolve function")
        entry = Entry(key, obj, description, dict(defaults), tuple(aliases), order,
                      dict(search or {}), resolve)
        self._entries[key] = entry
        self._entries = dict(sorted(self._entries.items(), key=lambda item: item[1].order))
        for alias in aliases:
            self._aliases[normalize_name(alias)] = key
        return entry

    def remove(self, name: str) -> None:
        """Unregister an entry and its aliases (a plugin that failed half-way is rolled back)."""
        key = normalize_name(name)
        self._entries.pop(key, None)
        self._aliases = {a: k for a, k in self._aliases.items() if k != key}

    def get(self, name: str) -> Entry:
        key = normalize_name(name)
        key = self._aliases.get(key, key)
        if key not in self._entries:
            raise BenchError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}")
        return self._entries[key]

    def names(self) -> list[str]:
        return list(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries.values())

    def __contains__(self, name: str) -> bool:
        key = normalize_name(name)
        return self._aliases.get(key, key) in self._entries


# Recipe fields a method's search space may include (e.g. CutMix where the method trains on it).
RECIPE_SEARCHABLE = {"lr", "weight_decay", "cutmix", "momentum", "warmup_epochs",
                     "label_smoothing"}

METHODS = Registry("method")
BACKBONES = Registry("backbone")
DATASETS = Registry("dataset")
PRESETS = Registry("preset")
TASKS = Registry("task")

_SPEC = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*(?:\[(.*)\])?\s*$")


@dataclass(frozen=True)
class Spec:
    """A parsed ``name[key=value,...]``: the entry's canonical name and its full option values."""

    kind: str
    name: str
    options: tuple[tuple[str, Any], ...]
    overrides: tuple[tuple[str, Any], ...]

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)

    @property
    def unresolved(self) -> bool:
        """Whether some option still reads ``auto`` (see ``Auto``)."""
        return any(isinstance(v, Auto) for _, v in self.options)

    def __str__(self) -> str:
        """Canonical text: the name plus only the options that differ from the defaults, sorted."""
        if not self.overrides:
            return self.name
        return f"{self.name}[{','.join(f'{k}={format_value(v)}' for k, v in self.overrides)}]"


def format_value(value: Any) -> str:
    """An option value as a user types it: true/false, lists as a+b+c, None as none."""
    if value is None:
        return "none"
    if isinstance(value, Auto):
        return "auto"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "+".join(format_value(v) for v in value)
    return str(value)


def coerce_option(kind: str, name: str, key: str, text: str, default: Any) -> Any:
    """Convert option text to the type of its default (a BenchError if it does not parse);
    lists are written ``a+b+c``."""
    text = text.strip()
    where = f"option {key}={text!r} of {kind} {name!r}"
    if isinstance(default, Auto):
        if text.lower() == "auto":
            return default
        return coerce_option(kind, name, key, text, default.like)
    if isinstance(default, bool):
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise BenchError(f"{where}: expected true or false")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise BenchError(f"{where}: expected an integer") from None
    if isinstance(default, float):
        try:
            value = float(text)
        except ValueError:
            raise BenchError(f"{where}: expected a number") from None
        if not math.isfinite(value):
            raise BenchError(f"{where}: expected a finite number")
        return value
    if isinstance(default, tuple):
        if text.lower() == "none":  # the empty list, as `bench list` shows an empty default
            return ()
        parts = [p for p in text.split("+") if p.strip()]
        if not parts:
            raise BenchError(f"{where}: expected a list written a+b+c")
        elem = default[0] if default else ""
        return tuple(coerce_option(kind, name, key, p, elem) for p in parts)
    if default is None:
        return None if text.lower() in ("none", "") else text
    return text


def parse_spec(registry: Registry, text: str) -> Spec:
    """Parse ``name[key=value,...]`` against a registry; unknown names and options are BenchErrors."""
    match = _SPEC.match(text)
    if not match:
        raise BenchError(f"malformed {registry.kind} {text!r}: write name or name[key=value,...]")
    entry = registry.get(match.group(1))
    values = dict(entry.defaults)
    overrides: dict[str, Any] = {}
    body = match.group(2)
    seen: set[str] = set()
    if body is not None and body.strip():
        for item in body.split(","):
            if "=" not in item:
                raise BenchError(f"malformed option {item.strip()!r} in {text!r}: write key=value")
            key, raw = item.split("=", 1)
            key = key.strip().replace("-", "_")
            if key in seen:
                raise BenchError(f"option {key!r} given twice in {text!r}: give each option once")
            seen.add(key)
            if key not in entry.defaults:
                valid = ", ".join(entry.defaults) or "none"
                raise BenchError(f"unknown option {key!r} for {registry.kind} {entry.name!r}; "
                                 f"valid: {valid}")
            value = coerce_option(registry.kind, entry.name, key, raw, entry.defaults[key])
            values[key] = value
            if value != entry.defaults[key]:
                overrides[key] = value
    return Spec(registry.kind, entry.name, tuple(sorted(values.items())),
                tuple(sorted(overrides.items())))


def split_specs(text: str) -> list[str]:
    """Split ``a,b[x=1,y=2],c`` on the commas outside brackets."""
    items, depth, current = [], 0, ""
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
    items.append(current)
    return [i.strip() for i in items if i.strip()]


def import_submodules(package: str, path: list[str]) -> None:
    """Import every module of a package (but ``base`` and private ones), so each registers its
    entries."""
    for info in pkgutil.iter_modules(path):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
