"""A split of image files read by a torch DataLoader, for datasets too large to hold in memory.

Evaluation follows the reference WSOL evaluator (clovaai/wsolevaluation): an image is resized to
``input_size`` x ``input_size`` (no crop), the score map is compared at that size, and ground-truth
boxes given in original pixels are rescaled to it as its ``resize_bbox`` does (``int(x * 224 / w)``).
So ``image_size(i)`` is (input_size, input_size) and ``boxes`` are in those pixels; the original
boxes and sizes stay available as ``original_boxes`` and ``original_size(i)``.

Training augmentation is deterministic given the batches' generator: every image draws its own
seed from it, so results do not depend on the number of loader workers.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from bench.errors import BenchError

if TYPE_CHECKING:  # torchvision is imported where images are read (it takes seconds to import)
    from torchvision import transforms


TRAIN_CROPS = ("resize-crop", "random-resized")


@dataclass(frozen=True)
class ImageOptions:
    """Options shared by the image-file datasets: sizes, training crop, loader workers."""

    input_size: int = 224
    resize_size: int = 256
    train_crop: str = "resize-crop"
    workers: int = 4

    def check(self, dataset: str) -> None:
        if self.train_crop not in TRAIN_CROPS:
            raise BenchError(f"{dataset} option train_crop={self.train_crop!r}; valid: "
                             f"{', '.join(TRAIN_CROPS)}")
        if not 0 < self.input_size <= self.resize_size:
            raise BenchError(f"{dataset} needs 0 < input_size <= resize_size, got {self.input_size}, "
                             f"{self.resize_size}")
        if self.workers < 0:
            raise BenchError(f"{dataset} option workers must be >= 0, got {self.workers}")

    def train_transform(self) -> transforms.Compose:
        """``resize-crop``: resize to resize_size, random input_size crop (the WSOL reference's
        recipe); ``random-resized``: RandomResizedCrop (the ImageNet classification recipe); flip."""
        from torchvision import transforms

        if self.train_crop == "resize-crop":
            crop = [transforms.Resize((self.resize_size, self.resize_size)),
                    transforms.RandomCrop(self.input_size)]
        else:
            crop = [transforms.RandomResizedCrop(self.input_size)]
        return transforms.Compose(crop + [transforms.RandomHorizontalFlip()])


def rescale_box(box: np.ndarray, size: tuple[int, int], new_size: tuple[int, int]) -> np.ndarray:
    """Inclusive (x0, y0, x1, y1) boxes in an image of ``size`` (w, h) mapped to ``new_size``,
    truncated to integers as the reference evaluator does."""
    scale = np.array([new_size[0] / size[0], new_size[1] / size[1]] * 2)
    return (np.asarray(box, dtype=np.float64) * scale).astype(np.int64)


class FolderSplit:
    """Images at ``root / path`` with labels and, optionally, boxes in original pixels ((m, 4)
    inclusive x0, y0, x1, y1 per image). ``ids`` are the relative paths."""

    masks = None
    ignore_masks = None

    def __init__(self, root: Path, paths: Sequence[str], labels: Sequence[int], *, input_size: int,
                 mean: Sequence[float], std: Sequence[float],
                 train_transform: Optional[Callable[[Image.Image], Image.Image]] = None,
                 boxes: Optional[Sequence[np.ndarray]] = None, workers: int = 4) -> None:
        self.root = Path(root)
        self.ids = list(paths)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        self.input_size = input_size
        self.original_boxes = (None if boxes is None else
                               [np.asarray(b, dtype=np.int64).reshape(-1, 4) for b in boxes])
        from torchvision import transforms

        to_tensor = [transforms.ToTensor(), transforms.Normalize(mean, std)]
        self.test_transform = transforms.Compose(
            [transforms.Resize((input_size, input_size))] + to_tensor)
        self.train_transform = (self.test_transform if train_transform is None
                                else transforms.Compose([train_transform] + to_tensor))
        self.workers = workers

    def __len__(self) -> int:
        return len(self.ids)

    def original_size(self, index: int) -> tuple[int, int]:
        """(width, height) of image ``index`` as stored (reads only the file header)."""
        with Image.open(self.root / self.ids[index]) as image:
            return image.size

    def image_size(self, index: int) -> tuple[int, int]:
        return self.input_size, self.input_size

    @functools.cached_property
    def boxes(self) -> Optional[list[np.ndarray]]:
        """Boxes in evaluation pixels (see the module docstring); computed on first use."""
        if self.original_boxes is None:
            return None
        size = (self.input_size, self.input_size)
        return [rescale_box(b, self.original_size(i), size) for i, b in enumerate(self.original_boxes)]

    def batches(self, batch_size: int, *, train: bool, generator: Optional[torch.Generator] = None,
                device: torch.device | str = "cpu",
                shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self)
        if train:
            order = torch.randperm(n, generator=generator)
            seeds = torch.randint(0, 2 ** 62, (n,), generator=generator)
            rank, world = shard
            # As TensorSplit: drop a last partial global batch under torchrun (or one of one image),
            # then keep this rank's 1/world of every global batch.
            keep = n - n % batch_size if world > 1 or n % batch_size == 1 else n
            local = torch.arange(keep)
            local = local[(local % batch_size) % world == rank]
            order, seeds, batch_size = order[local], seeds[local], batch_size // world
        else:
            order, seeds = torch.arange(n), None
        device = torch.device(device)
        # Its own generator keeps the loader from drawing its worker base seed from the global RNG
        # (the images' seeds above make worker seeding irrelevant).
        loader = DataLoader(_Files(self, order, seeds), batch_size=batch_size, shuffle=False,
                            num_workers=self.workers, pin_memory=device.type == "cuda",
                            generator=torch.Generator())
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


class _Files(Dataset):
    """The images of a FolderSplit in ``order``; with ``seeds``, each augmented under its own seed."""

    def __init__(self, split: FolderSplit, order: torch.Tensor, seeds: Optional[torch.Tensor]) -> None:
        self.split, self.order, self.seeds = split, order, seeds

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = int(self.order[k])
        with Image.open(self.split.root / self.split.ids[index]) as image:
            image = image.convert("RGB")
        if self.seeds is None:
            x = self.split.test_transform(image)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(int(self.seeds[k]))
                x = self.split.train_transform(image)
        return x, self.split.labels[index]
