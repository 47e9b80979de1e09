"""Every method's cost figures on ResNet-50 (224x224, 1000 classes) are the stored ones, whatever
the supported torch version.

``resnet50_costs.json`` holds, per method with its default options, the parameter counts and the
MACs per image behind ``gmacs``, ``gmacs_all`` and ``gmacs_train``. Each MAC count was obtained by a
route other than the one ``counted_figures`` takes for that figure, and stored only where both
routes agree (``PYTHONPATH=. python tests/test_cost_figures.py`` redoes this and rewrites the file).
Only ``gmacs`` and the parameter counts are independent of bench's code; ``gmacs_all`` and
``gmacs_train`` reuse bench's rule table on both routes, so they check how ops reach the table
(trace against dispatcher, and the version), not the table's rules themselves:

- ``gmacs``: fvcore's FlopCountAnalysis with only its own op handles (no bench code), traced;
  ``counted_figures`` filters the default set out of a trace that also applies bench's rule table.
- ``gmacs_all``: the rule table applied at the dispatcher to the deployed network (eval, no_grad);
  ``counted_figures`` applies it to fvcore's jit trace.
- ``gmacs_train``: a jit trace of the training forward (``training_loss(batch).loss``, train mode,
  batch 2, halved) with the rule table, where the two loss ops the trace keeps whole are counted by
  hand as the rule table counts their parts: cross-entropy = log-softmax (5 per logit) + NLL (1 per
  target), KL divergence of log-targets = exp, subtract, multiply, sum (4 per element);
  ``counted_figures`` counts at the dispatcher. ``siou``'s loss takes input gradients, which a
  trace cannot follow: its value is the dispatcher count alone.
- ``params``, ``params_train``: exact parameter counts (gap-fc's is torchvision's ResNet-50).

Generated on torch 2.14.1 and checked identical on torch 2.14.0 (the supported range).
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.api import list_methods
from bench.methods.base import Batch, MethodNet
from bench.profiling.flops import ADDED_RULES, DATA_MOVEMENT, _jit_handle, count_dispatched
from bench.profiling.profile import TRAIN_COUNT_BATCH, Workload, counted_figures
from bench.registry import BACKBONES, METHODS, parse_spec

pytestmark = [pytest.mark.slow, pytest.mark.torch_version]
EXPECTED_PATH = Path(__file__).with_name("resnet50_costs.json")
WORK = Workload(parse_spec(BACKBONES, "resnet50"), 3, 224, 1000)
UNTRACEABLE = ("siou",)  # training_loss takes gradients of its input
MACS = ("gmacs", "gmacs_all", "gmacs_train")


def figures_of(method: str) -> dict[str, float]:
    """The stored figures of ``method`` as ``counted_figures`` gives them (MACs in GMACs)."""
    figures = counted_figures(WORK.build(parse_spec(METHODS, method)), WORK, baseline_params=0)
    return {key: figures[key] for key in ("params", "params_train", *MACS)}


def as_figures(stored: dict[str, float]) -> dict[str, float]:
    """Stored MACs per image in GMACs, computed as ``counted_figures`` does (equal exactly)."""
    return {key: value / 1e9 if key in MACS else value for key, value in stored.items()}


@pytest.mark.parametrize("method", list_methods())
def test_cost_figures_on_resnet50_are_the_stored_ones(method):
    expected = json.loads(EXPECTED_PATH.read_text())
    assert method in expected, f"no stored figures for {method}: run tests/test_cost_figures.py"
    assert figures_of(method) == as_figures(expected[method])


class _TrainingForward(nn.Module):
    """``model.training_loss(batch).loss`` as a function of the images, for a jit trace."""

    def __init__(self, model: MethodNet, batch: Batch) -> None:
        super().__init__()
        self.model, self.batch = model, batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.training_loss(dataclasses.replace(self.batch, x=x)).loss


def _traced_training_macs(model: MethodNet, batch: Batch) -> int:
    """MACs of the training forward by fvcore's trace with the rule table and the loss ops."""
    from fvcore.nn import FlopCountAnalysis
    analysis = FlopCountAnalysis(_TrainingForward(model, batch), batch.x)
    analysis.set_op_handle(**{f"aten::{name}{suffix}": _jit_handle(name, rule)
                              for name, rule in ADDED_RULES.items() for suffix in ("", "_")})
    analysis.set_op_handle(**{f"aten::{name}": None for name in DATA_MOVEMENT})
    analysis.set_op_handle(**{
        "aten::cross_entropy_loss": _jit_handle(
            "cross_entropy", lambda args, out: 5 * math.prod(args[0]) + math.prod(args[1])),
        "aten::kl_div": _jit_handle("kl_div", lambda args, out: 4 * math.prod(args[0]))})
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return analysis.total()


def independent_figures(method: str) -> dict[str, float]:
    """The figures of ``method`` by the routes the module docstring describes."""
    from fvcore.nn import FlopCountAnalysis
    model = WORK.build(parse_spec(METHODS, method))
    deployed, x = model.deploy().eval(), WORK.images(1)
    plain = FlopCountAnalysis(deployed, x)
    plain.unsupported_ops_warnings(False)
    plain.uncalled_modules_warnings(False)
    gmacs = plain.total()  # traced now: the deployed network shares modules with the trained one
    with torch.no_grad():
        gmacs_all = count_dispatched(lambda: deployed(x)).total
    batch = WORK.batch(TRAIN_COUNT_BATCH)
    model.train()
    if method in UNTRACEABLE:
        training = count_dispatched(lambda: model.training_loss(batch)).total
    else:
        training = _traced_training_macs(model, batch)
    # Per image; the loss's scalar arithmetic does not scale with the batch, hence halves.
    per_image = training / TRAIN_COUNT_BATCH
    return {"params": sum(p.numel() for p in deployed.parameters()),
            "params_train": sum(p.numel() for p in model.parameters()),
            "gmacs": gmacs, "gmacs_all": gmacs_all,
            "gmacs_train": int(per_image) if per_image.is_integer() else per_image}


if __name__ == "__main__":
    torch.set_num_threads(2)
    table = {}
    for name in list_methods():
        table[name] = independent_figures(name)
        counted = figures_of(name)
        if counted != as_figures(table[name]):
            sys.exit(f"{name}: the two routes disagree: {table[name]} vs {counted}")
        print(name, table[name], flush=True)
    EXPECTED_PATH.write_text(json.dumps(table, indent=1) + "\n")
