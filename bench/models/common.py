"""What every backbone shares: the stage-output interface and the attention insertion points.

A backbone maps an image batch to the list of its stage outputs [X_1, ..., X_L]. Attention methods
change it only through three factories, each called with a channel count and returning a module:
- ``block_attn``: on the residual branch's output, after its last BN, before the addition (SE, CBAM, ECA);
- ``conv_attn``: right after each block's 3x3 convolution, before its BN (SimAM);
- ``stage_attn``: on the output of every stage but the last (BAM, at stage boundaries).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

AttnFactory = Optional[Callable[[int], nn.Module]]


def make_attn(factory: AttnFactory, channels: int) -> nn.Module:
    """The factory's module for ``channels``, or a parameter-free identity when there is none."""
    return factory(channels) if factory is not None else nn.Identity()


class Backbone(nn.Module):
    """Base for backbones: ``forward`` returns the stage outputs; ``stage_channels`` their widths.

    Subclasses define ``stem(x)``, name their stages in ``stage_names`` and give ``input_size``,
    the side of the images they are designed for (what "auto" options assume without a dataset).
    """

    stage_channels: list[int]
    stage_names: list[str]
    input_size: int

    @property
    def out_channels(self) -> int:
        return self.stage_channels[-1]

    @property
    def stages(self) -> list[nn.Module]:
        return [getattr(self, name) for name in self.stage_names]

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """Applied to the last stage's output (pre-activation nets end with BN-ReLU here)."""
        return x

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outputs = []
        names = self.stage_names
        for i, name in enumerate(names):
            x = getattr(self, name)(x)
            if i == len(names) - 1:
                x = self.finish(x)
            elif hasattr(self, "stage_attn"):
                x = self.stage_attn[i](x)
            outputs.append(x)
        return outputs

    def _init_stage_attn(self, factory: AttnFactory) -> None:
        """Register BAM-style modules between stages, only when a factory is given."""
        if factory is not None:
            self.stage_attn = nn.ModuleList(factory(c) for c in self.stage_channels[:-1])


def init_weights(module: nn.Module, zero_init_residual: bool = False) -> None:
    """Kaiming-normal (fan_out) convs, unit BN, as torchvision and the CIFAR references do."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in module.modules():
            last_bn = getattr(m, "last_bn", None)
            if isinstance(last_bn, nn.BatchNorm2d):
                nn.init.zeros_(last_bn.weight)
    # Attention modules whose reference uses its own initialisation (CBAM's spatial BN) restore it.
    for m in module.modules():
        if m is not module and hasattr(m, "reset_attention"):
            m.reset_attention()
