"""The public Python entry points: build a method's network on a backbone by name."""
from __future__ import annotations

from typing import Any

from bench.methods.base import MethodNet
from bench.registry import BACKBONES, METHODS, Spec, format_value, load_all, parse_spec


def _with_options(text: str, options: dict[str, Any]) -> str:
    """Append keyword options to a spec's text: ``("se[r=8]", {"x": 1})`` -> ``se[r=8,x=1]``."""
    if not options:
        return text
    extra = ",".join(f"{k}={format_value(v)}" for k, v in options.items())
    text = text.strip()
    if not text.endswith("]") or "[" not in text:
        return f"{text}[{extra}]"
    head, inner = text[:-1].split("[", 1)
    return f"{head}[{inner.strip() + ',' if inner.strip() else ''}{extra}]"


def build_from_specs(method: Spec, backbone: Spec, num_classes: int, in_channels: int = 3) -> MethodNet:
    """Build ``method`` on ``backbone`` (both parsed specs) for ``num_classes`` classes."""
    make_backbone_entry = BACKBONES.get(backbone.name).obj
    backbone_kwargs = backbone.kwargs

    def make_backbone(**hooks: Any):
        return make_backbone_entry(in_channels=in_channels, **backbone_kwargs, **hooks)

    return METHODS.get(method.name).obj(make_backbone, num_classes, **method.kwargs)


def build_model(method: str, backbone: str, num_classes: int, in_channels: int = 3,
                **options: Any) -> MethodNet:
    """A method's training network, e.g. ``build_model("se", "resnet50", 1000, r=8)``.

    ``method`` and ``backbone`` may carry variant options (``"se[r=8]"``); keyword ``options`` are
    added to the method's. ``.deploy()`` on the result gives the inference network.
    """
    load_all()
    method_spec = parse_spec(METHODS, _with_options(method, options))
    return build_from_specs(method_spec, parse_spec(BACKBONES, backbone), num_classes, in_channels)


def list_methods() -> list[str]:
    """Names of every registered method, in registration order."""
    load_all()
    return METHODS.names()
