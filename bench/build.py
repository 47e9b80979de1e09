"""Building a method's network from parsed specs, with its ``auto`` options resolved for the run's
backbone, input and dataset. Below the suite, tuning and profiling layers, which all build models;
the public ``bench.build_model`` wraps it."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterable, Optional

import torch

from bench.errors import BenchError
from bench.methods.base import BuildContext, MethodNet
from bench.registry import (BACKBONES, METHODS, Auto, Registry, Spec, format_value, parse_spec,
                            split_specs)

SpecLike = str | Spec


def with_options(text: str, options: dict[str, Any]) -> str:
    """Append keyword options to a spec's text: ``("se[r=8]", {"x": 1})`` -> ``se[r=8,x=1]``."""
    if not options:
        return text
    extra = ",".join(f"{k}={format_value(v)}" for k, v in options.items())
    text = text.strip()
    if not text.endswith("]") or "[" not in text:
        return f"{text}[{extra}]"
    head, inner = text[:-1].split("[", 1)
    return f"{head}[{inner.strip() + ',' if inner.strip() else ''}{extra}]"


def as_spec(registry: Registry, value: SpecLike, param: str) -> Spec:
    """``value`` parsed against ``registry`` (a Spec of the right kind passes through)."""
    if isinstance(value, Spec):
        if value.kind != registry.kind:
            raise BenchError(f"{param}: expected a {registry.kind} spec, got a {value.kind} spec",
                             param)
        return value
    try:
        return parse_spec(registry, str(value))
    except BenchError as error:
        raise BenchError(f"{param}: {error}", param) from None


def as_specs(registry: Registry, values: Optional[SpecLike | Iterable[SpecLike]],
             param: str) -> list[Spec]:
    """A list of specs from one text (``"a,b[x=1]"``), Specs, or an iterable of either; None or
    nothing given is an empty list. An empty text (``""``, ``","``) is refused."""
    if values is None:
        return []
    items = [values] if isinstance(values, (str, Spec)) else list(values)
    specs = []
    for item in items:
        texts = [item] if isinstance(item, Spec) else split_specs(str(item))
        if not texts:
            raise BenchError(f"{param}: an empty name; valid: {', '.join(registry.names())}",
                             param)
        specs += [as_spec(registry, t, param) for t in texts]
    if not specs and items:
        raise BenchError(f"{param}: no {registry.kind} named; valid: "
                         f"{', '.join(registry.names())}", param)
    return specs


@functools.lru_cache(maxsize=64)
def _stage_shapes(backbone: Spec, in_channels: int,
                  input_size: Optional[int]) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """(input size, stage widths, stage output sides) of ``backbone``, from a shape-only pass on
    the meta device; without ``input_size`` the backbone's own (``Backbone.input_size``)."""
    with torch.device("meta"):
        net = BACKBONES.get(backbone.name).obj(in_channels=in_channels, **backbone.kwargs).eval()
        size = input_size or net.input_size
        outputs = net(torch.empty(1, in_channels, size, size))
    return size, tuple(net.stage_channels), tuple(int(o.shape[-1]) for o in outputs)


def method_context(backbone: Spec, num_classes: int, in_channels: int = 3,
                   input_size: Optional[int] = None, dataset: Optional[str] = None) -> BuildContext:
    """The context a method's ``auto`` options are resolved in (see ``resolve_method``)."""
    size, channels, sides = _stage_shapes(backbone, in_channels, input_size)
    return BuildContext(backbone, num_classes, in_channels, size, dataset, channels, sides)


def resolve_method(method: Spec, context: BuildContext) -> Spec:
    """``method`` with its ``auto`` options replaced by the values its rules give in ``context``
    (the method's registered ``resolve``); its label (``str``) stays as the user wrote it."""
    if not method.unresolved:
        return method
    resolved = METHODS.get(method.name).resolve(method.kwargs, context)
    left = [k for k, v in resolved.items() if isinstance(v, Auto)]
    if left:
        raise ValueError(f"method {method.name!r}: resolve left {', '.join(left)} as auto")
    return dataclasses.replace(method, options=tuple(sorted(resolved.items())))


def build_from_specs(method: Spec, backbone: Spec, num_classes: int, in_channels: int = 3,
                     input_size: Optional[int] = None, dataset: Optional[str] = None) -> MethodNet:
    """Build ``method`` on ``backbone`` (both parsed specs) for ``num_classes`` classes, its
    ``auto`` options resolved for ``input_size`` and ``dataset`` (see ``build_model``)."""
    if method.unresolved:
        method = resolve_method(method, method_context(backbone, num_classes, in_channels,
                                                       input_size, dataset))
    make_backbone_entry = BACKBONES.get(backbone.name).obj
    backbone_kwargs = backbone.kwargs

    def make_backbone(**hooks: Any):
        return make_backbone_entry(in_channels=in_channels, **backbone_kwargs, **hooks)

    return METHODS.get(method.name).obj(make_backbone, num_classes, **method.kwargs)
