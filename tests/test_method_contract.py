"""The contract every registered method fulfils (a new method file is checked here without any
test of its own), asserted by the public ``bench.testing.check_method`` that plugins' tests call
too. The example of docs/adding-a-method.md is executed and must fulfil the contract too; and the
check itself fails on methods that break each clause."""
from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import bench
from bench.methods.base import MethodNet, StepOutput
from bench.registry import METHODS
from bench.testing import check_method

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-method.md"


@pytest.mark.parametrize("name", METHODS.names())
def test_registered_method_fulfils_the_contract(name):
    check_method(name)


def test_the_documented_example_is_a_working_method():
    code = re.search(r'```python\n("""SRM.*?)```', DOC.read_text(encoding="utf-8"), re.S).group(1)
    module = types.ModuleType("bench.methods.srm_doc_example")
    try:
        exec(compile(code, str(DOC), "exec"), module.__dict__)
        assert "srm" in METHODS.names()
        check_method("srm", ["resnet8"])
        model = bench.build_model("srm", "resnet8", num_classes=5)
        gates = [m for m in model.modules() if type(m).__name__ == "Srm"]
        assert len(gates) == 3 and all(not g.cfc.weight.any() for g in gates)  # reset_attention
    finally:
        METHODS.remove("srm")


class WrongTerms(MethodNet):
    def training_loss(self, batch):
        out = super().training_loss(batch)
        return StepOutput(out.loss * 2, out.logits, out.terms)  # loss is not the sum of its terms


class ExtraDeployed(MethodNet):
    def deploy(self):
        return nn.Sequential(self, nn.Identity(), nn.Linear(5, 5))  # unshared parameters


class NoMaps(MethodNet):
    def localization_maps(self, x, classes):
        raise NotImplementedError


@pytest.mark.parametrize("net, message", [(WrongTerms, "not the sum of its terms"),
                                          (ExtraDeployed, "does not share"),
                                          (NoMaps, None)])
def test_the_check_fails_a_method_that_breaks_the_contract(net, message):
    METHODS.add("contract-probe", lambda make_backbone, num_classes: net(make_backbone(),
                                                                         num_classes), "probe")
    try:
        if message is None:  # no map is allowed: NotImplementedError
            check_method("contract-probe", ["resnet8"])
        else:
            with pytest.raises(AssertionError, match=message):
                check_method("contract-probe", ["resnet8"])
    finally:
        METHODS.remove("contract-probe")
    assert "contract-probe" not in METHODS and torch.get_num_threads() >= 1
