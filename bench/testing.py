"""The method contract as a public check, for bench's own tests and a plugin's: ``check_method``
builds a registered method and asserts what every method must provide (bench/methods/base.py):

- the network it builds: a ``MethodNet``, on a CIFAR and an ImageNet backbone and on the meta
  device;
- its loss terms: a finite training loss equal to the sum of its named terms, that backpropagates,
  and that the recipe's label smoothing (``Batch.label_smoothing``) reaches;
- its localization map: ``(B, h, w)`` and finite, or ``NotImplementedError`` (no map);
- its deployed network: predicts what the training network predicts and shares its parameters;
- the cost bench reports for it (``bench.profile``: parameters and fvcore MACs of the deployed
  network, parameters of the training network, parameters added to the baseline) equals the
  cost counted independently on its ``deploy()`` and training networks.

Each failure is an ``AssertionError`` naming the method, the backbone and what failed.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from bench.build import build_from_specs
from bench.methods.base import Batch, MethodNet
from bench.plugins import load_all
from bench.profiling.profile import min_input_size, profile_methods
from bench.registry import BACKBONES, METHODS, parse_spec

CLASSES = 5
BATCH = 4


def _require(condition: Any, message: str) -> None:
    """An AssertionError with ``message`` unless ``condition`` holds (also under ``python -O``)."""
    if not condition:
        raise AssertionError(message)


def _params(module: nn.Module) -> int:
    """Distinct parameters' elements (a shared tensor counted once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def _input_size(backbone: str) -> int:
    """32 for a CIFAR backbone, 64 for an ImageNet one (a final map of at least 2x2)."""
    return max(32, 2 * min_input_size(parse_spec(BACKBONES, backbone), 3))


def _build(name: str, backbone: str, size: int) -> MethodNet:
    """The training network of ``name`` on ``backbone`` for ``size`` x ``size`` RGB images."""
    load_all()
    return build_from_specs(parse_spec(METHODS, name), parse_spec(BACKBONES, backbone), CLASSES,
                            3, size)


def check_network(name: str, backbone: str) -> None:
    """The training step, the map and the deployed network of ``name`` on ``backbone``."""
    where = f"method {name!r} on {backbone}"
    size = _input_size(backbone)
    torch.manual_seed(0)
    model = _build(name, backbone, size)
    _require(isinstance(model, MethodNet),
             f"{where}: the builder returned {type(model).__name__}, not a MethodNet")
    x, y = torch.randn(BATCH, 3, size, size), torch.arange(BATCH) % CLASSES
    model.train()
    out = model.training_loss(Batch(x, y))
    _require(out.logits.shape == (BATCH, CLASSES),
             f"{where}: logits of shape {tuple(out.logits.shape)}")
    _require(torch.isfinite(out.loss), f"{where}: training loss {out.loss.item()}")
    _require(out.terms, f"{where}: training_loss names no loss term")
    total = sum(float(v) for v in out.terms.values())
    _require(abs(out.loss.item() - total) <= 1e-5 * max(1.0, abs(total)),
             f"{where}: loss {out.loss.item()} is not the sum of its terms {dict(out.terms)}")
    smoothed = model.training_loss(Batch(x, y, label_smoothing=0.3))
    _require(not torch.isclose(smoothed.loss.detach(), out.loss.detach(), rtol=1e-4),
             f"{where}: the recipe's label smoothing does not reach the classification loss")
    out.loss.backward()
    _require(any(p.grad is not None for p in model.parameters()), f"{where}: no gradient")
    model.eval()
    deployed = model.deploy().eval()
    own = {id(p) for p in model.parameters()}
    _require(all(id(p) in own for p in deployed.parameters()),
             f"{where}: the deployed network has parameters the training network does not share")
    with torch.no_grad():
        _require(torch.allclose(model(x), deployed(x), atol=1e-5),
                 f"{where}: the deployed network predicts differently from the training network")
    try:
        with torch.enable_grad():
            maps = model.localization_maps(x, y)
    except NotImplementedError:
        pass
    else:
        _require(maps.dim() == 3 and maps.shape[0] == BATCH,
                 f"{where}: localization maps of shape {tuple(maps.shape)}, not (B, h, w)")
        _require(torch.isfinite(maps).all(), f"{where}: localization maps are not finite")
    with torch.device("meta"):
        _build(name, backbone, size)


def check_cost(name: str, backbone: str) -> None:
    """The cost bench reports for ``name`` on ``backbone`` against independent counts."""
    from bench.profiling.flops import import_fvcore

    where = f"method {name!r} on {backbone}"
    size = _input_size(backbone)
    row = profile_methods([parse_spec(METHODS, name)], parse_spec(BACKBONES, backbone), size,
                          CLASSES, batch_size=2, latency=False)[0]
    torch.manual_seed(0)
    model = _build(name, backbone, size).eval()
    deployed = model.deploy().eval()
    baseline = _build("gap-fc", backbone, size).deploy()
    counted = {"params": _params(deployed), "params_train": _params(model),
               "params_added": _params(deployed) - _params(baseline)}
    for key, value in counted.items():
        _require(row[key] == value,
                 f"{where}: bench reports {key} = {row[key]}, counted {value}")
    x = torch.randn(1, 3, size, size)
    analysis = import_fvcore()(deployed, x)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    macs = analysis.total() / 1e9
    _require(abs(row["gmacs"] - macs) <= 1e-9 * max(1.0, macs),
             f"{where}: bench reports {row['gmacs']} GMACs for the deployed network, fvcore {macs}")


def check_method(name: str, backbones: Sequence[str] = ("resnet8", "resnet18")) -> None:
    """Assert that the registered method ``name`` fulfils the method contract (module docstring)
    on each of ``backbones`` (default: a CIFAR and an ImageNet ResNet)."""
    for backbone in backbones:
        check_network(name, backbone)
        check_cost(name, backbone)
