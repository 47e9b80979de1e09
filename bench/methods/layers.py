"""Layers several methods share: the reduction-ratio bottleneck of SE, CBAM and BAM."""
from __future__ import annotations

from torch import nn

from bench.errors import BenchError


def check_reduction(method: str, reduction: int) -> None:
    """Reject a reduction ratio below 1 (it would widen, or divide by zero)."""
    if reduction < 1:
        raise BenchError(f"method {method!r}: option r (reduction ratio) must be >= 1, got {reduction}")


def reduced_width(channels: int, reduction: int) -> int:
    """Hidden width of a reduction-ratio bottleneck: C // r, at least 1."""
    return max(1, channels // reduction)


class ChannelMlp(nn.Sequential):
    """FC C -> C/r, ReLU, FC C/r -> C, both with bias: SE's excitation and CBAM's shared MLP."""

    def __init__(self, channels: int, reduction: int) -> None:
        hidden = reduced_width(channels, reduction)
        super().__init__(nn.Linear(channels, hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, channels))
