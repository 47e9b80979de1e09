"""sIoU-guided attention, "Sharpen Focus" (Wang et al., ICCV 2019, Sec. 3): training losses that make
the gradient attention of the true class separable from the most confusing class's and consistent
across layers. The deployed network is the plain baseline; its map is the CAM.

Attention of class c on a feature map F (K channels), from the logit Y^c:
- ``attention=px`` (Eq. 5): A = ReLU(mean_k dY^c/dF^k * F^k);
- ``attention=ch`` (Eqs. 3-4): A = ReLU(sum_k w_k F^k), w_k = spatial mean of ReLU(dY^c/dF^k).
The gradients come from ``torch.autograd.grad(..., create_graph=True)``, so every loss below is
differentiated through the attention (a double backward) and trains the network end to end.
The gradient is taken of the batch sum of the chosen logits; with BN in training mode in the last
stage this adds the usual O(1/B) cross-sample terms (through the batch statistics) to the inner
layer's gradient, as any batched Grad-CAM-style computation does.

Layers: "last" = X_L; "inner" = X_{L-1}, the output of the penultimate stage (the paper's "last
convolutional layer in the penultimate block", read as the stage output, as Grad-CAM uses and as
the authors' conv4_x / conv5_x naming suggests; no hooks needed).
Classes: T = the ground truth (with CutMix, ``batch.y``, the label of the un-pasted image x_b, whose
area is the larger in expectation; the pasted class ``y_a`` then often becomes the confusing one);
conf = the highest-scoring other class (chosen without gradient).

Maps are normalised per sample so that they lie in [0, 1] and omega = 100 acts on a fixed scale
(eps 1e-12); the paper does not normalise. Option ``norm``: ``own`` (default) divides every map by
its own maximum, so sIoU compares the two maps' shapes and ignores how strong the confusing
class's attention is; ``joint`` divides the target and confusing maps of a layer by the larger of
their two maxima, so a weak confusing map overlaps less (a layer whose confusing map is not
computed, e.g. the inner target map that only L_ac uses, is divided by its own maximum: L_ac's
ratio is scale-free in A_in). The mask is computed from the last target map as normalised, so
under ``joint`` it also moves with that scale. Then, per sample:
- Mask = sigmoid(omega * (A_last_T - sigma * max(A_last_T))) (Eq. 7), with the max taken of the
  same normalised map it thresholds; for the inner layer the mask is resized bilinearly to the inner
  map's resolution (the inner maps keep their finer resolution);
- sIoU = 2 * sum(min(A_T, A_conf) * Mask) / sum(A_T + A_conf) (Eq. 6), on the inner and last layers;
- L_ac = alpha - sum(A_in_T * Mask) / sum(A_in_T) (Eq. 8); alpha is not given in the paper: 1 makes
  L_ac >= 0 (its value only shifts the loss).
Each is averaged over the batch; L = CE + sIoU_inner + sIoU_last + L_ac (Eq. 9), each term
switchable (``inner``, ``last``, ``ac``). The mask is differentiated like the rest (the paper calls
the framework end to end); ``detach_mask=true`` treats it as a constant instead.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import BenchError
from bench.methods.base import BackboneFactory, BaselineDeploy, Batch, MethodNet, StepOutput
from bench.models.common import Backbone
from bench.registry import METHODS
from bench.search import floats

MAX_EPS = 1e-12  # added to the per-sample maximum when normalising a map
SUM_EPS = 1e-8  # added to the sums in the denominators of sIoU and L_ac
ATTENTIONS = ("px", "ch")
NORMS = ("own", "joint")


def gradient_attention(score: torch.Tensor, features: list[torch.Tensor],
                       kind: str) -> list[torch.Tensor]:
    """Maps (B, h, w) of ``score`` (a scalar: a sum of per-sample class scores) on each feature
    map, pixel-wise (``px``) or channel-wise (``ch``); differentiable (create_graph)."""
    grads = torch.autograd.grad(score, features, create_graph=True)
    maps = []
    for grad, feature in zip(grads, features):
        if kind == "px":
            maps.append(F.relu((grad * feature).mean(dim=1)))
        else:
            weights = F.relu(grad).mean(dim=(2, 3), keepdim=True)
            maps.append(F.relu((weights * feature).sum(dim=1)))
    return maps


def peak(a: torch.Tensor) -> torch.Tensor:
    """Each sample's maximum of maps (B, h, w), shaped (B, 1, 1)."""
    return a.amax(dim=(1, 2), keepdim=True)


def normalize_max(a: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Divide each sample's non-negative map (B, h, w) by ``scale`` (B, 1, 1), by default its
    own maximum."""
    return a / ((peak(a) if scale is None else scale) + MAX_EPS)


def soft_mask(a_last: torch.Tensor, sigma: float, omega: float) -> torch.Tensor:
    """Eq. 7: sigmoid(omega * (A - sigma * max(A))) per sample, on the map it is given."""
    return torch.sigmoid(omega * (a_last - sigma * a_last.amax(dim=(1, 2), keepdim=True)))


def soft_iou(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 6 per sample: 2 * sum(min(a, b) * mask) / sum(a + b); returns (B,)."""
    return 2 * (torch.minimum(a, b) * mask).sum(dim=(1, 2)) / ((a + b).sum(dim=(1, 2)) + SUM_EPS)


def consistency_loss(a_inner: torch.Tensor, mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 8 per sample: alpha - sum(A_in * mask) / sum(A_in); returns (B,)."""
    return alpha - (a_inner * mask).sum(dim=(1, 2)) / (a_inner.sum(dim=(1, 2)) + SUM_EPS)


def resize_map(a: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Bilinear resize of maps (B, h, w) to ``size`` (identity when already that size)."""
    if a.shape[-2:] == size:
        return a
    return F.interpolate(a[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


class SIoUNet(MethodNet):
    """Backbone + GAP-FC trained with the soft-IoU separability and attention-consistency losses."""

    def __init__(self, backbone: Backbone, num_classes: int, attention: str = "px",
                 inner: bool = True, last: bool = True, ac: bool = True, omega: float = 100.0,
                 sigma: float = 0.55, alpha: float = 1.0, detach_mask: bool = False,
                 norm: str = "own") -> None:
        super().__init__(backbone, num_classes)
        if attention not in ATTENTIONS:
            raise BenchError(f"siou option attention={attention!r}: valid: {', '.join(ATTENTIONS)}")
        if norm not in NORMS:
            raise BenchError(f"siou option norm={norm!r}: valid: {', '.join(NORMS)}")
        if len(backbone.stage_channels) < 2:
            raise BenchError("siou needs a backbone with at least two stages (inner and last layer)")
        self.attention, self.inner, self.last, self.ac = attention, inner, last, ac
        self.omega, self.sigma, self.alpha, self.detach_mask = omega, sigma, alpha, detach_mask
        self.norm = norm

    def class_maps(self, logits: torch.Tensor, classes: torch.Tensor,
                   layers: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Raw attention maps of one class per image on each named layer."""
        score = logits.gather(1, classes[:, None]).sum()
        return dict(zip(layers, gradient_attention(score, list(layers.values()), self.attention)))

    def normalized(self, target: dict[str, torch.Tensor],
                   confusing: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor],
                                                                dict[str, torch.Tensor]]:
        """The maps divided per ``norm``: each by its own maximum, or a layer's target and
        confusing maps by the larger of their maxima (``joint``)."""
        scales = {name: torch.maximum(peak(a), peak(confusing[name])) for name, a in target.items()
                  if self.norm == "joint" and name in confusing}
        return ({name: normalize_max(a, scales.get(name)) for name, a in target.items()},
                {name: normalize_max(a, scales.get(name)) for name, a in confusing.items()})

    def attention_losses(self, features: list[torch.Tensor], logits: torch.Tensor,
                         target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The enabled terms ``siou_inner``, ``siou_last``, ``ac`` (batch means, not detached)."""
        if not (self.inner or self.last or self.ac):
            return {}
        f_inner, f_last = features[-2], features[-1]
        others = logits.detach().scatter(1, target[:, None], float("-inf"))
        confusing = others.argmax(dim=1)

        need_inner = self.inner or self.ac
        target_layers = {"inner": f_inner, "last": f_last} if need_inner else {"last": f_last}
        conf_layers = {name: f for name, f, on in (("inner", f_inner, self.inner),
                                                   ("last", f_last, self.last)) if on}
        conf = self.class_maps(logits, confusing, conf_layers) if conf_layers else {}
        maps, conf = self.normalized(self.class_maps(logits, target, target_layers), conf)
        mask = soft_mask(maps["last"], self.sigma, self.omega)
        if self.detach_mask:
            mask = mask.detach()
        mask_in = resize_map(mask, maps["inner"].shape[-2:]) if need_inner else None
        terms = {}
        if self.inner:
            terms["siou_inner"] = soft_iou(maps["inner"], conf["inner"], mask_in).mean()
        if self.last:
            terms["siou_last"] = soft_iou(maps["last"], conf["last"], mask).mean()
        if self.ac:
            terms["ac"] = consistency_loss(maps["inner"], mask_in, self.alpha).mean()
        return terms

    def training_loss(self, batch: Batch) -> StepOutput:
        features = self.backbone(batch.x)
        logits = self.head(features[-1])
        terms = {"ce": batch.classification_loss(logits),
                 **self.attention_losses(features, logits, batch.y)}
        return StepOutput(sum(terms.values()), logits, {k: v.detach() for k, v in terms.items()})

    def deploy(self) -> nn.Module:
        return BaselineDeploy(self.backbone, self.head)


@METHODS.register("siou", "training-only: soft-IoU separation of true vs. most confusing class "
                  "gradient attention + inner/last consistency (Sharpen Focus); deploys the baseline",
                  aliases=("sharpen-focus",), attention="px", inner=True, last=True, ac=True,
                  omega=100.0, sigma=0.55, alpha=1.0, detach_mask=False, norm="own", order=70,
                  search={"sigma": floats(0.3, 0.8), "omega": floats(10.0, 300.0, log=True)})
def build(make_backbone: BackboneFactory, num_classes: int, **options) -> MethodNet:
    return SIoUNet(make_backbone(), num_classes, **options)
