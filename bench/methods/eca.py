"""ECA, efficient channel attention (Wang et al., CVPR 2020): SE without the bottleneck MLP.

GAP -> 1D convolution across the channel axis (kernel k, padding k // 2, no bias) -> sigmoid ->
scale each channel. Placement as SE (``block_attn``: after the branch's last BN, before the
addition). Head: GAP-FC, map = CAM. Parameters per block: k.

Kernel size (option ``k``): one value for every block (0 = adaptive from the block's width C) or
one per stage, written ``3+5+5+7``. Adaptive is the authors' rule with gamma = 2, b = 1 (options
``gamma``, ``b``): t = int(|(log2(C) + b) / gamma|), k = t if t is odd else t + 1. This is the
paper's "nearest odd number of t" with exact even ties (C = 2048: t = 6) rounded up. It gives
k = 3 for C = 16..64, 5 for C = 128..1024, 7 for C = 2048, so ResNet-50 uses 5, 5, 5, 7 per stage
(+86 parameters, as in SSIA's Table 3). The authors' released ImageNet checkpoints were instead
trained with sizes given by hand per stage (README: ResNet-50 ``--ksize 3557``, ResNet-101 and
-152 ``3357``). ``k=auto`` (default) is resolved when the run is planned: those released sizes
when the dataset is ImageNet and the backbone ResNet-50 (3, 5, 5, 7: +80 parameters) or
ResNet-101 (3, 3, 5, 7), else the adaptive sizes of the backbone's stage widths; the per-stage
sizes are stored with the run. The conv keeps PyTorch's default init (the reference network's
init touches only 2-D convs and BN).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from bench.errors import BenchError
from bench.methods.base import BackboneFactory, BuildContext, MethodNet
from bench.registry import METHODS, Auto
from bench.search import choice

# Per-stage kernel sizes of the authors' released ImageNet checkpoints (README, --ksize).
RELEASED_IMAGENET = {"resnet50": (3, 5, 5, 7), "resnet101": (3, 3, 5, 7)}


def adaptive_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """The ECA authors' kernel size for C channels: int(|(log2 C + b) / gamma|), made odd upwards."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


class Eca(nn.Module):
    """Scale each channel by sigmoid(conv1d over neighbouring channels' GAP)."""

    def __init__(self, channels: int, kernel_size: int = 0, gamma: int = 2, b: int = 1) -> None:
        super().__init__()
        k = kernel_size or adaptive_kernel_size(channels, gamma, b)
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel weights in (0, 1), shape (B, C, 1, 1)."""
        y = self.conv(x.mean(dim=(2, 3)).unsqueeze(1))  # (B, 1, C)
        return torch.sigmoid(y).squeeze(1)[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


def resolve(options: dict[str, Any], ctx: BuildContext) -> dict[str, Any]:
    """``k=auto``: the released per-stage sizes on ImageNet ResNet-50/101, else the adaptive
    size of each stage's width."""
    if isinstance(options["k"], Auto):
        released = RELEASED_IMAGENET.get(ctx.backbone.name) if ctx.imagenet else None
        sizes = released or tuple(adaptive_kernel_size(c, options["gamma"], options["b"])
                                  for c in ctx.stage_channels)
        options = dict(options, k=sizes)
    return options


@METHODS.register("eca", "efficient channel attention (1D conv across channels) in every residual "
                  "block (Wang et al. 2020); map = CAM", resolve=resolve, k=Auto((0,)), gamma=2,
                  b=1, order=80, search={"gamma": choice(1, 2, 3)})
def build(make_backbone: BackboneFactory, num_classes: int, k: tuple[int, ...], gamma: int,
          b: int) -> MethodNet:
    if any(size < 0 or (size > 0 and size % 2 == 0) for size in k):
        raise BenchError(f"method 'eca': option k must be 0 (adaptive) or odd kernel sizes, one "
                         f"or one per stage, got {'+'.join(map(str, k))}")
    if gamma < 1:
        raise BenchError(f"method 'eca': option gamma must be >= 1, got {gamma}")
    per_stage: dict[int, int] = {}  # block width -> kernel size, when given per stage
    if len(k) > 1:
        with torch.device("meta"):  # the stage widths, to tell the blocks' stages apart
            widths = make_backbone().stage_channels
        if len(k) != len(widths) or len(set(widths)) != len(widths):
            raise BenchError(f"method 'eca': option k={'+'.join(map(str, k))} needs one size per "
                             f"stage ({len(widths)} on this backbone)")
        per_stage = dict(zip(widths, k))

    def attention(channels: int) -> Eca:
        return Eca(channels, per_stage.get(channels, k[0]), gamma, b)

    return MethodNet(make_backbone(block_attn=attention), num_classes)
