"""CIFAR-style ResNets (He et al. 2016, Sec. 4.2) and Wide-ResNets (Zagoruyko & Komodakis 2016).

ResNet-(6n+2): a 3x3 stem of 16 channels and three stages of n basic blocks (16, 32, 64 channels,
times ``width``). The paper's CIFAR nets use the parameter-free shortcut "A" (subsample and pad
with zeros); ``shortcut="B"`` uses 1x1 projections. ResNet-20 (A) has 0.27M parameters and
ResNet-110 (A) 1.7M, as in the paper's Table 6.
"""
from __future__ import annotations

import torch
from torch import nn

from bench.errors import BenchError
from bench.models.blocks import BasicBlock, PadShortcut, conv3x3
from bench.models.common import AttnFactory, Backbone, init_weights, make_attn
from bench.registry import BACKBONES


class CifarResNet(Backbone):
    """ResNet for 32x32-like inputs: stem conv3x3, stages of ``n`` basic blocks at 16/32/64 x width."""

    def __init__(self, depth: int, in_channels: int = 3, width: int = 1, shortcut: str = "A",
                 block_attn: AttnFactory = None, conv_attn: AttnFactory = None,
                 stage_attn: AttnFactory = None) -> None:
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise BenchError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, 56, 110, ...), got {depth}")
        if shortcut not in ("A", "B"):
            raise BenchError(f"shortcut must be A (zero-pad) or B (1x1 projection), got {shortcut!r}")
        n = (depth - 2) // 6
        widths = [16 * width, 32 * width, 64 * width]
        self.conv1 = conv3x3(in_channels, 16 * width)
        self.bn1 = nn.BatchNorm2d(16 * width)
        self.relu = nn.ReLU(inplace=True)
        cin = 16 * width
        for i, cout in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                down = None
                if stride != 1 or cin != cout:
                    down = (PadShortcut(cin, cout, stride) if shortcut == "A" else
                            nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout)))
                blocks.append(BasicBlock(cin, cout, stride, down, block_attn, conv_attn))
                cin = cout
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
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


def _wrn(depth: int, widen: int):
    def build(in_channels: int = 3, dropout: float = 0.0, **hooks) -> WideResNet:
        return WideResNet(depth, widen, in_channels, dropout, **hooks)
    return build


BACKBONES.add("wrn-40-2", _wrn(40, 2), "Wide-ResNet 40-2 (pre-activation, 2.2M parameters)", dropout=0.0)
BACKBONES.add("wrn-28-10", _wrn(28, 10), "Wide-ResNet 28-10 (pre-activation, 36.5M parameters)",
              dropout=0.0)
