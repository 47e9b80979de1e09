"""SE, squeeze-and-excitation (Hu et al., CVPR 2018): a learned per-channel gate in every block.

Squeeze: global average pool of the residual branch output U (C channels). Excite: FC C -> C/r
(bias), ReLU, FC C/r -> C (bias), sigmoid. Output U * s, then the shortcut is added and the final
ReLU applied: the backbone's ``block_attn`` hook (after the branch's last BN; after the last conv
in pre-activation WRN blocks). The head is the baseline GAP-FC, so the localization map is the CAM.

Choices: the hidden width is C // r, raised to 1 when C < r would make it 0 (no shipped backbone
reaches that at r = 16; the narrowest CIFAR width, C = 16, gives 1). The FCs are ``nn.Linear`` with
PyTorch's default initialisation (the backbone's conv init does not touch them). Parameters per
block: 2*C*(C//r) + C//r + C; ResNet-50 (r = 16) gains 2,530,992 (28,088,024 in all).
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from bench.methods.base import BackboneFactory, MethodNet
from bench.methods.layers import ChannelMlp, check_reduction
from bench.registry import METHODS
from bench.search import choice


class SqueezeExcite(nn.Module):
    """Scale each channel by sigmoid(MLP(GAP(U)))."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.mlp = ChannelMlp(channels, reduction)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel weights in (0, 1), shape (B, C, 1, 1)."""
        return torch.sigmoid(self.mlp(x.mean(dim=(2, 3))))[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


@METHODS.register("se", "squeeze-and-excitation gate in every residual block (Hu et al. 2018); map = CAM",
                  r=16, order=30, search={"r": choice(4, 8, 16, 32)})
def build(make_backbone: BackboneFactory, num_classes: int, r: int) -> MethodNet:
    check_reduction("se", r)
    return MethodNet(make_backbone(block_attn=partial(SqueezeExcite, reduction=r)), num_classes)
