"""GAP-FC, the baseline: global average pooling and one linear layer; its map is the CAM."""
from __future__ import annotations

from bench.methods.base import BackboneFactory, MethodNet
from bench.registry import METHODS


@METHODS.register("gap-fc", "baseline: global average pooling + linear layer; map = CAM",
                  aliases=("gapfc", "baseline"), order=0)
def build(make_backbone: BackboneFactory, num_classes: int) -> MethodNet:
    return MethodNet(make_backbone(), num_classes)
