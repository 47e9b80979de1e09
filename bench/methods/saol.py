"""SAOL, the Spatially Attentive Output Layer (Kim, Baek & Kim, CVPR 2020), replacing GAP-FC.

From the stage outputs it computes a spatial attention map ``A`` (softmax over the Ho x Wo
positions, from X_L) and spatial logits ``Y`` (softmax over the K classes at every position, from
several stages), and predicts ``y_hat_k = sum_ij A_ij Y_k,ij``: a probability vector. ``forward``
returns ``log y_hat`` (computed as ``logsumexp(log A + log Y)``: exactly normalised and finite, so no
clamp is needed); ``Batch.classification_loss`` then is the paper's NLL, since log_softmax leaves a
normalised log-distribution unchanged.

The authors' code was not found (only a third-party port, not followed), and the paper gives no
widths or kernel sizes. Our choices:
- attention head: 3x3 conv C_L -> ``attn_hidden``, BN, ReLU, 1x1 conv -> 1 (with bias); softmax
  over positions;
- spatial logits: per selected stage a 3x3 conv -> ``inter`` intermediate logits, BN, ReLU
  (decoder-style: without a non-linearity the two maps would collapse into one linear map);
  concatenated; 1x1 conv -> K (with bias); softmax over classes;
- ``conv_at``: where each 3x3 layer (conv-BN-ReLU) runs. ``stage``: at its input's own resolution
  (stage l's H_l x W_l), its output then resized to Ho x Wo; ``output``: on the input resized to
  Ho x Wo. Resizing is area averaging when shrinking, bilinear (align_corners=False) when
  enlarging. The 1x1 layers always run at Ho x Wo;
- ``layout`` sets the ``auto`` widths (resolved when the run is planned and stored with it):
  ``compact`` (default): ``inter`` = ``attn_hidden`` = C_L / 8 (256 on ResNet-50/101, 32 on the
  ABN code's CIFAR ResNet-110), ``conv_at=stage``; ``wide``: ``inter`` = K, ``attn_hidden`` =
  C_L / 4, ``conv_at=output``, the head of earlier versions (ResNet-50, K = 1000: 32,460,137
  parameters). Each of the three can also be given;
- ``separable``: every 3x3 conv becomes depthwise 3x3 + pointwise 1x1 (nothing between), as the
  paper does on ImageNet; 1x1 convs are unchanged. ``auto`` = on for 4-stage (ImageNet) backbones,
  off for 3-stage (CIFAR) ones;
- the head's convs keep PyTorch's default initialisation, like the FC layer they replace (the
  backbone's fan-out init would make the attention softmax peaked at the start);
- ``stages``: the 1-based stages feeding the spatial logits, written ``a+b`` (default: all, the
  best row of the paper's Table 4);
- ``out_size``: 0 = X_L's resolution; n > 0 gives n x n maps (the paper's 14 x 14 WSOL variant on
  224 inputs).

Why compact. The paper gives three figures: SAOL's cost and parameters are "almost the same as
the previous GAP-FC based output layer" (2.05M parameters on ResNet-50), ResNet-101 goes from 7.8
to 8.3 GFLOPs, and ResNet-50 + SAOL costs 4.62 in its WSOL table (the 14x14 variant). With
separable convs, inter = attn_hidden = w, stage widths C_l at H_l x W_l, n stages:
  parameters ~ sum_l (9 C_l + w C_l) + n w K + (9 C_L + w C_L) + BN and biases,
  MACs ~ sum_l (9 C_l + w C_l) H_l W_l (conv_at=stage) + (n w K + 9 C_L + w C_L) Ho Wo.
On ResNet-50/101 (C = 256..2048 at 56..7, K = 1000, w = 256): 1.02M + 1.02M + 0.54M = 2.59M
parameters (+0.54M over GAP-FC's 2.05M) and 0.40 + 0.05 + 0.03 = 0.48 GMACs. Measured (fvcore,
224x224, K = 1000; ``bench profile``):
  layout                    R50 params (added)      R50     R50, out_size=14   R101 (7.83)
  compact (default)         26,096,169 (+539,137)   4.588   4.739              8.311
  compact, conv_at=output   26,096,169 (+539,137)   4.238   4.621              7.960
  wide                      32,460,137 (+6,903,105) 4.549   5.868              8.272
  paper                     "almost the same"       -       4.62               8.3
Compact at the stage resolutions fits the parameters and ResNet-101 and is within 3% of the 14x14
figure (4.59 at the default 7x7); the 3x3 layers at the output resolution fit 4.62 but miss
ResNet-101 by 0.34 G; the K-wide head fits the GMACs but adds 6.9M parameters. The width
C_L / 8 (rather than a fixed 256) keeps the head in proportion on CIFAR nets: on the ABN code's
ResNet-110 (K = 10) it adds 201,441 parameters and costs 0.292 vs 0.254 GMACs (x1.15; the paper's
ResNet-110 "GFLOPs" 1.7 -> 2.1 are x1.24), where a fixed 256 would double the network (x2.19).

Training (``training_loss``), each term switchable; ``terms`` holds the weighted contributions,
which sum to the loss:
- ``sl``: NLL of ``y_hat`` against the (CutMix-mixed) labels; always on;
- ``ss1`` (CutMix batches only): a mask head built like the attention head (own weights) on X_L
  predicts the pasted region; target = the CutMix mask area-averaged to Ho x Wo (the fraction of
  each cell that was pasted); binary cross-entropy, mean over positions and images;
- ``ss2`` (CutMix batches only): per position the KL divergence between the source image's spatial
  logits Y_A (the target, from a forward pass of ``x_a`` under ``torch.no_grad``) and the mixed
  image's Y', weighted by the area-averaged mask and divided by the weights' sum (the average over
  the pasted positions). The ``x_a`` pass runs in the network's current mode, so in training BN
  uses that batch's statistics (and its running statistics also see the clean images);
- ``sd_kl`` + ``sd_ce``: self-distillation into a GAP-FC head on X_L: the KL divergence between
  y_hat_SAOL (the target) and y_hat_GAPFC (batch mean) + beta * CE(GAP-FC logits, mixed labels).
  With ``sd_detach`` (default) no gradient flows into SAOL through the KL, the paper's "knowledge
  transfer from SAOL to GAP-FC".
KL directions (``ss2_kl``, ``sd_kl``): ``target_pred`` (default for both) = KL(target ||
prediction), the distillation order: KL(Y_A || Y') and KL(y_hat_SAOL || y_hat_GAPFC);
``pred_target`` = the reverse. Read literally, with D_KL(P, Q) = KL(P || Q), the paper's Eq. 6
is target_pred but its Eq. 5, D_KL(M * Y', M * Y_A), is pred_target. Both equations transfer from
a side that gets no gradient (Y_A; SAOL) to a trained one (Y'; GAP-FC), so we read them the same
way, as distillation, and offer the literal Eq. 5 as ``ss2_kl=pred_target``.
On plain (un-mixed) batches ``ss1`` and ``ss2`` are absent from the loss and from ``terms`` (not
reported as zeros). Without ``sd`` no GAP-FC head is built.

``head`` picks the test-time output layer. ``saol``: ``forward`` gives log y_hat, the map for class
c is ``A * Y_c`` at Ho x Wo, and ``deploy()`` is backbone + attention head + spatial-logits head
(the SS1 mask head and the GAP-FC head are dropped). ``gapfc`` (needs ``sd``): ``forward`` gives the
GAP-FC logits, the map is its CAM, and ``deploy()`` is ``BaselineDeploy(backbone, gapfc)``: exactly
the baseline's parameters and cost.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import BenchError
from bench.methods.base import (BackboneFactory, BaselineDeploy, Batch, BuildContext, GapFc,
                                MethodNet, StepOutput)
from bench.models.common import Backbone
from bench.registry import METHODS, Auto
from bench.search import CUTMIX, floats

COMPACT_DIVISOR = 8  # layout=compact: C_L / 8 intermediate logits per stage and hidden units
LAYOUTS = ("compact", "wide")
CONV_AT = ("stage", "output")
KL_DIRECTIONS = ("target_pred", "pred_target")


def spatial_conv(cin: int, cout: int, separable: bool, bias: bool) -> nn.Module:
    """A 3x3 convolution, or its depthwise-separable form (depthwise 3x3, then pointwise 1x1)."""
    if not separable:
        return nn.Conv2d(cin, cout, 3, padding=1, bias=bias)
    return nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
                         nn.Conv2d(cin, cout, 1, bias=bias))


def conv_bn_relu(cin: int, cout: int, separable: bool) -> nn.Sequential:
    """The head's 3x3 layer: spatial_conv (no bias), BN, ReLU."""
    return nn.Sequential(spatial_conv(cin, cout, separable, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``x`` at ``size``: area averaging when shrinking, bilinear interpolation when enlarging."""
    height, width = x.shape[-2:]
    if (height, width) == size:
        return x
    if height >= size[0] and width >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def at_size(layer: nn.Module, x: torch.Tensor, size: tuple[int, int],
            at_stage: bool) -> torch.Tensor:
    """``layer`` applied to ``x`` and brought to ``size``: at ``x``'s own resolution then resized
    (``at_stage``), or on ``x`` resized first."""
    return resize(layer(x), size) if at_stage else layer(resize(x, size))


def kl_map(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) across classes (dim 1), kept as a (B, 1, ...) map."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1, keepdim=True)


def spatial_kl(log_p: torch.Tensor, log_q: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean over positions of KL(p || q) across classes (dim 1).

    ``log_p``/``log_q``: (B, K, H, W) log-distributions; ``weights``: (B, 1, H, W) >= 0.
    """
    return (weights * kl_map(log_p, log_q)).sum() / weights.sum().clamp_min(1e-12)


def ordered(target: torch.Tensor, pred: torch.Tensor,
            direction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(p, q) of KL(p || q) for a direction: ``target_pred`` = KL(target || pred), the
    distillation order; ``pred_target`` = KL(pred || target)."""
    return (target, pred) if direction == "target_pred" else (pred, target)


class SpatialMapHead(nn.Module):
    """Two layers to one score per position: 3x3 conv-BN-ReLU, 1x1 conv with bias (attention,
    SS1). ``at_stage``: the 3x3 layer runs at the input's resolution, before resizing."""

    def __init__(self, channels: int, hidden: int, separable: bool, at_stage: bool) -> None:
        super().__init__()
        self.hidden = conv_bn_relu(channels, hidden, separable)
        self.score = nn.Conv2d(hidden, 1, 1)
        self.at_stage = at_stage

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.score(at_size(self.hidden, x, size, self.at_stage))


class SpatialLogits(nn.Module):
    """Multi-stage spatial logits: per stage a 3x3 conv-BN-ReLU to ``inter`` channels (at the
    stage's resolution, then resized, when ``at_stage``; else on the resized stage),
    concatenated, 1x1 conv to K, log-softmax over classes."""

    def __init__(self, channels: list[int], inter: int, num_classes: int, separable: bool,
                 at_stage: bool) -> None:
        super().__init__()
        self.branches = nn.ModuleList(conv_bn_relu(c, inter, separable) for c in channels)
        self.fuse = nn.Conv2d(len(channels) * inter, num_classes, 1)
        self.at_stage = at_stage

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        inter = torch.cat([at_size(branch, f, size, self.at_stage)
                           for branch, f in zip(self.branches, features)], dim=1)
        return F.log_softmax(self.fuse(inter), dim=1)


@dataclass
class SaolOutput:
    """What the SAOL head computes for a batch (maps at the output size Ho x Wo)."""

    log_attention: torch.Tensor  # (B, 1, Ho, Wo), log A (softmax over positions)
    log_spatial: torch.Tensor  # (B, K, Ho, Wo), log Y (softmax over classes)
    log_probs: torch.Tensor  # (B, K), log y_hat
    last: torch.Tensor  # X_L as the backbone gave it (input of the attention and SS1 heads)

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.log_attention.shape[-2:])

    def maps(self, classes: torch.Tensor) -> torch.Tensor:
        """``A * Y_c`` for one class per image: (B, Ho, Wo)."""
        rows = torch.arange(len(classes), device=classes.device)
        return (self.log_attention[:, 0] + self.log_spatial[rows, classes]).exp()


@dataclass(frozen=True)
class HeadShape:
    """The widths and layout of a SAOL head (resolved options)."""

    inter: int  # intermediate spatial-logit channels per stage
    attn_hidden: int  # hidden channels of the attention (and SS1) head
    at_stage: bool  # 3x3 layers at each input's own resolution, before resizing
    separable: bool  # depthwise-separable 3x3 convs


class SaolHead(nn.Module):
    """The output layer: attention from X_L, spatial logits from the selected stages (0-based)."""

    def __init__(self, stage_channels: list[int], stages: list[int], num_classes: int,
                 out_size: int, shape: HeadShape) -> None:
        super().__init__()
        self.stages = list(stages)
        self.out_size = out_size
        self.attention = SpatialMapHead(stage_channels[-1], shape.attn_hidden, shape.separable,
                                        shape.at_stage)
        self.logits = SpatialLogits([stage_channels[i] for i in stages], shape.inter,
                                    num_classes, shape.separable, shape.at_stage)

    def output_size(self, features: list[torch.Tensor]) -> tuple[int, int]:
        if self.out_size > 0:
            return (self.out_size, self.out_size)
        return tuple(features[-1].shape[-2:])

    def forward(self, features: list[torch.Tensor]) -> SaolOutput:
        size = self.output_size(features)
        last = features[-1]
        log_a = F.log_softmax(self.attention(last, size).flatten(1), dim=1).view(-1, 1, *size)
        log_y = self.logits([features[i] for i in self.stages], size)
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
                 shape: HeadShape, ss1: bool, ss2: bool, sd: bool, sd_detach: bool, beta: float,
                 head: str, ss2_kl: str = "target_pred", sd_kl: str = "target_pred") -> None:
        channels = backbone.stage_channels
        super().__init__(backbone, SaolHead(channels, stages, num_classes, out_size, shape))
        self.mask_head = (SpatialMapHead(channels[-1], shape.attn_hidden, shape.separable,
                                         shape.at_stage) if ss1 else None)
        self.gapfc = GapFc(channels[-1], num_classes) if sd else None
        self.ss2, self.sd_detach, self.beta, self.test_head = ss2, sd_detach, beta, head
        self.ss2_kl, self.sd_kl = ss2_kl, sd_kl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.test_head == "gapfc":
            return self.gapfc(self.backbone(x)[-1])
        return super().forward(x)

    def ss2_loss(self, x_a: torch.Tensor, log_spatial: torch.Tensor,
                 mask: torch.Tensor) -> torch.Tensor:
        """KL between the source image's spatial logits Y_A (target) and the mixed image's Y'
        over the pasted region, in the ``ss2_kl`` direction; Y_A sends no gradient."""
        with torch.no_grad():
            log_target = self.saol(self.backbone(x_a)).log_spatial
        return spatial_kl(*ordered(log_target, log_spatial, self.ss2_kl), mask)

    def training_loss(self, batch: Batch) -> StepOutput:
        features = self.backbone(batch.x)
        out = self.saol(features)
        terms = {"sl": batch.classification_loss(out.log_probs)}
        if batch.mixed:
            mask = resize(batch.mask.to(out.last.dtype), out.size)
            if self.mask_head is not None:
                terms["ss1"] = F.binary_cross_entropy_with_logits(
                    self.mask_head(out.last, out.size), mask)
            if self.ss2:
                terms["ss2"] = self.ss2_loss(batch.x_a, out.log_spatial, mask)
        scores = out.log_probs
        if self.gapfc is not None:
            gap_logits = self.gapfc(features[-1])
            teacher = out.log_probs.detach() if self.sd_detach else out.log_probs
            terms["sd_kl"] = kl_map(*ordered(teacher, F.log_softmax(gap_logits, dim=1),
                                             self.sd_kl)).mean()
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


def _choice(key: str, value: Any, valid: tuple[str, ...]) -> str:
    """``value`` as one of ``valid`` (case and hyphens ignored), else a BenchError."""
    text = str(value).strip().lower().replace("-", "_")
    if text not in valid:
        raise BenchError(f"option {key}={value!r} of method 'saol': expected "
                         f"{', '.join(valid[:-1])} or {valid[-1]}")
    return text


def resolve(options: dict[str, Any], ctx: BuildContext) -> dict[str, Any]:
    """The ``auto`` widths and layout from ``layout`` and the backbone: compact = C_L / 8
    intermediate logits per stage and attention hidden units (256 on ResNet-50/101), 3x3 layers
    at each stage's resolution; wide = K and C_L / 4, at the output resolution; ``separable`` on
    4-stage (ImageNet) backbones."""
    wide = _choice("layout", options["layout"], LAYOUTS) == "wide"
    compact = max(ctx.stage_channels[-1] // COMPACT_DIVISOR, 1)
    values = {"inter": ctx.num_classes if wide else compact,
              "attn_hidden": ctx.stage_channels[-1] // 4 if wide else compact,
              "conv_at": "output" if wide else "stage",
              "separable": len(ctx.stage_channels) == 4}
    return {k: values[k] if isinstance(v, Auto) else v for k, v in options.items()}


@METHODS.register("saol", "spatially attentive output layer (attention-weighted spatial logits) "
                  "with CutMix self-supervision and self-distillation; map = A * Y_c",
                  resolve=resolve, stages=(), out_size=0, layout="compact", inter=Auto(0),
                  attn_hidden=Auto(0), conv_at=Auto("stage"), separable=Auto(False), ss1=True,
                  ss2=True, sd=True, sd_detach=True, beta=0.5, head="saol",
                  ss2_kl="target_pred", sd_kl="target_pred", order=10,
                  search={"cutmix": CUTMIX, "beta": floats(0.1, 1.0)})
def build(make_backbone: BackboneFactory, num_classes: int, stages: tuple, out_size: int,
          layout: str, inter: int, attn_hidden: int, conv_at: str, separable: bool, ss1: bool,
          ss2: bool, sd: bool, sd_detach: bool, beta: float, head: str, ss2_kl: str,
          sd_kl: str) -> MethodNet:
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
    for key, width in (("inter", inter), ("attn_hidden", attn_hidden)):
        if width < 1:
            raise BenchError(f"option {key}={width} of method 'saol': expected a positive width")
    _choice("layout", layout, LAYOUTS)
    shape = HeadShape(inter, attn_hidden, _choice("conv_at", conv_at, CONV_AT) == "stage",
                      separable)
    backbone = make_backbone()
    count = len(backbone.stage_channels)
    return SaolNet(backbone, num_classes, _parse_stages(stages, count), out_size, shape, ss1, ss2,
                   sd, sd_detach, beta, head, _choice("ss2_kl", ss2_kl, KL_DIRECTIONS),
                   _choice("sd_kl", sd_kl, KL_DIRECTIONS))
