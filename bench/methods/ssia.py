"""SSIA, Self-Supervised Implicit Attention (Wu, Gong, Zhang 2022, Sec. 2): training-only blocks in
which the lower stage predicts the higher stage's spatial and channel "macro-perception".

One SSIA block per pair of consecutive stages (the paper's "cascaded" scheme, Table 2): stage l is
the prediction side, stage l+1 the signal side, so an L-stage backbone gets L-1 blocks. Per block:
- signal (no gradient): G_s = Norm(channel-mean map of X_{l+1}), G_c = Norm(spatial-mean vector of
  X_{l+1}); Norm standardises per sample over that dimension (mean 0, biased std 1, eps 1e-5 under
  the root; the paper's "divide the variance" read as the standard deviation, as METHODS.md says);
- weak predictor (MPP): F_s = MLP_s(channel-mean map of X_l, resized, flattened),
  F_c = MLP_c(spatial-mean vector of X_l); each MLP is Linear(no bias) -> BN -> ReLU -> Linear with
  ``hidden`` (64) hidden units (the paper: "a single hidden layer (with a batch normalization
  layer)"; the BN sits after the hidden linear layer, before its ReLU, as in the SimSiam predictor
  the paper relates SSIA to). The descriptors are not normalised (the paper's step 2 is optional;
  the hidden BN already removes their scale);
- loss (Eq. 7-8): per sample, the mean of (F - G)^2 over positions k with eta < |G(k)| < 10, with
  1e-8 added to the count; averaged over the batch. Block loss = lambda_s L_s + lambda_c L_c.
Total = CE + ``weight`` * sum_n block_weights[n] * block loss n (Sec. 3.1: 0.2 and 1, 2, 3 from low
to high). A 3-stage CIFAR net has 2 blocks and uses the first two block weights (1, 2).

Descriptors are taken from the stage outputs the backbone returns: after the blocks' final ReLU in
ResNets; in pre-activation WRNs the residual sums of stages 1..L-1 and BN-ReLU(X_L) for the last.

Spatial resolution: MLP_s has fixed input and output sizes, so both the lower stage's
channel-mean map and the signal's channel-mean map are resized bilinearly to a fixed ``grid`` x
``grid`` per block (the paper resizes descriptors with bilinear interpolation and, in its Table 2
runs, the spatial signals to 28/14/7 for ResNet-50). ``grid=auto`` (default) is resolved when the
run is planned, from the input size: block n's grid is the side of stage n+1's output, i.e. the
signal's native size, which needs no resizing of the signal: 16+8 for 32x32 inputs on CIFAR nets,
28+14+7 for 224x224 inputs on ImageNet ResNets (the paper's setting). The resolved grid is stored
with the run; ``grid=a+b+c`` fixes it.

Variants: ``spatial=false`` (channel-only) and ``channel=false`` (spatial-only); the paper's
ablation used lambda_s, lambda_c = 1, 0 / 0, 3 / 0.5, 1.5 for spatial / channel / both.
The blocks exist only in training: ``deploy()`` is the plain baseline, the map is its CAM.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import BenchError
from bench.methods.base import (BackboneFactory, BaselineDeploy, Batch, BuildContext, MethodNet,
                                StepOutput)
from bench.models.common import Backbone
from bench.registry import METHODS, Auto
from bench.search import floats

NORM_EPS = 1e-5  # added to the variance in Norm
COUNT_EPS = 1e-8  # the paper's epsilon in the denominator of Eq. 7
SIGNAL_MAX = 10.0  # the upper bound of valid |G| (Eq. 8)


class WeakPredictor(nn.Sequential):
    """The MPP's MLP: one hidden layer of ``hidden`` units with BN (Linear-BN-ReLU-Linear)."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 64) -> None:
        super().__init__(nn.Linear(in_features, hidden, bias=False), nn.BatchNorm1d(hidden),
                         nn.ReLU(inplace=True), nn.Linear(hidden, out_features))


def standardize(v: torch.Tensor) -> torch.Tensor:
    """Norm of Eqs. 1-2: per sample, subtract the mean and divide by the std over the last dim."""
    return F.layer_norm(v, v.shape[-1:], eps=NORM_EPS)


def masked_mse(pred: torch.Tensor, signal: torch.Tensor, eta: float) -> torch.Tensor:
    """Eq. 7: per sample, mean of (pred - signal)^2 over positions with eta < |signal| < 10;
    then the batch mean. ``pred`` and ``signal`` are (B, N)."""
    valid = ((signal.abs() > eta) & (signal.abs() < SIGNAL_MAX)).to(pred.dtype)
    per_sample = (valid * (pred - signal) ** 2).sum(1) / (valid.sum(1) + COUNT_EPS)
    return per_sample.mean()


def spatial_descriptor(x: torch.Tensor, grid: int) -> torch.Tensor:
    """Channel-mean map of ``x`` resized bilinearly to ``grid`` x ``grid``, flattened: (B, grid^2)."""
    mean_map = x.mean(dim=1, keepdim=True)
    if mean_map.shape[-2:] != (grid, grid):
        mean_map = F.interpolate(mean_map, size=(grid, grid), mode="bilinear", align_corners=False)
    return mean_map.flatten(1)


class SSIABlock(nn.Module):
    """One SSIA block: predicts the signal side's macro-perception from the prediction side and
    returns the masked squared errors, by signal ("spatial", "channel")."""

    def __init__(self, low_channels: int, high_channels: int, grid: int, hidden: int = 64,
                 spatial: bool = True, channel: bool = True) -> None:
        super().__init__()
        self.grid = grid
        self.spatial = WeakPredictor(grid * grid, grid * grid, hidden) if spatial else None
        self.channel = WeakPredictor(low_channels, high_channels, hidden) if channel else None

    def forward(self, low: torch.Tensor, high: torch.Tensor, eta: float) -> dict[str, torch.Tensor]:
        high = high.detach()  # stop-gradient on the signal side
        losses = {}
        if self.spatial is not None:
            signal = standardize(spatial_descriptor(high, self.grid))
            losses["spatial"] = masked_mse(self.spatial(spatial_descriptor(low, self.grid)), signal, eta)
        if self.channel is not None:
            signal = standardize(high.mean(dim=(2, 3)))
            losses["channel"] = masked_mse(self.channel(low.mean(dim=(2, 3))), signal, eta)
        return losses


class SSIANet(MethodNet):
    """Backbone + GAP-FC trained with cascaded SSIA blocks (stage l predicts stage l+1)."""

    def __init__(self, backbone: Backbone, num_classes: int, lambda_s: float = 1.0,
                 lambda_c: float = 3.0, eta: float = 0.5, weight: float = 0.2,
                 block_weights: tuple[float, ...] = (1.0, 2.0, 3.0), spatial: bool = True,
                 channel: bool = True, hidden: int = 64, grid: tuple[int, ...] = (16, 8, 4)) -> None:
        super().__init__(backbone, num_classes)
        blocks = len(backbone.stage_channels) - 1
        if not (spatial or channel):
            raise BenchError("ssia needs spatial=true or channel=true (or both)")
        if hidden <= 0 or eta < 0:
            raise BenchError(f"ssia: hidden must be positive and eta >= 0, got hidden={hidden}, eta={eta}")
        for name, values in (("block_weights", block_weights), ("grid", grid)):
            if len(values) < blocks:
                raise BenchError(f"ssia option {name} needs one value per SSIA block ({blocks} on this "
                                 f"{blocks + 1}-stage backbone), got {len(values)}")
        if any(g <= 0 for g in grid[:blocks]):
            raise BenchError(f"ssia option grid must hold positive sizes, got {grid}")
        self.lambdas = {"spatial": lambda_s, "channel": lambda_c}
        self.eta, self.weight = eta, weight
        self.block_weights = tuple(block_weights[:blocks])
        chans = backbone.stage_channels
        self.ssia = nn.ModuleList(SSIABlock(chans[n], chans[n + 1], grid[n], hidden, spatial, channel)
                                  for n in range(blocks))

    def ssia_losses(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The weighted SSIA loss by signal kind: weight * sum_n w_n * lambda * L_n (not detached)."""
        totals: dict[str, torch.Tensor] = {}
        for n, block in enumerate(self.ssia):
            for kind, loss in block(features[n], features[n + 1], self.eta).items():
                term = self.weight * self.block_weights[n] * self.lambdas[kind] * loss
                totals[kind] = totals[kind] + term if kind in totals else term
        return {f"ssia_{kind}": value for kind, value in totals.items()}

    def training_loss(self, batch: Batch) -> StepOutput:
        features = self.backbone(batch.x)
        logits = self.head(features[-1])
        terms = {"ce": batch.classification_loss(logits), **self.ssia_losses(features)}
        return StepOutput(sum(terms.values()), logits, {k: v.detach() for k, v in terms.items()})

    def deploy(self) -> nn.Module:
        return BaselineDeploy(self.backbone, self.head)


def resolve(options: dict[str, Any], ctx: BuildContext) -> dict[str, Any]:
    """``grid=auto``: per block, the side of the signal stage's output at the run's input size."""
    if isinstance(options["grid"], Auto):
        options = dict(options, grid=tuple(ctx.stage_sizes[1:]))
    return options


@METHODS.register("ssia", "training-only: lower stages predict the next stage's spatial/channel "
                  "statistics (SSIA blocks); deploys the baseline", resolve=resolve,
                  lambda_s=1.0, lambda_c=3.0, eta=0.5, weight=0.2, block_weights=(1.0, 2.0, 3.0),
                  spatial=True, channel=True, hidden=64, grid=Auto((0,)), order=60,
                  search={"weight": floats(0.05, 1.0, log=True), "eta": floats(0.1, 1.0)})
def build(make_backbone: BackboneFactory, num_classes: int, **options) -> MethodNet:
    return SSIANet(make_backbone(), num_classes, **options)
