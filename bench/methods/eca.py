"""ECA, efficient channel attention (Wang et al., CVPR 2020): SE without the bottleneck MLP.

GAP -> 1D convolution across the channel axis (kernel k, padding k // 2, no bias) -> sigmoid ->
scale each channel. Placement as SE (``block_attn``: after the branch's last BN, before the
addition). Head: GAP-FC, map = CAM. Parameters per block: k.

Kernel size (option ``k``; 0 = adaptive from the block's width C): the authors' rule with
gamma = 2, b = 1 (options ``gamma``, ``b``): t = int(|(log2(C) + b) / gamma|), k = t if t is odd
else t + 1. This is the paper's "nearest odd number of t" with exact even ties (C = 2048:
t = 6) rounded up. It gives k = 3 for C = 16..64, 5 for C = 128..1024, 7 for C = 2048, so
ResNet-50 uses 5, 5, 5, 7 per stage (+86 parameters, as in SSIA's Table 3). The authors'
ImageNet ResNet-50 checkpoint was instead trained with 3, 5, 5, 7 given by hand (README, ``--ksize
3557``); a fixed odd ``k`` applies one size to every block. The conv keeps PyTorch's default init
(the reference network's init touches only 2-D convs and BN).
"""
from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from bench.errors import BenchError
from bench.methods.base import BackboneFactory, MethodNet
from bench.registry import METHODS


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


@METHODS.register("eca", "efficient channel attention (1D conv across channels) in every residual "
                  "block (Wang et al. 2020); map = CAM", k=0, gamma=2, b=1, order=80)
def build(make_backbone: BackboneFactory, num_classes: int, k: int, gamma: int, b: int) -> MethodNet:
    if k < 0 or (k > 0 and k % 2 == 0):
        raise BenchError(f"method 'eca': option k must be 0 (adaptive) or an odd kernel size, got {k}")
    if gamma < 1:
        raise BenchError(f"method 'eca': option gamma must be >= 1, got {gamma}")
    attention = partial(Eca, kernel_size=k, gamma=gamma, b=b)
    return MethodNet(make_backbone(block_attn=attention), num_classes)
