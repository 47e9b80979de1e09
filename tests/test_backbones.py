import pytest
import torch
import torchvision

import bench
from bench.errors import BenchError
from bench.models.resnet_cifar import CifarResNet
from bench.registry import BACKBONES


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv(cin, cout, k):
    return cin * cout * k * k


def bn(c):
    return 2 * c


def cifar_resnet_params(depth: int, classes: int, width: int = 1, cin: int = 3) -> int:
    """He et al.'s CIFAR ResNet with the parameter-free option-A shortcut, counted by hand."""
    n = (depth - 2) // 6
    widths = [16 * width, 32 * width, 64 * width]
    total = conv(cin, widths[0], 3) + bn(widths[0])
    c_in = widths[0]
    for c in widths:
        for _ in range(n):
            total += conv(c_in, c, 3) + bn(c) + conv(c, c, 3) + bn(c)
            c_in = c
    return total + widths[-1] * classes + classes


def abn_resnet_params(depth: int, classes: int) -> int:
    """The ABN code's CIFAR ResNet (models/cifar/resnet.py, from bearpaw/pytorch-classification),
    counted by hand: n = (depth - 2) / 6 blocks per stage at planes 16/32/64, bottlenecks (outputs
    4 x planes) from depth 44, a 1x1 conv + BN projection where the stride or the width changes."""
    n = (depth - 2) // 6
    bottleneck = depth >= 44
    total = conv(3, 16, 3) + bn(16)
    c_in = 16
    for i, planes in enumerate((16, 32, 64)):
        c_out = 4 * planes if bottleneck else planes
        for j in range(n):
            if bottleneck:
                total += (conv(c_in, planes, 1) + bn(planes) + conv(planes, planes, 3) + bn(planes)
                          + conv(planes, c_out, 1) + bn(c_out))
            else:
                total += conv(c_in, planes, 3) + bn(planes) + conv(planes, planes, 3) + bn(planes)
            if (i > 0 and j == 0) or c_in != c_out:
                total += conv(c_in, c_out, 1) + bn(c_out)
            c_in = c_out
    return total + c_in * classes + classes


def wrn_params(depth: int, k: int, classes: int) -> int:
    n = (depth - 4) // 6
    widths = [16 * k, 32 * k, 64 * k]
    total = conv(3, 16, 3)
    c_in = 16
    for c in widths:
        for _ in range(n):
            total += bn(c_in) + conv(c_in, c, 3) + bn(c) + conv(c, c, 3)
            if c_in != c:
                total += conv(c_in, c, 1)
            c_in = c
    return total + bn(c_in) + c_in * classes + classes


@pytest.mark.torch_version
def test_resnet50_matches_torchvision_exactly():
    model = bench.build_model("gap-fc", "resnet50", 1000)
    assert n_params(model) == 25_557_032
    reference = torchvision.models.resnet50()
    ours = {k: v.shape for k, v in model.backbone.state_dict().items()}
    theirs = {k: v.shape for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert ours == theirs


@pytest.mark.torch_version
def test_resnet18_same_function_as_torchvision():
    torch.manual_seed(0)
    reference = torchvision.models.resnet18().eval()
    model = bench.build_model("gap-fc", "resnet18", 1000).eval()
    state = reference.state_dict()
    model.backbone.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
    model.head.fc.load_state_dict({"weight": state["fc.weight"], "bias": state["fc.bias"]})
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(x), reference(x))


@pytest.mark.parametrize("depth", [20, 32, 56, 110])
def test_cifar_resnet_counts(depth):
    assert n_params(bench.build_model("gap-fc", f"resnet{depth}", 10)) == cifar_resnet_params(depth, 10)


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_abn_cifar_resnet_counts(depth):
    for classes in (10, 100):
        model = bench.build_model("gap-fc", f"resnet{depth}-abn", classes)
        assert n_params(model) == abn_resnet_params(depth, classes)


@pytest.mark.parametrize("depth", [44, 56, 110])
def test_abn_bottleneck_resnet_closed_form(depth):
    """Per stage of n bottlenecks at planes p from c_in channels: n (17 p^2 + 12 p) weights and BN
    parameters, the first block's 1x1 from c_in instead of 4p (+ c_in p - 4 p^2) and its
    projection (4 c_in p + 8 p); stem 3*16*9 + 32; FC 256 K + K."""
    n, classes = (depth - 2) // 6, 10
    stages = sum(n * (17 * p * p + 12 * p) - 4 * p * p + 5 * c_in * p + 8 * p
                 for p, c_in in ((16, 16), (32, 64), (64, 128)))
    expected = 432 + 32 + stages + 256 * classes + classes
    assert expected == abn_resnet_params(depth, classes)
    assert n_params(bench.build_model("gap-fc", f"resnet{depth}-abn", classes)) == expected


def test_abn_resnet110_is_the_authors_bottleneck_network():
    """18 bottlenecks per stage (164 weighted layers: stem, 3 x 18 x 3 convs, FC), outputs
    64/128/256, a projection in the first block of every stage (stage 1's widens 16 -> 64)."""
    model = bench.build_model("gap-fc", "resnet110-abn", 10)
    backbone = model.backbone
    assert [len(s) for s in backbone.stages] == [18, 18, 18]
    assert backbone.stage_channels == [64, 128, 256]
    convs = [m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    projections = [s[0].downsample[0] for s in backbone.stages]
    assert len(convs) - len(projections) + 1 == 164
    assert [(p.in_channels, p.out_channels, p.stride) for p in projections] == [
        (16, 64, (1, 1)), (64, 128, (2, 2)), (128, 256, (2, 2))]
    assert all(s[0].conv2.stride == (2 if i else 1,) * 2 for i, s in enumerate(backbone.stages))
    assert n_params(model) == 1_704_154  # 1.7M, as ABN's and SAOL's ResNet-110 rows


def test_cifar_resnet_published_sizes():
    # He et al. 2016, Table 6: ResNet-20 0.27M, ResNet-110 1.7M parameters.
    assert round(cifar_resnet_params(20, 10) / 1e6, 2) == 0.27
    assert round(cifar_resnet_params(110, 10) / 1e6, 1) == 1.7


def test_width_and_input_channels():
    model = bench.build_model("gap-fc", "resnet20[width=2]", 10, in_channels=1)
    assert n_params(model) == cifar_resnet_params(20, 10, width=2, cin=1)


@pytest.mark.parametrize("depth, k, millions", [(40, 2, 2.2), (28, 10, 36.5)])
def test_wide_resnet_counts(depth, k, millions):
    model = bench.build_model("gap-fc", f"wrn-{depth}-{k}", 10)
    assert n_params(model) == wrn_params(depth, k, 10)
    assert round(n_params(model) / 1e6, 1) == millions  # Zagoruyko & Komodakis 2016, Table 1


@pytest.mark.parametrize("name, shapes", [
    ("resnet20", [(16, 32), (32, 16), (64, 8)]),
    ("wrn-40-2", [(32, 32), (64, 16), (128, 8)]),
    ("resnet44-abn", [(64, 32), (128, 16), (256, 8)]),
    ("resnet18", [(64, 8), (128, 4), (256, 2), (512, 1)]),
])
def test_stage_outputs(name, shapes):
    backbone = BACKBONES.get(name).obj(in_channels=3)
    outs = backbone(torch.randn(2, 3, 32, 32))
    assert [(o.shape[1], o.shape[2]) for o in outs] == shapes
    assert backbone.stage_channels == [c for c, _ in shapes]


def test_bad_depth():
    with pytest.raises(BenchError, match="6n\\+2"):
        CifarResNet(21)
    with pytest.raises(BenchError, match="shortcut=B"):
        CifarResNet(44, bottleneck=True)
