"""ABN, the Attention Branch Network (Fukui et al., CVPR 2019): an attention map M, learnt by a
CAM-like class branch, re-weights the features before the last stage.

The network splits after stage L-1 (features g, e.g. 16x16 for CIFAR ResNets on 32x32 inputs,
14x14 for ImageNet ResNets on 224x224):
- attention branch: a copy of stage L with every stride set to 1 (3x3/1x1 convs and the option-A
  shortcut), so it keeps the split resolution -> BN -> 1x1 conv to K (no bias) -> BN -> ReLU. From
  this K-channel map: attention logits = 1x1 conv K -> K (no bias), then global average pooling;
  M = 3x3 conv K -> 1 (no bias) -> BN -> sigmoid. As in the authors' code, the branch's BN follows
  the copied stage directly (no ReLU, also for pre-activation WRNs), and the branch is initialised
  like their att_layer (Kaiming fan-out convs, unit BN; it does not start as a copy of stage L's
  weights);
- perception branch: (1 + M) * g, then the backbone's own stage L (with WRN's final BN-ReLU),
  GAP and FC. Its logits are the prediction.
Loss: CE(attention logits) + CE(perception logits), equal weights, against the (CutMix-mixed)
labels; ``terms``: ``attention`` and ``perception``.

Localization (option ``map``): ``class`` (default) = the attention branch's class-c map whose
spatial mean is its class-c logit (the output of the K -> K conv: the branch's own CAM); ``m`` = M,
class-agnostic. Both are at the split resolution. ``deploy()`` is the whole network: prediction
needs M. Its ``forward`` does not compute the K -> K conv (only the loss and the class maps use
it), so FLOP counts of the deployed network leave it out although its K*K weights are counted:
ResNet-50 at 224x224, K = 1000: 7.45 GMACs (fvcore) vs the SAOL paper's 7.62 for ABN, whose
reference computes that conv (+0.20 G at 14x14) in every forward; baseline 4.11 (paper 4.09).

The authors' CIFAR "ResNet-110" is not the standard one: their CIFAR ResNet switches to bottleneck
blocks for depth >= 44, so it has 18 bottleneck blocks per stage (164 weighted layers, output widths
64/128/256, 1x1-projection shortcuts; about the same 1.7M parameters and 0.25 GMACs on 32x32, but
a deeper, thinner-per-layer network whose attention branch works on 256 channels). Ours is the
standard ResNet-110 of He et al. (18 basic blocks per stage, 16/32/64 channels, option-A
shortcuts), with ABN built on it as above; results on the two are not interchangeable.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from bench.errors import BenchError
from bench.methods.base import BackboneFactory, Batch, MethodNet, StepOutput
from bench.models.common import Backbone, init_weights
from bench.models.blocks import PadShortcut
from bench.registry import METHODS


def stride_one_copy(stage: nn.Module) -> nn.Module:
    """A deep copy of a stage with every stride set to 1 (convolutions and option-A shortcuts)."""
    stage = copy.deepcopy(stage)
    for module in stage.modules():
        if isinstance(module, nn.Conv2d):
            module.stride = (1, 1)
        elif isinstance(module, PadShortcut):
            module.stride = 1
    return stage


class AttentionBranch(nn.Module):
    """Stride-1 copy of the last stage -> BN -> 1x1 conv to K -> BN -> ReLU, with the class conv
    (K -> K, for the attention logits) and the map head (3x3 conv -> BN -> sigmoid) on top."""

    def __init__(self, last_stage: nn.Module, channels: int, num_classes: int) -> None:
        super().__init__()
        self.stage = stride_one_copy(last_stage)
        self.bn = nn.BatchNorm2d(channels)
        self.to_classes = nn.Conv2d(channels, num_classes, 1, bias=False)
        self.bn_classes = nn.BatchNorm2d(num_classes)
        self.relu = nn.ReLU(inplace=True)
        self.class_conv = nn.Conv2d(num_classes, num_classes, 1, bias=False)
        self.map_conv = nn.Conv2d(num_classes, 1, 3, padding=1, bias=False)
        self.map_bn = nn.BatchNorm2d(1)
        init_weights(self)

    def forward(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The K-channel map and M (B, 1, h, w) for split features ``g``."""
        features = self.relu(self.bn_classes(self.to_classes(self.bn(self.stage(g)))))
        return features, torch.sigmoid(self.map_bn(self.map_conv(features)))

    def class_maps(self, features: torch.Tensor) -> torch.Tensor:
        """Per-class maps (B, K, h, w); their spatial means are the attention logits."""
        return self.class_conv(features)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The attention logits (B, K): the class maps' spatial means."""
        return self.class_maps(features).mean(dim=(2, 3))


class AbnNet(MethodNet):
    """Backbone split after stage L-1; attention branch; perception = stage L + GAP-FC on (1+M)g."""

    def __init__(self, backbone: Backbone, num_classes: int, map_kind: str) -> None:
        super().__init__(backbone, num_classes)
        self.attention = AttentionBranch(backbone.stages[-1], backbone.out_channels, num_classes)
        self.map_kind = map_kind

    def split_features(self, x: torch.Tensor) -> torch.Tensor:
        """g(x): the output of stage L-1."""
        x = self.backbone.stem(x)
        for stage in self.backbone.stages[:-1]:
            x = stage(x)
        return x

    def perceive(self, g: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Perception logits from the attended features (1 + M) * g."""
        x = self.backbone.finish(self.backbone.stages[-1](g * m + g))
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.split_features(x)
        return self.perceive(g, self.attention(g)[1])

    def training_loss(self, batch: Batch) -> StepOutput:
        g = self.split_features(batch.x)
        features, m = self.attention(g)
        attention_logits = self.attention.logits(features)
        logits = self.perceive(g, m)
        terms = {"attention": batch.classification_loss(attention_logits),
                 "perception": batch.classification_loss(logits)}
        loss = terms["attention"] + terms["perception"]
        return StepOutput(loss, logits, {k: v.detach() for k, v in terms.items()})

    def reference_network(self) -> nn.Module:
        return AbnReference(self)

    def localization_maps(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        features, m = self.attention(self.split_features(x))
        if self.map_kind == "m":
            return m[:, 0]
        rows = torch.arange(len(classes), device=classes.device)
        return self.attention.class_maps(features)[rows, classes]


class AbnReference(nn.Module):
    """ABN as the authors' code runs it at inference: every forward also computes the attention
    logits (the K -> K class conv and its GAP), beside the perception logits it predicts with."""

    def __init__(self, net: AbnNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.net.split_features(x)
        features, m = self.net.attention(g)
        return self.net.perceive(g, m), self.net.attention.logits(features)


@METHODS.register("abn", "attention branch network: a stride-1 copy of the last stage yields a "
                  "class-aware map M; perception on (1+M)*features; map = class map or M",
                  map="class", order=20)
def build(make_backbone: BackboneFactory, num_classes: int, map: str = "class") -> MethodNet:
    kind = str(map).strip().lower()
    if kind not in ("class", "m"):
        raise BenchError(f"option map={map!r} of method 'abn': expected class or m")
    return AbnNet(make_backbone(), num_classes, kind)
