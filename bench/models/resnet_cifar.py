"""CIFAR-style ResNets (He et al. 2016, Sec. 4.2), the ABN authors' CIFAR ResNets, and
Wide-ResNets (Zagoruyko & Komodakis 2016).

ResNet-(6n+2): a 3x3 stem of 16 channels and three stages of n basic blocks (16, 32, 64 channels,
times ``width``). The paper's CIFAR nets use the parameter-free shortcut "A" (subsample and pad
with zeros); ``shortcut="B"`` uses 1x1 projections. ResNet-20 (A) has 0.27M parameters and
ResNet-110 (A) 1.7M, as in the paper's Table 6.

``resnetN-abn``: the CIFAR ResNets of the ABN code (machine-perception-robotics-group/
attention_branch_network, models/cifar/resnet.py, built on bearpaw/pytorch-classification), from
which SAOL's Tables 1-2 take their ResNet-110 baselines. Depth 6n+2 with n blocks per stage for
both block types (``assert (depth - 2) % 6 == 0; n = (depth - 2) // 6``), bottleneck blocks for
depth >= 44 and basic blocks below; planes 16/32/64 (bottleneck outputs 64/128/256); a 1x1
conv + BN projection whenever the stride or the width changes (so also in the first block of
stage 1 with bottlenecks); the stride on the 3x3 conv. Their "ResNet-110" thus has 18 bottlenecks
per stage (164 weighted layers, 1,704,154 parameters with 10 classes). (bearpaw's later revision
takes n = (depth - 2) / 9 for bottlenecks; the ABN code predates it.) ResNet-164 is not
registered: under this rule it would have 27 bottlenecks per stage, not He et al.'s 18.
"""
from __future__ import annotations

import torch
from torch import nn

from bench.errors import BenchError
from bench.models.blocks import BasicBlock, Bottleneck, PadShortcut, conv3x3
from bench.models.common import AttnFactory, Backbone, init_weights, make_attn
from bench.registry import BACKBONES


class CifarResNet(Backbone):
    """ResNet for 32x32-like inputs: stem conv3x3, three stages of ``n`` blocks at 16/32/64 planes
    x width (basic blocks, or bottlenecks whose outputs are 4x their planes)."""

    input_size = 32

    def __init__(self, depth: int, in_channels: int = 3, width: int = 1, shortcut: str = "A",
                 bottleneck: bool = False, block_attn: AttnFactory = None,
                 conv_attn: AttnFactory = None, stage_attn: AttnFactory = None) -> None:
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise BenchError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, 56, 110, ...), got {depth}")
        if width < 1:
            raise BenchError(f"CIFAR ResNet width must be a positive integer (channels 16/32/64 "
                             f"x width), got {width}")
        if shortcut not in ("A", "B"):
            raise BenchError(f"shortcut must be A (zero-pad) or B (1x1 projection), got {shortcut!r}")
        if bottleneck and shortcut != "B":
            raise BenchError("bottleneck CIFAR ResNets take projection shortcuts (shortcut=B)")
        n = (depth - 2) // 6
        block = Bottleneck if bottleneck else BasicBlock
        self.conv1 = conv3x3(in_channels, 16 * width)
        self.bn1 = nn.BatchNorm2d(16 * width)
        self.relu = nn.ReLU(inplace=True)
        cin = 16 * width
        widths = []
        for i, planes in enumerate((16 * width, 32 * width, 64 * width)):
            cout = planes * block.expansion
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                down = None
                if stride != 1 or cin != cout:
                    down = (PadShortcut(cin, cout, stride) if shortcut == "A" else
                            nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout)))
                blocks.append(block(cin, planes, stride, down, block_attn, conv_attn))
                cin = cout
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            widths.append(cout)
        self.stage_names = ["layer1", "layer2", "layer3"]
        self.stage_channels = widths
        self._init_stage_attn(stage_attn)
        init_weights(self)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(self.conv1(x)))


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3 (+attention) + shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float,
                 block_attn: AttnFactory = None, conv_attn: AttnFactory = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=False)
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv3x3(cout, cout)
        self.conv_attn = make_attn(conv_attn, cout)
        # Pre-activation: the residual branch ends with conv2, so attention follows it directly.
        self.attn = make_attn(block_attn, cout)
        self.shortcut = (None if stride == 1 and cin == cout else
                         nn.Conv2d(cin, cout, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.dropout(self.relu(self.bn2(out)))
        out = self.attn(self.conv_attn(self.conv2(out)))
        return out + identity


class WideResNet(Backbone):
    """WRN-d-k: (d-4)/6 pre-activation blocks per stage at 16k/32k/64k channels; BN-ReLU at the end."""

    input_size = 32

    def __init__(self, depth: int, widen: int, in_channels: int = 3, dropout: float = 0.0,
                 block_attn: AttnFactory = None, conv_attn: AttnFactory = None,
                 stage_attn: AttnFactory = None) -> None:
        super().__init__()
        if (depth - 4) % 6 or depth < 10:
            raise BenchError(f"Wide-ResNet depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [16 * widen, 32 * widen, 64 * widen]
        self.conv1 = conv3x3(in_channels, 16)
        cin = 16
        for i, cout in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(WideBlock(cin, cout, stride, dropout, block_attn, conv_attn))
                cin = cout
            setattr(self, f"block{i + 1}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.stage_names = ["block1", "block2", "block3"]
        self.stage_channels = widths
        self._init_stage_attn(stage_attn)
        init_weights(self)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(x))


def _cifar_resnet(depth: int):
    def build(in_channels: int = 3, width: int = 1, shortcut: str = "A", **hooks) -> CifarResNet:
        return CifarResNet(depth, in_channels, width, shortcut, **hooks)
    return build


for _depth in (8, 14, 20, 32, 44, 56, 110):
    BACKBONES.add(f"resnet{_depth}", _cifar_resnet(_depth),
                  f"CIFAR ResNet-{_depth} ({(_depth - 2) // 6} basic blocks per stage, 16/32/64 channels x width)",
                  width=1, shortcut="A")


def _abn_resnet(depth: int):
    def build(in_channels: int = 3, **hooks) -> CifarResNet:
        return CifarResNet(depth, in_channels, shortcut="B", bottleneck=depth >= 44, **hooks)
    return build


for _depth in (20, 32, 44, 56, 110):
    _kind, _outputs = ("bottleneck", "64/128/256") if _depth >= 44 else ("basic", "16/32/64")
    _note = ("; the ABN and SAOL papers' ResNet-110: 164 weighted layers, 1,704,154 parameters "
             "with 10 classes" if _depth == 110 else "")
    BACKBONES.add(f"resnet{_depth}-abn", _abn_resnet(_depth),
                  f"CIFAR ResNet-{_depth} of the ABN code: {(_depth - 2) // 6} {_kind} blocks per "
                  f"stage, outputs {_outputs}, 1x1 projections{_note}")


def _wrn(depth: int, widen: int):
    def build(in_channels: int = 3, dropout: float = 0.0, **hooks) -> WideResNet:
        return WideResNet(depth, widen, in_channels, dropout, **hooks)
    return build


BACKBONES.add("wrn-40-2", _wrn(40, 2), "Wide-ResNet 40-2 (pre-activation, 2.2M parameters)", dropout=0.0)
BACKBONES.add("wrn-28-10", _wrn(28, 10), "Wide-ResNet 28-10 (pre-activation, 36.5M parameters)",
              dropout=0.0)
