"""Faithfulness of a map to the network it explains: does removing what the map highlights change
the prediction? Every number is about p, the probability of the explained class (``TARGETS``: by
default the class the network predicts for the unmodified image, as RISE explains it; option: the
ground-truth class): the softmax of the network's scores (for a network that outputs
log-probabilities, as SAOL does, that softmax is the probability itself). Maps are (N, H, W)
arrays in [0, 1] at the network input's resolution.

Which function computes each number:
- ``deletion_auc`` and ``insertion_auc`` (Petsiuk et al. 2018, RISE): ``deletion_insertion`` here.
  grad-cam 1.5.7 ships neither (its metrics are ROAD and the confidence changes below), so they are
  written out: pixels are ranked by decreasing map value (ties in row-major pixel order: a stable
  sort of the flattened map); at step k = 0..steps the first n_k = round(k * H * W / steps) pixels,
  all channels, are taken from a substrate (deletion: the image turns into the substrate) or from
  the image (insertion: the substrate turns into the image), p_k is measured, and the AUC is the
  trapezoidal rule of p_k over the fraction n_k / (H * W): in [0, 1]; lower is better for deletion,
  higher for insertion. Substrates (``SUBSTRATES``): ``black``, 0 in input space before
  normalisation, i.e. (0 - mean) / std per channel of the network's input; ``mean``, 0 in the
  normalised input, every channel at the dataset's normalisation mean (a flat image); ``blur``,
  the image blurred by ``torchvision.transforms.functional.gaussian_blur`` with RISE's 11 x 11
  kernel, sigma 5 pixels (reflected borders; RISE's code pads with zeros). Default, as Petsiuk et
  al. define them: deletion towards ``black``, insertion from ``blur`` (RISE's released code
  deletes towards zeros of the normalised input, which is ``mean`` here).
- ``road_morf``, ``road_lerf`` (Rong et al. 2022): ``pytorch_grad_cam.metrics.road``'s
  ``ROADMostRelevantFirstAverage`` and ``ROADLeastRelevantFirstAverage`` with their noisy linear
  imputation (noise 0.01 in normalised units, drawn from torch's generator seeded with the run's
  seed): the mean over ``percentiles`` q of p(imputed) - p(image), where the pixels at or above the
  map's q-th percentile (MoRF: the most relevant 100 - q %) or at or below its (100 - q)-th
  percentile (LeRF: the least relevant 100 - q %) are imputed. ``road_combined`` =
  (LeRF - MoRF) / 2, the formula of the library's ``ROADCombined``, applied to those same two
  averages (``ROADCombined`` itself would impute everything a second time, with new noise).
- ``avg_drop`` and ``increase_in_confidence`` (Chattopadhay et al. 2018, Grad-CAM++):
  ``pytorch_grad_cam.metrics.cam_mult_image``'s ``DropInConfidence`` (max(0, Y - O) per image) and
  ``IncreaseInConfidence`` (1 if O > Y) with Y = p(image) and O = p(image x map), the normalised
  input multiplied by the map (a 0 in the map gives the normalisation mean). Average Drop =
  100 * mean(max(0, Y - O) / Y) (the paper's relative drop), Increase in Confidence =
  100 * mean(1[O > Y]); in percent.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch

SUBSTRATES = {"black": "black, 0 in input space before normalisation (RISE's deletion)",
              "mean": "the normalisation mean (0 in the normalised input)",
              "blur": "Gaussian blur, 11 x 11 kernel, sigma 5 pixels (RISE's insertion)"}
DELETION_TO, INSERTION_FROM, TARGET = "black", "blur", "predicted"  # the defaults, as RISE
TARGETS = {"predicted": "the class the network predicts for the unmodified image (RISE)",
           "label": "the ground-truth class"}
BLUR_KERNEL, BLUR_SIGMA = 11, 5.0


def class_probability(model: torch.nn.Module, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """p: the softmax probability of each image's class in ``classes``, (N,), without gradients."""
    with torch.no_grad():
        probs = torch.softmax(model(x).float(), dim=1)
    return probs[torch.arange(len(classes), device=probs.device), classes]


def substrate(x: torch.Tensor, name: str, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """What the normalised inputs ``x`` turn into (see ``SUBSTRATES``); ``mean`` and ``std``: the
    per-channel normalisation of ``x``."""
    if name == "black":
        m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return ((0.0 - m) / s).expand_as(x).clone()
    if name == "mean":
        return torch.zeros_like(x)
    if name == "blur":
        from torchvision.transforms.functional import gaussian_blur

        return gaussian_blur(x, [BLUR_KERNEL, BLUR_KERNEL], [BLUR_SIGMA, BLUR_SIGMA])
    raise ValueError(f"unknown substrate {name!r}; valid: {', '.join(SUBSTRATES)}")


def pixel_counts(pixels: int, steps: int) -> np.ndarray:
    """n_k = round(k * pixels / steps) for k = 0..steps: pixels removed or inserted at step k."""
    return np.rint(np.linspace(0, pixels, steps + 1)).astype(np.int64)


def deletion_insertion(model: torch.nn.Module, x: torch.Tensor, classes: torch.Tensor,
                       maps: np.ndarray, steps: int, batch_size: int,
                       normalisation: tuple[Sequence[float], Sequence[float]],
                       deletion_to: str = DELETION_TO,
                       insertion_from: str = INSERTION_FROM) -> tuple[np.ndarray, np.ndarray]:
    """(deletion AUC, insertion AUC) per image, as the module docstring defines them;
    ``normalisation``: (mean, std) per channel of ``x``."""
    n, _, height, width = x.shape
    counts = pixel_counts(height * width, steps)
    fractions = counts / (height * width)
    order = np.argsort(-maps.reshape(n, -1), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(height * width), order.shape), axis=1)
    rank = torch.from_numpy(rank.reshape(n, 1, 1, height, width)).to(x.device)
    limits = torch.from_numpy(counts).to(x.device).view(1, -1, 1, 1, 1)
    removed = substrate(x, deletion_to, *normalisation)
    start = substrate(x, insertion_from, *normalisation)
    per = max(1, batch_size // (steps + 1))  # images per forward pass
    deletion, insertion = [], []
    for first in range(0, n, per):
        chunk = slice(first, first + per)
        taken = rank[chunk] < limits  # (b, steps + 1, 1, H, W): pixels moved by step k
        image = x[chunk, None]
        repeated = classes[chunk].repeat_interleave(steps + 1)
        for curves, start_from, end_at in ((deletion, image, removed[chunk, None]),
                                           (insertion, start[chunk, None], image)):
            path = torch.where(taken, end_at, start_from).flatten(0, 1)
            p = class_probability(model, path, repeated).view(-1, steps + 1).cpu().numpy()
            curves.append(np.trapezoid(p, fractions, axis=1))
    return np.concatenate(deletion), np.concatenate(insertion)


def _softmax_targets(classes: torch.Tensor) -> list:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    return [ClassifierOutputSoftmaxTarget(int(c)) for c in classes.tolist()]


def _by_chunks(metric, model: torch.nn.Module, x: torch.Tensor, classes: torch.Tensor,
               maps: np.ndarray, batch_size: int) -> np.ndarray:
    """A grad-cam metric (``metric(input, cams, targets, model)``) over the images in chunks."""
    cams = maps.astype(np.float32)
    return np.concatenate([metric(x[i:i + batch_size], cams[i:i + batch_size],
                                  _softmax_targets(classes[i:i + batch_size]), model)
                           for i in range(0, len(x), batch_size)])


def road(model: torch.nn.Module, x: torch.Tensor, classes: torch.Tensor, maps: np.ndarray,
         percentiles: Sequence[int], seed: int, batch_size: int) -> dict[str, np.ndarray]:
    """ROAD MoRF, LeRF and combined per image (pytorch_grad_cam.metrics.road)."""
    from pytorch_grad_cam.metrics.road import (ROADLeastRelevantFirstAverage,
                                               ROADMostRelevantFirstAverage)

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # the library's imputer hands torch tensors to numpy functions, which NumPy 2 deprecates
        warnings.filterwarnings("ignore", "__array_wrap__ must accept context", DeprecationWarning)
        torch.manual_seed(seed)
        morf = _by_chunks(ROADMostRelevantFirstAverage(list(percentiles)), model, x, classes, maps,
                          batch_size)
        lerf = _by_chunks(ROADLeastRelevantFirstAverage(list(percentiles)), model, x, classes, maps,
                          batch_size)
    return {"road_morf": morf, "road_lerf": lerf, "road_combined": (lerf - morf) / 2}


def confidence_change(model: torch.nn.Module, x: torch.Tensor, classes: torch.Tensor,
                      maps: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """Per image: the relative drop max(0, Y - O) / Y and the increase 1[O > Y], both in percent
    (their means are Average Drop and Increase in Confidence)."""
    from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence

    before = np.concatenate([class_probability(model, x[i:i + batch_size],
                                               classes[i:i + batch_size]).cpu().numpy()
                             for i in range(0, len(x), batch_size)])
    drop = _by_chunks(DropInConfidence(), model, x, classes, maps, batch_size)
    increase = _by_chunks(IncreaseInConfidence(), model, x, classes, maps, batch_size)
    return {"avg_drop": 100.0 * drop / np.maximum(before, np.finfo(np.float32).tiny),
            "increase_in_confidence": 100.0 * increase}
