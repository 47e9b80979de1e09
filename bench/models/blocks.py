"""Residual blocks shared by the ResNet families: the 3x3 convolution, He et al.'s parameter-free
shortcut "A", the basic block and the bottleneck (torchvision's v1.5: stride on the 3x3 conv).

Every block takes the attention factories of bench.models.common: ``block_attn`` on the residual
branch after its last BN, ``conv_attn`` right after the 3x3 convolution (before its BN).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.models.common import AttnFactory, make_attn


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class PadShortcut(nn.Module):
    """Option A: take every ``stride``-th pixel and zero-pad the new channels (no parameters)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride, self.extra = stride, cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN (+attention) + shortcut, ReLU."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1, downsample: nn.Module | None = None,
                 block_attn: AttnFactory = None, conv_attn: AttnFactory = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(cout, cout)
        self.conv_attn = make_attn(conv_attn, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.attn = make_attn(block_attn, cout)
        self.downsample = downsample

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The residual branch's last BN (zero-initialised with ``zero_init_residual``)."""
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.attn(self.bn2(self.conv_attn(self.conv2(out))))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1-BN-ReLU, 3x3(stride)-BN-ReLU, 1x1(x4)-BN (+attention) + shortcut, ReLU."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 block_attn: AttnFactory = None, conv_attn: AttnFactory = None) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.conv_attn = make_attn(conv_attn, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.attn = make_attn(block_attn, cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The residual branch's last BN (zero-initialised with ``zero_init_residual``)."""
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv_attn(self.conv2(out))))
        out = self.attn(self.bn3(self.conv3(out)))
        return self.relu(out + identity)
