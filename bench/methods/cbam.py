"""CBAM, convolutional block attention module (Woo et al., ECCV 2018): channel, then spatial gate.

Channel gate: average- and max-pool U over H x W, pass both through ONE shared MLP
(C -> C/r -> C, ReLU, biases), sum, sigmoid, scale U per channel. Spatial gate, on the result:
[max over channels, mean over channels] -> k x k conv 2 -> 1 (padding k // 2, no bias) -> BN ->
sigmoid, scale per pixel. No residual inside the module. Placement as SE (``block_attn``: after the
branch's last BN, before the addition). Head: the baseline GAP-FC, so the map is the CAM.

Details follow the authors' code (Jongchan/attention-module, MODELS/cbam.py, model_resnet.py):
channel order [max, mean]; the spatial BN has eps 1e-5, momentum 0.01, affine; the network init
sets the spatial BN's weight to 0 (and every bias to 0), so the spatial gate starts at exactly 0.5
everywhere; ``reset_attention`` restores that after the backbone's generic init (BN weight 1).
The MLP's weights keep PyTorch's default Linear init, as in the reference; its biases are zeroed as
the reference does. The hidden width is max(1, C // r), as for SE. Parameters per block: SE's
2*C*(C//r) + C//r + C plus 2*k*k (conv) + 2 (BN); ResNet-50 gains 2,532,592.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from bench.errors import BenchError
from bench.methods.base import BackboneFactory, MethodNet
from bench.methods.layers import ChannelMlp, check_reduction
from bench.registry import METHODS
from bench.search import choice


class ChannelGate(nn.Module):
    """sigmoid(MLP(avg-pool) + MLP(max-pool)) with one shared MLP."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.mlp = ChannelMlp(channels, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel weights in (0, 1), shape (B, C, 1, 1)."""
        logits = self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3)))
        return torch.sigmoid(logits)[:, :, None, None]


class SpatialGate(nn.Module):
    """sigmoid(BN(conv([max_c x, mean_c x]))): one weight per pixel."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel weights in (0, 1), shape (B, 1, H, W)."""
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.bn(self.conv(pooled)))


class Cbam(nn.Module):
    """Channel gate, then spatial gate, applied in sequence to the residual branch output."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel_gate = ChannelGate(channels, reduction)
        self.spatial_gate = SpatialGate(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel_gate(x)
        return x * self.spatial_gate(x)

    def reset_attention(self) -> None:
        """The reference init: spatial BN weight 0 (gate = 0.5 at start), all biases 0."""
        nn.init.zeros_(self.spatial_gate.bn.weight)
        nn.init.zeros_(self.spatial_gate.bn.bias)
        for layer in self.channel_gate.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.zeros_(layer.bias)


@METHODS.register("cbam", "channel + spatial attention in every residual block (Woo et al. 2018); "
                  "map = CAM", r=16, kernel=7, order=40,
                  search={"r": choice(4, 8, 16, 32), "kernel": choice(3, 5, 7)})
def build(make_backbone: BackboneFactory, num_classes: int, r: int, kernel: int) -> MethodNet:
    check_reduction("cbam", r)
    if kernel < 1 or kernel % 2 == 0:
        raise BenchError(f"method 'cbam': option kernel (spatial conv size) must be odd and >= 1, "
                         f"got {kernel}")
    attention = partial(Cbam, reduction=r, kernel_size=kernel)
    return MethodNet(make_backbone(block_attn=attention), num_classes)
