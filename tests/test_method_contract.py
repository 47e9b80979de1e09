"""The contract every registered method fulfils (a new method file is checked here without any
test of its own): it builds on CIFAR and ImageNet backbones and on the meta device, its training
step gives a finite loss equal to the sum of its terms, its maps are (B, h, w), its deployed
network predicts what the training network predicts and shares its parameters. The example of
docs/adding-a-method.md is executed and must fulfil the contract too."""
from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
import torch

import bench
from bench.methods.base import Batch, MethodNet
from bench.registry import METHODS

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-method.md"


def check_contract(name: str, backbone: str) -> None:
    torch.manual_seed(0)
    model = bench.build_model(name, backbone, num_classes=5, in_channels=3)
    assert isinstance(model, MethodNet)
    size = 32 if backbone.startswith("resnet8") else 64
    x, y = torch.randn(4, 3, size, size), torch.tensor([0, 1, 2, 3])
    model.train()
    out = model.training_loss(Batch(x, y))
    assert out.logits.shape == (4, 5) and torch.isfinite(out.loss)
    assert out.loss.item() == pytest.approx(sum(v.item() for v in out.terms.values()), rel=1e-5)
    smoothed = model.training_loss(Batch(x, y, label_smoothing=0.3))  # reaches the CE terms
    assert not torch.isclose(smoothed.loss.detach(), out.loss.detach(), rtol=1e-4)
    out.loss.backward()
    model.eval()
    deployed = model.deploy().eval()
    own = {id(p) for p in model.parameters()}
    assert all(id(p) in own for p in deployed.parameters())
    with torch.no_grad():
        assert torch.allclose(model(x), deployed(x), atol=1e-5)
    with torch.enable_grad():
        maps = model.localization_maps(x, y)
    assert maps.dim() == 3 and maps.shape[0] == 4 and torch.isfinite(maps).all()
    with torch.device("meta"):
        bench.build_model(name, backbone, num_classes=5)


@pytest.mark.parametrize("backbone", ["resnet8", "resnet18"])
@pytest.mark.parametrize("name", METHODS.names())
def test_registered_method_fulfils_the_contract(name, backbone):
    check_contract(name, backbone)


def test_the_documented_example_is_a_working_method():
    code = re.search(r'```python\n("""SRM.*?)```', DOC.read_text(encoding="utf-8"), re.S).group(1)
    module = types.ModuleType("bench.methods.srm_doc_example")
    try:
        exec(compile(code, str(DOC), "exec"), module.__dict__)
        assert "srm" in METHODS.names()
        check_contract("srm", "resnet8")
        model = bench.build_model("srm", "resnet8", num_classes=5)
        gates = [m for m in model.modules() if type(m).__name__ == "Srm"]
        assert len(gates) == 3 and all(not g.cfc.weight.any() for g in gates)  # reset_attention
    finally:
        METHODS._entries.pop("srm", None)
