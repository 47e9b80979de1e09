"""Hyper-parameter search spaces: the recipe parameters every method is tuned over, and each
method's own, declared next to the method (``METHODS.register(..., search={...})``).

A space maps a name to a ``Param`` (a float or integer range, linear or log, or a choice). Recipe
parameters are named after ``Recipe`` fields (``lr``, ``weight_decay``, ``cutmix``); a method's
are its option names (``r``, ``lambda``, ...). ``bench tune --space NAME=LOW:HIGH`` narrows or
widens a declared range; the sampled values are turned into a recipe and a method spec by
``apply``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Optional, Sequence

from bench.errors import BenchError


@dataclass(frozen=True)
class Param:
    """One searched parameter: ``kind`` float, int or choice; ``log`` for a log-uniform range."""

    kind: str
    low: Any = None
    high: Any = None
    log: bool = False
    choices: tuple = ()

    def distribution(self) -> Any:
        """The Optuna distribution of this parameter."""
        import optuna

        if self.kind == "float":
            return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)
        if self.kind == "int":
            return optuna.distributions.IntDistribution(self.low, self.high, log=self.log)
        return optuna.distributions.CategoricalDistribution(self.choices)

    def text(self) -> str:
        if self.kind == "choice":
            return "|".join(str(c) for c in self.choices)
        return f"{self.low:g}:{self.high:g}" + (":log" if self.log else "")

    def check(self, name: str, given: str = "") -> None:
        """Refuse an empty choice, a range whose low exceeds its high, a log range from <= 0
        (``given``: the user's text, quoted in the message)."""
        shown = f"space {name}={given or self.text()}"
        if self.kind == "choice":
            if not self.choices:
                raise BenchError(f"{shown}: a choice needs at least one value", "space")
            return
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise BenchError(f"{shown}: bounds must be finite numbers", "space")
        if self.low > self.high:
            raise BenchError(f"{shown}: low must not exceed high", "space")
        if self.log and self.low <= 0:
            raise BenchError(f"{shown}: a log range needs low > 0", "space")


def floats(low: float, high: float, log: bool = False) -> Param:
    return Param("float", float(low), float(high), log)


def ints(low: int, high: int, log: bool = False) -> Param:
    return Param("int", int(low), int(high), log)


def choice(*values: Any) -> Param:
    return Param("choice", choices=tuple(values))


# Recipe parameters tuned for every method; a method that trains on CutMix adds ``cutmix`` to
# its own space (SAOL), with its own options.
RECIPE_SPACE: dict[str, Param] = {
    "lr": floats(0.01, 0.5, log=True),
    "weight_decay": floats(1e-5, 1e-3, log=True),
}
CUTMIX = floats(0.0, 1.0)  # the CutMix probability, for methods that use it


def method_space(entry: Any) -> dict[str, Param]:
    """The full space of a registered method: the recipe's and the method's own (its
    ``search`` declaration)."""
    return {**RECIPE_SPACE, **entry.search}


def parse_override(text: str) -> tuple[str, str]:
    """``NAME=LOW:HIGH`` -> (name, range text); a malformed entry is a BenchError."""
    if "=" not in text:
        raise BenchError(f"space {text!r}: write NAME=LOW:HIGH (or NAME=a|b for a choice)",
                         "space")
    name, value = text.split("=", 1)
    return name.strip().replace("-", "_"), value.strip()


def override(space: dict[str, Param], overrides: Sequence[str], where: str) -> dict[str, Param]:
    """``space`` with ``NAME=LOW:HIGH[:log]`` ranges (or ``NAME=a|b`` choices) replaced;
    an unknown name or a bad range is a BenchError naming the valid ones."""
    space = dict(space)
    for text in overrides:
        name, value = parse_override(text)
        if name not in space:
            raise BenchError(f"space {name!r} is not a searched parameter of {where}; valid: "
                             f"{', '.join(space)}", "space")
        old = space[name]
        if old.kind == "choice":
            space[name] = replace(old, choices=tuple(_typed(v, old.choices[0])
                                                     for v in value.split("|")))
        else:
            parts = value.split(":")
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
                raise BenchError(f"space {name}={value}: write LOW:HIGH or LOW:HIGH:log", "space")
            try:
                low, high = (float(p) if old.kind == "float" else int(p) for p in parts[:2])
            except ValueError:
                raise BenchError(f"space {name}={value}: LOW and HIGH must be "
                                 f"{'numbers' if old.kind == 'float' else 'integers'}",
                                 "space") from None
            space[name] = replace(old, low=low, high=high, log=len(parts) == 3 or old.log)
        space[name].check(name, value)
    return space


def _typed(text: str, like: Any) -> Any:
    if isinstance(like, bool):
        return text.strip().lower() in ("1", "true", "yes", "on")
    return type(like)(text.strip()) if isinstance(like, (int, float)) else text.strip()


def split(params: dict[str, Any], recipe_fields: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sampled values -> (recipe overrides, method options)."""
    recipe = {k: v for k, v in params.items() if k in recipe_fields}
    return recipe, {k: v for k, v in params.items() if k not in recipe_fields}


def describe(space: dict[str, Param]) -> str:
    return ", ".join(f"{name}={param.text()}" for name, param in space.items())


def best(values: Sequence[Optional[float]]) -> list[Optional[float]]:
    """The running best of a sequence of scores (None for failed or pruned trials)."""
    running, out = None, []
    for v in values:
        if v is not None and (running is None or v > running):
            running = v
        out.append(running)
    return out
