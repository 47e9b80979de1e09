"""ABN: the stride-1 attention branch, M at the split resolution, the two-term loss, the maps."""
import pytest
import torch

import bench
from bench.api import build_model
from bench.errors import BenchError
from bench.methods.abn import build, stride_one_copy
from bench.methods.base import Batch
from bench.models.resnet_cifar import WideResNet

K = 10


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def make(spec: str = "abn", backbone: str = "resnet20", seed: int = 0):
    torch.manual_seed(seed)
    return build_model(spec, backbone, K)


def small_wrn(**hooks):
    return WideResNet(10, 2, **hooks)


def test_m_lies_in_unit_interval_at_the_split_resolution_cifar():
    model = make().eval()
    with torch.no_grad():
        features, m = model.attention(model.split_features(torch.randn(2, 3, 32, 32)))
    assert features.shape == (2, K, 16, 16)
    assert m.shape == (2, 1, 16, 16)
    assert m.min() >= 0 and m.max() <= 1


def test_m_is_14x14_for_resnet50_on_224():
    torch.manual_seed(0)
    model = build_model("abn", "resnet50", 1000).eval()
    with torch.no_grad():
        g = model.split_features(torch.randn(1, 3, 224, 224))
        _, m = model.attention(g)
        maps = model.localization_maps(torch.randn(1, 3, 224, 224), torch.tensor([5]))
    assert g.shape == (1, 1024, 14, 14)
    assert m.shape == (1, 1, 14, 14) and m.min() >= 0 and m.max() <= 1
    assert maps.shape == (1, 14, 14)


@pytest.mark.parametrize("backbone", ["resnet20", "resnet20[shortcut=B]", "resnet44-abn",
                                      "resnet18"])
def test_attention_branch_is_a_stride_one_copy_of_the_last_stage(backbone):
    model = make(backbone=backbone)
    last = model.backbone.stages[-1]
    branch = model.attention.stage
    assert branch is not last and params(branch) == params(last)
    convs = [m for m in branch.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.stride == (1, 1) for c in convs)
    assert all(getattr(m, "stride", 1) == 1 for m in branch.modules()
               if not isinstance(m, torch.nn.Conv2d))
    c = model.backbone.out_channels
    g = torch.randn(2, model.backbone.stage_channels[-2], 16, 16)
    assert branch(g).shape == (2, c, 16, 16)
    # Baseline + copied stage + BN(C) + 1x1 C->K + BN(K) + 1x1 K->K + 3x3 K->1 + BN(1).
    extra = params(last) + 2 * c + c * K + 2 * K + K * K + 9 * K + 2
    assert params(model) == params(make("gap-fc", backbone=backbone)) + extra


def test_stride_one_copy_leaves_the_original_alone():
    model = make()
    last = model.backbone.stages[-1]
    copy = stride_one_copy(last)
    assert last[0].conv1.stride == (2, 2) and last[0].downsample.stride == 2
    assert copy[0].conv1.stride == (1, 1) and copy[0].downsample.stride == 1


def test_training_loss_has_both_terms():
    model = make()
    mask = torch.zeros(4, 1, 32, 32)
    mask[..., :16, :16] = 1
    x_a, x_b = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    for batch in (Batch(x_b, torch.tensor([0, 1, 2, 3])),
                  Batch(mask * x_a + (1 - mask) * x_b, torch.tensor([0, 1, 2, 3]),
                        y_a=torch.tensor([4, 5, 6, 7]), lam=0.25, mask=mask, x_a=x_a)):
        out = model.training_loss(batch)
        assert set(out.terms) == {"attention", "perception"}
        assert all(v > 0 for v in out.terms.values())
        torch.testing.assert_close(out.loss.detach(), sum(out.terms.values()))
        torch.testing.assert_close(out.terms["perception"],
                                   batch.classification_loss(out.logits).detach())
        model.zero_grad()
        out.loss.backward()
        assert model.attention.class_conv.weight.grad.abs().sum() > 0
        assert model.attention.stage[0].conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("make_backbone", [None, small_wrn])
def test_perception_branch_is_stage_l_on_one_plus_m_times_g(make_backbone):
    torch.manual_seed(0)
    model = (make() if make_backbone is None else build(make_backbone, K)).eval()
    x = torch.randn(2, 3, 32, 32)
    backbone = model.backbone
    with torch.no_grad():
        # M = 0 exactly: ABN's perception path is then the backbone's own forward (WRN: + BN-ReLU).
        model.attention.map_bn.weight.zero_()
        model.attention.map_bn.bias.fill_(-1e4)
        torch.testing.assert_close(model(x), model.head(backbone(x)[-1]))
        # M = 1 exactly: stage L sees 2 g.
        model.attention.map_bn.bias.fill_(1e4)
        g = model.split_features(x)
        doubled = model.head(backbone.finish(backbone.stages[-1](2 * g)))
        torch.testing.assert_close(model(x), doubled)


def test_localization_maps_have_the_documented_shape_and_kind():
    x = torch.randn(2, 3, 32, 32)
    classes = torch.tensor([1, 8])
    class_model = make().eval()
    m_model = make("abn[map=m]").eval()
    with torch.no_grad():
        features, m = class_model.attention(class_model.split_features(x))
        class_maps = class_model.localization_maps(x, classes)
        m_maps = m_model.localization_maps(x, classes)
        weights = class_model.attention.class_conv.weight[classes, :, 0, 0]  # (B, K)
        expected = torch.einsum("bk,bkhw->bhw", weights, features)
    assert class_maps.shape == m_maps.shape == (2, 16, 16)
    torch.testing.assert_close(class_maps, expected)
    assert m_maps.min() >= 0 and m_maps.max() <= 1
    with pytest.raises(BenchError):
        make("abn[map=cam]")


def test_reference_cost_adds_the_class_conv_the_authors_run_every_time():
    """gmacs_reference (the authors' forward) = deployed GMACs + the K -> K conv at 16x16."""
    rows = bench.profile(["gap-fc", "abn"], backbone="resnet20", input_size=32, num_classes=K,
                         batch_size=2, latency=False)
    gap, abn = rows
    assert "gmacs_reference" not in gap
    assert abn["gmacs_reference"] * 1e9 == pytest.approx(abn["gmacs"] * 1e9 + K * K * 16 * 16)
    model = make().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, attention_logits = model.reference_network()(x)
        torch.testing.assert_close(logits, model(x))
        g = model.split_features(x)
        features, _ = model.attention(g)
        torch.testing.assert_close(attention_logits, model.attention.class_maps(features).mean((2, 3)))
