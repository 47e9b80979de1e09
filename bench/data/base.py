"""What every dataset provides: labelled splits that yield normalised batches, with boxes and masks
where known (for WSOL).

Small datasets are ``TensorSplit``s: uint8 images held as one tensor (on the training device) and
augmented on tensors in whole batches, so the data pipeline never holds the model back.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Protocol, Sequence, TypeVar

import numpy as np
import torch

from bench.errors import BenchError

Options = TypeVar("Options")

# torchvision's ImageNet normalisation, used by every dataset of natural RGB photographs.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def parse_options(cls: type[Options], dataset: str, options: dict[str, Any]) -> Options:
    """A dataset's options dataclass from keyword options; unknown names are a BenchError, and the
    dataclass's ``validate()`` (if any) checks the values."""
    try:
        parsed = cls(**options)
    except TypeError:
        valid = ", ".join(f.name for f in dataclasses.fields(cls))
        raise BenchError(f"unknown option in {sorted(options)} for dataset {dataset}; "
                         f"valid: {valid}") from None
    if hasattr(parsed, "validate"):
        parsed.validate()
    return parsed


class Split(Protocol):
    """A dataset split: labels for every image, boxes/masks where annotated, and batches."""

    labels: torch.Tensor  # (N,) int64
    ids: list[str]  # one id per image, e.g. "test/00042.png" (score maps are saved as <id>.npy)
    boxes: Optional[list[np.ndarray]]  # per image, (m, 4) int x0, y0, x1, y1, inclusive pixels
    # Per image an (H, W) bool foreground mask at ``image_size``, if the dataset has masks: an
    # (N, H, W) tensor for in-memory splits, or a lazily read sequence for folder datasets.
    masks: Optional[Sequence[torch.Tensor]]
    # Per image an (H, W) bool mask of pixels PxAP leaves out (OpenImages' ignore regions: never
    # foreground), or None for an image without one; None for a split without ignore regions.
    ignore_masks: Optional[Sequence[Optional[torch.Tensor]]]

    def __len__(self) -> int: ...

    def image_size(self, index: int) -> tuple[int, int]:
        """(width, height) of image ``index`` in the pixels its boxes and masks are given in."""
        ...

    def batches(self, batch_size: int, *, train: bool, generator: Optional[torch.Generator] = None,
                device: torch.device | str = "cpu",
                shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) on ``device``; with ``train``, shuffled by ``generator`` and augmented.
        Without ``train``, in index order and un-augmented (WSOL relies on that order).
        ``shard=(rank, world)`` with ``train``: this rank's disjoint part of every global batch,
        all ranks drawing the same order from identically seeded generators; a last partial
        global batch is dropped so that every rank takes the same number of equal steps (and a
        final batch of one image is always dropped: BatchNorm cannot train on one sample)."""
        ...


@dataclass
class Augment:
    """Train-time tensor augmentation: random translation by up to ``pad`` pixels (zero fill,
    as pad-and-random-crop does), and horizontal flips with probability ``flip``."""

    pad: int = 0
    flip: float = 0.0

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        b, _, h, w = x.shape
        if self.pad:
            p = self.pad
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(x.device)
            dx = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(x.device)
            rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
            cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
            batch = torch.arange(b, device=x.device)[:, None, None, None]
            chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
            x = padded[batch, chan, rows, cols]
        if self.flip:
            flip = (torch.rand(b, generator=generator) < self.flip).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x


@dataclass
class TensorSplit:
    """A split held in memory as one uint8 tensor (N, C, H, W)."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: Sequence[float]
    std: Sequence[float]
    ids: list[str]
    boxes: Optional[list[np.ndarray]] = None
    masks: Optional[torch.Tensor] = None
    augment: Augment = field(default_factory=Augment)
    ignore_masks: Optional[Sequence[Optional[torch.Tensor]]] = None

    def __len__(self) -> int:
        return len(self.labels)

    def image_size(self, index: int) -> tuple[int, int]:
        return int(self.images.shape[3]), int(self.images.shape[2])

    def to(self, device: torch.device | str) -> "TensorSplit":
        """The same split with its images and labels moved to ``device`` (once, before training)."""
        return dataclasses.replace(self, images=self.images.to(device), labels=self.labels.to(device))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
        return (x.float() / 255.0 - mean) / std

    def batches(self, batch_size: int, *, train: bool, generator: Optional[torch.Generator] = None,
                device: torch.device | str = "cpu",
                shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images, labels = self.images.to(device), self.labels.to(device)
        n = len(labels)
        if not train:
            for start in range(0, n, batch_size):
                yield self.normalize(images[start:start + batch_size]), labels[start:start + batch_size]
            return
        rank, world = shard
        order = torch.randperm(n, generator=generator).to(device)
        # Under torchrun the last partial global batch is dropped; alone, only a 1-image batch
        # (BatchNorm cannot train on a single sample).
        stop = n - n % batch_size if world > 1 or n % batch_size == 1 else n
        for start in range(0, stop, batch_size):
            idx = order[start:start + batch_size]
            # Augment the whole global batch, so every rank consumes the generator alike.
            x = self.augment(images[idx], generator)[rank::world]
            yield self.normalize(x), labels[idx][rank::world]


@dataclass
class DataBundle:
    """A dataset as the suite sees it: classes, channels, and its splits.

    ``holdout`` is a box-annotated split disjoint from ``test`` on which the WSOL threshold is chosen
    (like train-fullsup in Choe et al. 2020); ``None`` where the dataset has none.
    """

    name: str
    num_classes: int
    in_channels: int
    input_size: int  # side of the (square) network input, in pixels
    train: Split
    test: Split
    holdout: Optional[Split] = None
    class_names: list[str] = field(default_factory=list)
