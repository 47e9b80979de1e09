"""SRM, style-based recalibration (Lee et al., ICCV 2019): a gate from each channel's mean and
standard deviation, in every residual block (the ``block_attn`` hook, as SE). Map = CAM."""
from __future__ import annotations

import torch
from torch import nn

from bench.methods.base import BackboneFactory, MethodNet
from bench.registry import METHODS


class Srm(nn.Module):
    """x * sigmoid(BN(w_mean * mean + w_std * std)), one weight pair per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.cfc = nn.Conv1d(channels, channels, kernel_size=2, groups=channels, bias=False)
        self.bn = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)
        style = torch.stack([flat.mean(2), flat.std(2, unbiased=False)], dim=2)  # (B, C, 2)
        gate = torch.sigmoid(self.bn(self.cfc(style).squeeze(2)))
        return x * gate[:, :, None, None]

    def reset_attention(self) -> None:
        """The reference init: zero channel weights, so every gate starts at sigmoid(0)."""
        nn.init.zeros_(self.cfc.weight)


@METHODS.register("srm", "style-based recalibration (mean and std per channel) in every "
                  "residual block (Lee et al. 2019); map = CAM", order=95)
def build(make_backbone: BackboneFactory, num_classes: int) -> MethodNet:
    return MethodNet(make_backbone(block_attn=Srm), num_classes)
