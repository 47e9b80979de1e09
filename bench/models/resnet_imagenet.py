"""ImageNet ResNets with torchvision's exact definition (v1.5: stride on the 3x3 conv).

Module names and shapes match ``torchvision.models.resnet*`` (less ``fc``, which is the method's
head), so torchvision checkpoints load into ``backbone`` with ``strict=False`` only missing ``fc``.
ResNet-50 with a 1000-way GAP-FC head has 25,557,032 parameters.
"""
from __future__ import annotations

import torch
from torch import nn

from bench.models.blocks import BasicBlock, Bottleneck
from bench.models.common import AttnFactory, Backbone, init_weights
from bench.registry import BACKBONES


class ImageNetResNet(Backbone):
    """7x7/2 stem, 3x3/2 max-pool, four stages (64, 128, 256, 512 planes x expansion)."""

    input_size = 224

    def __init__(self, block: type, layers: list[int], in_channels: int = 3,
                 zero_init_residual: bool = False, block_attn: AttnFactory = None,
                 conv_attn: AttnFactory = None, stage_attn: AttnFactory = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = 64
        channels = []
        for i, (planes, count) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            cout = planes * block.expansion
            down = None
            if stride != 1 or cin != cout:
                down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                     nn.BatchNorm2d(cout))
            blocks = [block(cin, planes, stride, down, block_attn, conv_attn)]
            blocks += [block(cout, planes, 1, None, block_attn, conv_attn) for _ in range(count - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = cout
            channels.append(cout)
        self.stage_names = ["layer1", "layer2", "layer3", "layer4"]
        self.stage_channels = channels
        self._init_stage_attn(stage_attn)
        init_weights(self, zero_init_residual)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


def _imagenet_resnet(block: type, layers: list[int]):
    def build(in_channels: int = 3, zero_init_residual: bool = False, **hooks) -> ImageNetResNet:
        return ImageNetResNet(block, layers, in_channels, zero_init_residual, **hooks)
    return build


BACKBONES.add("resnet18", _imagenet_resnet(BasicBlock, [2, 2, 2, 2]),
              "ImageNet ResNet-18 (torchvision definition, basic blocks)", zero_init_residual=False)
BACKBONES.add("resnet34", _imagenet_resnet(BasicBlock, [3, 4, 6, 3]),
              "ImageNet ResNet-34 (torchvision definition, basic blocks)", zero_init_residual=False)
BACKBONES.add("resnet50", _imagenet_resnet(Bottleneck, [3, 4, 6, 3]),
              "ImageNet ResNet-50 (torchvision definition, bottleneck v1.5)", zero_init_residual=False)
BACKBONES.add("resnet101", _imagenet_resnet(Bottleneck, [3, 4, 23, 3]),
              "ImageNet ResNet-101 (torchvision definition, bottleneck v1.5)", zero_init_residual=False)
