"""SAOL, the Spatially Attentive Output Layer (Kim, Baek & Kim, CVPR 2020), replacing GAP-FC.

From the stage outputs it computes a spatial attention map ``A`` (softmax over the Ho x Wo
positions, from X_L) and spatial logits ``Y`` (softmax over the K classes at every position, from
several stages), and predicts ``y_hat_k = sum_ij A_ij Y_k,ij``: a probability vector. ``forward``
returns ``log y_hat`` (computed as ``logsumexp(log A + log Y)``: exactly normalised and finite, so no
clamp is needed); ``Batch.classification_loss`` then is the paper's NLL, since log_softmax leaves a
normalised log-distribution unchanged.

The authors' code was not found (only a third-party port, not followed), and the paper gives no
widths or kernel sizes. Our choices:
- attention head: 3x3 conv C_L -> C_L/4, BN, ReLU, 1x1 conv -> 1 (with bias); softmax over positions;
- spatial logits: each selected stage is resized to Ho x Wo (area averaging when shrinking, bilinear
  with align_corners=False when enlarging), then 3x3 conv -> K intermediate logits, BN, ReLU
  (decoder-style: without a non-linearity the two maps would collapse into one linear map);
  concatenated; 1x1 conv -> K (with bias); softmax over classes;
- ``separable``: every 3x3 conv becomes depthwise 3x3 + pointwise 1x1 (nothing between), as the
  paper does on ImageNet; 1x1 convs are unchanged. ``auto`` = on for 4-stage (ImageNet) backbones,
  off for 3-stage (CIFAR) ones;
- the head's convs keep PyTorch's default initialisation, like the FC layer they replace (the
  backbone's fan-out init would make the attention softmax peaked at the start);
- ``stages``: the 1-based stages feeding the spatial logits, written ``a+b`` (default: all, the
  best row of the paper's Table 4);
- ``out_size``: 0 = X_L's resolution; n > 0 resizes X_L and every selected stage to n x n (the
  paper's 14 x 14 WSOL variant on 224 inputs).

Training (``training_loss``), each term switchable; ``terms`` holds the weighted contributions,
which sum to the loss:
- ``sl``: NLL of ``y_hat`` against the (CutMix-mixed) labels; always on;
- ``ss1`` (CutMix batches only): a mask head built like the attention head (own weights) on the
  resized X_L predicts the pasted region; target = the CutMix mask area-averaged to Ho x Wo (the
  fraction of each cell that was pasted); binary cross-entropy, mean over positions and images;
- ``ss2`` (CutMix batches only): per position KL(Y_A || Y') between the source image's spatial
  logits (teacher, from a forward pass of ``x_a`` under ``torch.no_grad``) and the mixed image's,
  weighted by the area-averaged mask and divided by the weights' sum (the average over the pasted
  positions). The ``x_a`` pass runs in the network's current mode, so in training BN uses that
  batch's statistics (and its running statistics also see the clean images);
- ``sd_kl`` + ``sd_ce``: self-distillation into a GAP-FC head on X_L: KL(y_hat_SAOL || y_hat_GAPFC)
  (batch mean) + beta * CE(GAP-FC logits, mixed labels). SAOL is the teacher; with ``sd_detach``
  (default) no gradient flows into SAOL through the KL, the paper's "knowledge transfer from SAOL
  to GAP-FC".
On plain (un-mixed) batches ``ss1`` and ``ss2`` are absent from the loss and from ``terms`` (not
reported as zeros). Without ``sd`` no GAP-FC head is built.

``head`` picks the test-time output layer. ``saol``: ``forward`` gives log y_hat, the map for class
c is ``A * Y_c`` at Ho x Wo, and ``deploy()`` is backbone + attention head + spatial-logits head
(the SS1 mask head and the GAP-FC head are dropped). ``gapfc`` (needs ``sd``): ``forward`` gives the
GAP-FC logits, the map is its CAM, and ``deploy()`` is ``BaselineDeploy(backbone, gapfc)``: exactly
the baseline's parameters and cost.

Cost of the deployed ``head=saol`` net (fvcore, 224x224, K = 1000, separable): ResNet-101 7.83 ->
8.27 GMACs (paper: 7.8 -> 8.3 GFLOPs); ResNet-50 4.11 -> 4.55, or 5.87 with ``out_size=14`` (paper:
4.62 for its 14x14 variant, whose construction it does not give). The K-wide intermediate logits
add 6.9M parameters on ResNet-50/101 (the paper calls the parameter count "almost the same").
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import BenchError
from bench.methods.base import (BackboneFactory, BaselineDeploy, Batch, GapFc, MethodNet,
                                StepOutput)
from bench.models.common import Backbone
from bench.registry import METHODS


def spatial_conv(cin: int, cout: int, separable: bool, bias: bool) -> nn.Module:
    """A 3x3 convolution, or its depthwise-separable form (depthwise 3x3, then pointwise 1x1)."""
    if not separable:
        return nn.Conv2d(cin, cout, 3, padding=1, bias=bias)
    return nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
                         nn.Conv2d(cin, cout, 1, bias=bias))


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``x`` at ``size``: area averaging when shrinking, bilinear interpolation when enlarging."""
    height, width = x.shape[-2:]
    if (height, width) == size:
        return x
    if height >= size[0] and width >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def spatial_kl(log_target: torch.Tensor, log_pred: torch.Tensor,
               weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean over positions of KL(target || pred) across classes (dim 1).

    ``log_target``/``log_pred``: (B, K, H, W) log-distributions; ``weights``: (B, 1, H, W) >= 0.
    """
    kl = (log_target.exp() * (log_target - log_pred)).sum(dim=1, keepdim=True)
    return (weights * kl).sum() / weights.sum().clamp_min(1e-12)


class SpatialMapHead(nn.Module):
    """Two convolutions to one score per position: 3x3 conv-BN-ReLU, 1x1 conv (attention, SS1)."""

    def __init__(self, channels: int, hidden: int, separable: bool) -> None:
        super().__init__()
        self.conv1 = spatial_conv(channels, hidden, separable, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(hidden, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.bn(self.conv1(x))))


class SpatialLogits(nn.Module):
    """Multi-stage spatial logits: per stage 3x3 conv-BN-ReLU to K, concatenate, 1x1 conv to K,
    log-softmax over classes. Takes the stage features already resized to the output size."""

    def __init__(self, channels: list[int], num_classes: int, separable: bool) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(spatial_conv(c, num_classes, separable, bias=False),
                          nn.BatchNorm2d(num_classes), nn.ReLU(inplace=True))
            for c in channels)
        self.fuse = nn.Conv2d(len(channels) * num_classes, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        inter = torch.cat([branch(f) for branch, f in zip(self.branches, features)], dim=1)
        return F.log_softmax(self.fuse(inter), dim=1)


@dataclass
class SaolOutput:
    """What the SAOL head computes for a batch (all at the output size Ho x Wo)."""

    log_attention: torch.Tensor  # (B, 1, Ho, Wo), log A (softmax over positions)
    log_spatial: torch.Tensor  # (B, K, Ho, Wo), log Y (softmax over classes)
    log_probs: torch.Tensor  # (B, K), log y_hat
    last: torch.Tensor  # X_L resized to Ho x Wo (input of the attention and SS1 heads)

    def maps(self, classes: torch.Tensor) -> torch.Tensor:
        """``A * Y_c`` for one class per image: (B, Ho, Wo)."""
        rows = torch.arange(len(classes), device=classes.device)
        return (self.log_attention[:, 0] + self.log_spatial[rows, classes]).exp()


class SaolHead(nn.Module):
    """The output layer: attention from X_L, spatial logits from the selected stages (0-based)."""

    def __init__(self, stage_channels: list[int], stages: list[int], num_classes: int,
                 out_size: int, separable: bool) -> None:
        super().__init__()
        last = stage_channels[-1]
        self.stages = list(stages)
        self.out_size = out_size
        self.attention = SpatialMapHead(last, last // 4, separable)
        self.logits = SpatialLogits([stage_channels[i] for i in stages], num_classes, separable)

    def output_size(self, features: list[torch.Tensor]) -> tuple[int, int]:
        if self.out_size > 0:
            return (self.out_size, self.out_size)
        return tuple(features[-1].shape[-2:])

    def forward(self, features: list[torch.Tensor]) -> SaolOutput:
        size = self.output_size(features)
        last = resize(features[-1], size)
        log_a = F.log_softmax(self.attention(last).flatten(1), dim=1).view(-1, 1, *size)
        log_y = self.logits([resize(features[i], size) for i in self.stages])
        log_probs = torch.logsumexp((log_a + log_y).flatten(2), dim=2)
        return SaolOutput(log_a, log_y, log_probs, last)


class SaolClassifier(MethodNet):
    """Backbone + SAOL output layer: what ``saol`` deploys with ``head=saol``."""

    def __init__(self, backbone: Backbone, saol: SaolHead) -> None:
        nn.Module.__init__(self)
        self.backbone = backbone
        self.saol = saol
        self.num_classes = saol.logits.fuse.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """log y_hat, a normalised log-distribution over the classes."""
        return self.saol(self.backbone(x)).log_probs

    def localization_maps(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return self.saol(self.backbone(x)).maps(classes)


class SaolNet(SaolClassifier):
    """SAOL in training: adds the SS1 mask head and the self-distilled GAP-FC head."""

    def __init__(self, backbone: Backbone, num_classes: int, stages: list[int], out_size: int,
                 separable: bool, ss1: bool, ss2: bool, sd: bool, sd_detach: bool, beta: float,
                 head: str) -> None:
        channels = backbone.stage_channels
        super().__init__(backbone, SaolHead(channels, stages, num_classes, out_size, separable))
        self.mask_head = SpatialMapHead(channels[-1], channels[-1] // 4, separable) if ss1 else None
        self.gapfc = GapFc(channels[-1], num_classes) if sd else None
        self.ss2, self.sd_detach, self.beta, self.test_head = ss2, sd_detach, beta, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.test_head == "gapfc":
            return self.gapfc(self.backbone(x)[-1])
        return super().forward(x)

    def ss2_loss(self, x_a: torch.Tensor, log_spatial: torch.Tensor,
                 mask: torch.Tensor) -> torch.Tensor:
        """KL(Y_A || Y') over the pasted region; the source image's side sends no gradient."""
        with torch.no_grad():
            log_target = self.saol(self.backbone(x_a)).log_spatial
        return spatial_kl(log_target, log_spatial, mask)

    def training_loss(self, batch: Batch) -> StepOutput:
        features = self.backbone(batch.x)
        out = self.saol(features)
        terms = {"sl": batch.classification_loss(out.log_probs)}
        if batch.mixed:
            mask = resize(batch.mask.to(out.last.dtype), tuple(out.last.shape[-2:]))
            if self.mask_head is not None:
                terms["ss1"] = F.binary_cross_entropy_with_logits(self.mask_head(out.last), mask)
            if self.ss2:
                terms["ss2"] = self.ss2_loss(batch.x_a, out.log_spatial, mask)
        scores = out.log_probs
        if self.gapfc is not None:
            gap_logits = self.gapfc(features[-1])
            teacher = out.log_probs.detach() if self.sd_detach else out.log_probs
            terms["sd_kl"] = F.kl_div(F.log_softmax(gap_logits, dim=1), teacher,
                                      reduction="batchmean", log_target=True)
            terms["sd_ce"] = self.beta * batch.classification_loss(gap_logits)
            if self.test_head == "gapfc":
                scores = gap_logits
        loss = sum(terms.values())
        return StepOutput(loss, scores, {k: v.detach() for k, v in terms.items()})

    def localization_maps(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        if self.test_head == "gapfc":
            return self.gapfc.cam(self.backbone(x)[-1], classes)
        return super().localization_maps(x, classes)

    def deploy(self) -> MethodNet:
        if self.test_head == "gapfc":
            return BaselineDeploy(self.backbone, self.gapfc)
        return SaolClassifier(self.backbone, self.saol)


def _parse_stages(stages: tuple, count: int) -> list[int]:
    """1-based stage indices written ``a+b`` -> sorted 0-based indices; empty = every stage."""
    if not stages:
        return list(range(count))
    try:
        chosen = sorted({int(s) for s in stages})
    except ValueError:
        chosen = []
    if not chosen or chosen[0] < 1 or chosen[-1] > count:
        raise BenchError(f"option stages={'+'.join(map(str, stages))} of method 'saol': expected "
                         f"stage numbers in 1..{count} written a+b (the backbone has {count} stages)")
    return [s - 1 for s in chosen]


def _parse_separable(separable: str, count: int) -> bool:
    choice = str(separable).strip().lower()
    if choice not in ("auto", "true", "false"):
        raise BenchError(f"option separable={separable!r} of method 'saol': "
                         "expected auto, true or false")
    return count == 4 if choice == "auto" else choice == "true"


@METHODS.register("saol", "spatially attentive output layer (attention-weighted spatial logits) "
                  "with CutMix self-supervision and self-distillation; map = A * Y_c",
                  stages=(), out_size=0, separable="auto", ss1=True, ss2=True, sd=True,
                  sd_detach=True, beta=0.5, head="saol", order=10)
def build(make_backbone: BackboneFactory, num_classes: int, stages: tuple = (), out_size: int = 0,
          separable: str = "auto", ss1: bool = True, ss2: bool = True, sd: bool = True,
          sd_detach: bool = True, beta: float = 0.5, head: str = "saol") -> MethodNet:
    head = str(head).strip().lower().replace("-", "")
    if head not in ("saol", "gapfc"):
        raise BenchError(f"option head={head!r} of method 'saol': expected saol or gapfc")
    if head == "gapfc" and not sd:
        raise BenchError("method 'saol': head=gapfc needs sd=true (without self-distillation "
                         "there is no trained GAP-FC head)")
    if out_size < 0:
        raise BenchError(f"option out_size={out_size} of method 'saol': expected 0 (the last "
                         "stage's resolution) or a positive size")
    if beta < 0:
        raise BenchError(f"option beta={beta} of method 'saol': expected a number >= 0")
    backbone = make_backbone()
    count = len(backbone.stage_channels)
    return SaolNet(backbone, num_classes, _parse_stages(stages, count), out_size,
                   _parse_separable(separable, count), ss1, ss2, sd, sd_detach, beta, head)
