"""BAM, bottleneck attention module (Park et al., BMVC 2018): one 3-D gate at each stage boundary.

On the output F of every stage but the last (the backbone's ``stage_attn`` hook):
- channel branch: GAP -> FC C -> C/r -> BN1d -> ReLU -> FC C/r -> C (shape B x C x 1 x 1);
- spatial branch: 1x1 conv C -> C/r -> BN -> ReLU, two 3x3 convs C/r -> C/r with dilation d
  (padding d) each -> BN -> ReLU, 1x1 conv C/r -> 1 (shape B x 1 x H x W);
- M = sigmoid(channel + spatial) (broadcast to B x C x H x W), output F * (1 + M).
Head: GAP-FC, map = CAM.

Layer order follows the authors' code (Jongchan/attention-module, MODELS/bam.py): BN after the
hidden FC and after each inner conv, convs and FCs with bias, no BN on either branch's output
(the paper's equations write one BN at each branch output instead); the reference init zeroes
every bias (``reset_attention``), convs get the backbone's Kaiming init, as in the reference.
The branches are combined as the paper says, by a sum (option ``combine=sum``); the authors' code
multiplies them instead (``combine=product``). r = 16, d = 4; the hidden width is max(1, C // r)
as for SE. ResNet-50 (after layer1..3, C = 256, 512, 1024) gains 358,067 parameters.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from bench.errors import BenchError
from bench.methods.base import BackboneFactory, MethodNet
from bench.methods.layers import check_reduction, reduced_width
from bench.registry import METHODS
from bench.search import choice

COMBINE = ("sum", "product")


class BamChannel(nn.Module):
    """GAP -> FC -> BN1d -> ReLU -> FC: one logit per channel, shape (B, C, 1, 1)."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = reduced_width(channels, reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.BatchNorm1d(hidden),
                                 nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x.mean(dim=(2, 3)))[:, :, None, None]


def conv_bn_relu(cin: int, cout: int, kernel_size: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size, padding=dilation * (kernel_size // 2),
                                   dilation=dilation),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class BamSpatial(nn.Sequential):
    """1x1 reduce, two dilated 3x3 convs, 1x1 to one map: one logit per pixel, (B, 1, H, W)."""

    def __init__(self, channels: int, reduction: int, dilation: int) -> None:
        hidden = reduced_width(channels, reduction)
        super().__init__(conv_bn_relu(channels, hidden, 1),
                         conv_bn_relu(hidden, hidden, 3, dilation),
                         conv_bn_relu(hidden, hidden, 3, dilation),
                         nn.Conv2d(hidden, 1, 1))


class Bam(nn.Module):
    """F * (1 + sigmoid(channel logits (+ or *) spatial logits))."""

    def __init__(self, channels: int, reduction: int = 16, dilation: int = 4,
                 combine: str = "sum") -> None:
        super().__init__()
        self.channel = BamChannel(channels, reduction)
        self.spatial = BamSpatial(channels, reduction, dilation)
        self.combine = combine

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The attention map M in (0, 1), shape (B, C, H, W)."""
        c, s = self.channel(x), self.spatial(x)
        return torch.sigmoid(c + s if self.combine == "sum" else c * s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1 + self.gate(x))

    def reset_attention(self) -> None:
        """The reference init sets every bias to 0."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.zeros_(m.bias)

    def extra_repr(self) -> str:
        return f"combine={self.combine}"


@METHODS.register("bam", "bottleneck attention (channel + dilated spatial) at each stage boundary "
                  "(Park et al. 2018); map = CAM", r=16, dilation=4, combine="sum", order=90,
                  search={"r": choice(4, 8, 16, 32), "dilation": choice(1, 2, 4)})
def build(make_backbone: BackboneFactory, num_classes: int, r: int, dilation: int,
          combine: str) -> MethodNet:
    check_reduction("bam", r)
    if dilation < 1:
        raise BenchError(f"method 'bam': option dilation must be >= 1, got {dilation}")
    if combine not in COMBINE:
        raise BenchError(f"method 'bam': option combine must be one of {', '.join(COMBINE)}, "
                         f"got {combine!r}")
    attention = partial(Bam, reduction=r, dilation=dilation, combine=combine)
    return MethodNet(make_backbone(stage_attn=attention), num_classes)
