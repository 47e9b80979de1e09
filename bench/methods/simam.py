"""SimAM (Yang et al., ICML 2021): a parameter-free, energy-based gate on every neuron.

Per sample and channel: mu = spatial mean of x, d = (x - mu)^2, v = sum(d) / (H*W - 1),
e = d / (4 * (v + lambda)) + 0.5, output x * sigmoid(e). Option ``lambda``; ``auto`` (default)
is resolved when the run is planned: 0.1 when the dataset is ImageNet (the authors' ImageNet
setting), 1e-4 otherwise (their CIFAR setting); the resolved value is stored with the run.

Placement as in the authors' code (ZjjConan/SimAM, networks/cifar/block.py and
networks/imagenet/resnet.py): right after the block's 3x3 conv, before that conv's BN, i.e. after
conv2 in basic blocks, after the 3x3 conv2 in bottlenecks, after conv2 in pre-activation WRN
blocks: the backbone's ``conv_attn`` hook, which already sits there. Head: GAP-FC, map = CAM.

Choice: on a 1 x 1 map the reference divides 0 by 0 (H*W - 1 = 0) and returns NaN; here the divisor
is max(H*W - 1, 1), so v = 0 and the gate is sigmoid(0.5) (this only arises for tiny inputs, e.g.
32 x 32 images in an ImageNet ResNet's last stage). Zero parameters, but several passes over
each feature map at run time.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bench.errors import BenchError
from bench.methods.base import BackboneFactory, BuildContext, MethodNet
from bench.registry import METHODS, Auto
from bench.search import floats

IMAGENET_LAMBDA, OTHER_LAMBDA = 0.1, 1e-4


class SimAM(nn.Module):
    """x * sigmoid(energy), the energy from each neuron's squared distance to its channel mean."""

    def __init__(self, e_lambda: float = 1e-4) -> None:
        super().__init__()
        self.e_lambda = e_lambda

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = max(x.shape[2] * x.shape[3] - 1, 1)
        d = (x - x.mean(dim=(2, 3), keepdim=True)).pow(2)
        v = d.sum(dim=(2, 3), keepdim=True) / n
        return x * torch.sigmoid(d / (4 * (v + self.e_lambda)) + 0.5)

    def extra_repr(self) -> str:
        return f"lambda={self.e_lambda}"


def resolve(options: dict[str, Any], ctx: BuildContext) -> dict[str, Any]:
    """``lambda=auto``: the authors' 0.1 on ImageNet, their 1e-4 on everything else."""
    if isinstance(options["lambda"], Auto):
        options = dict(options, **{"lambda": IMAGENET_LAMBDA if ctx.imagenet else OTHER_LAMBDA})
    return options


@METHODS.register("simam", "parameter-free energy attention after each block's 3x3 conv "
                  "(Yang et al. 2021); map = CAM", resolve=resolve, **{"lambda": Auto(0.0)},
                  order=50, search={"lambda": floats(1e-6, 1.0, log=True)})
def build(make_backbone: BackboneFactory, num_classes: int, **options: Any) -> MethodNet:
    e_lambda = options["lambda"]  # ``lambda`` is a Python keyword, hence **options
    if not e_lambda > 0:
        raise BenchError(f"method 'simam': option lambda must be > 0, got {e_lambda}")
    return MethodNet(make_backbone(conv_attn=lambda channels: SimAM(e_lambda)), num_classes)
