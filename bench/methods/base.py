"""The contract every method fulfils, and the GAP-FC output layer they share.

A method is a ``MethodNet``: a backbone plus an output layer. It says four things:
- how it changes the network (its constructor: attention hooks on the backbone, extra heads);
- the loss terms it adds in training (``training_loss`` returns them by name);
- the localization map it gives for a class (``localization_maps``);
- the network it deploys (``deploy``: training-only parts removed).
Options a paper sets differently per dataset or input size default to ``auto`` and are resolved
from a ``BuildContext`` (the method's registered ``resolve``) before the network is built.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from bench.models.common import AttnFactory, Backbone
from bench.registry import Spec


@dataclass(frozen=True)
class BuildContext:
    """What a method's ``auto`` options may depend on: the run's dataset (its registered name, or
    None when not known), input size, classes, and the backbone's stage widths and output sizes
    at that input size."""

    backbone: Spec
    num_classes: int
    in_channels: int
    input_size: int
    dataset: Optional[str]
    stage_channels: tuple[int, ...]
    stage_sizes: tuple[int, ...]  # side of each stage's output map (square inputs)

    @property
    def imagenet(self) -> bool:
        """Whether the run trains on ImageNet (a paper's ImageNet setting then applies)."""
        return self.dataset == "imagenet"


class BackboneFactory(Protocol):
    """What a method's builder receives: a function that builds the run's backbone, with the
    attention modules a method inserts (each hook maps a channel count to a module; see
    bench.models.common for where each sits). Call it once per network the method needs."""

    def __call__(self, *, block_attn: AttnFactory = None, conv_attn: AttnFactory = None,
                 stage_attn: AttnFactory = None) -> Backbone: ...


@dataclass
class Batch:
    """One training batch. With CutMix, ``x = mask * x_a + (1 - mask) * x_b`` where ``x_b`` is the
    un-mixed batch (labels ``y``) and ``x_a`` the source of the pasted patch (labels ``y_a``)."""

    x: torch.Tensor
    y: torch.Tensor
    y_a: Optional[torch.Tensor] = None
    lam: float = 0.0  # fraction of the image pasted from x_a
    mask: Optional[torch.Tensor] = None  # (B, 1, H, W), 1 inside the pasted patch
    x_a: Optional[torch.Tensor] = None
    label_smoothing: float = 0.0  # the recipe's, applied to every classification loss

    @classmethod
    def cutmix(cls, x: torch.Tensor, y: torch.Tensor, x_a: torch.Tensor, y_a: torch.Tensor,
               box: tuple[int, int, int, int], label_smoothing: float = 0.0) -> "Batch":
        """A CutMix batch (Yun et al. 2019): the pixels of ``box`` = (y0, y1, x0, x1), end
        exclusive, pasted from ``x_a`` into ``x``; lam is the exact pasted fraction."""
        b, _, h, w = x.shape
        y0, y1, x0, x1 = box
        mask = torch.zeros(1, 1, h, w, device=x.device, dtype=x.dtype)
        mask[..., y0:y1, x0:x1] = 1
        lam = (y1 - y0) * (x1 - x0) / (h * w)
        return cls(mask * x_a + (1 - mask) * x, y, y_a=y_a, lam=lam,
                   mask=mask.expand(b, 1, h, w), x_a=x_a, label_smoothing=label_smoothing)

    @property
    def mixed(self) -> bool:
        return self.mask is not None

    def classification_loss(self, logits: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against the (possibly CutMix-mixed) labels, with the batch's label
        smoothing. ``logits`` may also be log-probabilities: log_softmax leaves a normalised
        log-distribution unchanged."""
        eps = self.label_smoothing
        loss = F.cross_entropy(logits, self.y, label_smoothing=eps)
        if self.mixed:
            loss = ((1 - self.lam) * loss
                    + self.lam * F.cross_entropy(logits, self.y_a, label_smoothing=eps))
        return loss


@dataclass
class StepOutput:
    """What a training step produced: the total loss, the logits for accuracy, and each term."""

    loss: torch.Tensor
    logits: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


class GapFc(nn.Module):
    """Global average pooling, then one linear layer: the baseline output layer, and its CAM."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.fc(feature.mean(dim=(2, 3)))

    def cam(self, feature: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Class activation map (Zhou et al. 2016): sum_k w[c, k] * feature_k, shape (B, h, w)."""
        weights = self.fc.weight[classes]  # (B, C)
        return torch.einsum("bc,bchw->bhw", weights, feature)


class MethodNet(nn.Module):
    """Backbone + GAP-FC: the baseline. Methods subclass it and override what they change."""

    def __init__(self, backbone: Backbone, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = GapFc(backbone.out_channels, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores used for prediction (logits, or log-probabilities)."""
        return self.head(self.backbone(x)[-1])

    def training_loss(self, batch: Batch) -> StepOutput:
        logits = self(batch.x)
        loss = batch.classification_loss(logits)
        return StepOutput(loss, logits, {"ce": loss.detach()})

    def localization_maps(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Raw (un-normalised) maps of shape (B, h, w) for the given class per image."""
        return self.head.cam(self.backbone(x)[-1], classes)

    def deploy(self) -> nn.Module:
        """The inference network; shares parameters with this one."""
        return self

    def reference_network(self) -> Optional[nn.Module]:
        """The network as the authors' code runs it at inference, where that computes more than
        ``deploy()`` (its cost is reported as ``gmacs_reference``); None when they agree."""
        return None


class BaselineDeploy(MethodNet):
    """The plain backbone + GAP-FC that training-only methods deploy (shares their modules)."""

    def __init__(self, backbone: Backbone, head: GapFc) -> None:
        nn.Module.__init__(self)
        self.backbone = backbone
        self.head = head
        self.num_classes = head.fc.out_features
