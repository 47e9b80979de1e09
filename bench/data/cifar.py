"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) read from the official python-pickle archives.

Layout under the data root: ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` and
``cifar-100-python/{train, test, meta}`` (fine labels). Images are held as uint8 (N, 3, 32, 32)
tensors; training augmentation is the standard 4-pixel translation and horizontal flip.
Normalisation uses the per-channel mean and standard deviation of each training set (the widely
used constants, e.g. 0.2470 rather than the often-copied 0.2023 for CIFAR-10 red). No boxes, so
no holdout split. ``download=True`` fetches the archive with torchvision into the data root.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.data.base import Augment, DataBundle, TensorSplit
from bench.data.paths import data_dir, describe_root
from bench.errors import BenchError
from bench.registry import DATASETS


@dataclass(frozen=True)
class CifarFormat:
    """Where one CIFAR variant keeps its files and what its pickles are called."""

    title: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: bytes
    names_key: bytes
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    url: str
    torchvision_name: str  # the torchvision.datasets class that downloads it


CIFAR10 = CifarFormat(
    "CIFAR-10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
    "batches.meta", b"labels", b"label_names", 10,
    (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "CIFAR10")
CIFAR100 = CifarFormat(
    "CIFAR-100", "cifar-100-python", ("train",), ("test",), "meta", b"fine_labels",
    b"fine_label_names", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "CIFAR100")


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        try:
            return pickle.load(f, encoding="bytes")
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise BenchError(f"{path} is not a readable CIFAR pickle ({exc}); delete it and "
                             f"extract the archive again") from None


def _read_batches(folder: Path, files: tuple[str, ...],
                  fmt: CifarFormat) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated uint8 (N, 3, 32, 32) images and int64 labels of ``files``."""
    images, labels = [], []
    for name in files:
        batch = _unpickle(folder / name)
        if b"data" not in batch or fmt.label_key not in batch:
            raise BenchError(f"{folder / name} lacks the keys b'data' and {fmt.label_key!r} of a "
                             f"{fmt.title} batch")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(batch[fmt.label_key]):
            raise BenchError(f"{folder / name}: expected data of shape (N, 3072) and N labels, got "
                             f"{data.shape} and {len(batch[fmt.label_key])} labels")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[fmt.label_key], dtype=np.int64))
    label_array = np.concatenate(labels)
    if label_array.min() < 0 or label_array.max() >= fmt.num_classes:
        raise BenchError(f"{folder}: labels outside 0..{fmt.num_classes - 1}")
    return np.concatenate(images), label_array


def _download(fmt: CifarFormat, root: Path) -> None:
    import torchvision

    try:
        getattr(torchvision.datasets, fmt.torchvision_name)(str(root), train=True, download=True)
    except (OSError, RuntimeError) as exc:
        raise BenchError(f"could not download {fmt.title} from {fmt.url} into {root}: {exc}") from None


def load_cifar(fmt: CifarFormat, data_root: Path | None, download: bool) -> DataBundle:
    """One CIFAR variant as a DataBundle; a BenchError names any missing file and how to get it."""
    root = data_dir(data_root)
    folder = root / fmt.folder
    needed = fmt.train_files + fmt.test_files + (fmt.meta_file,)
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing and download:
        _download(fmt, root)
        missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise BenchError(f"{fmt.title} not found: missing {', '.join(missing)} in {fmt.folder}/ under "
                         f"{describe_root(data_root)}; pass --download, or download {fmt.url} and "
                         f"extract it there (giving {fmt.folder}/{needed[0]}, ...)")
    meta = _unpickle(folder / fmt.meta_file)
    if len(meta.get(fmt.names_key, ())) != fmt.num_classes:
        raise BenchError(f"{folder / fmt.meta_file} lacks {fmt.num_classes} class names under "
                         f"{fmt.names_key!r}")
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[fmt.names_key]]
    splits = {}
    for split, files in (("train", fmt.train_files), ("test", fmt.test_files)):
        images, labels = _read_batches(folder, files, fmt)
        splits[split] = TensorSplit(
            torch.from_numpy(images), torch.from_numpy(labels), fmt.mean, fmt.std,
            [f"{split}/{i:06d}.png" for i in range(len(labels))],
            augment=Augment(pad=4, flip=0.5) if split == "train" else Augment())
    return DataBundle(name=fmt.title.lower().replace("-", ""), num_classes=fmt.num_classes,
                      in_channels=3, input_size=32, train=splits["train"], test=splits["test"],
                      holdout=None, class_names=class_names)


@DATASETS.register("cifar10", "CIFAR-10: 50k train / 10k test 32x32 colour images, 10 classes")
def load_cifar10(data_root: Path | None = None, download: bool = False) -> DataBundle:
    return load_cifar(CIFAR10, data_root, download)


@DATASETS.register("cifar100", "CIFAR-100: 50k train / 10k test 32x32 colour images, 100 classes")
def load_cifar100(data_root: Path | None = None, download: bool = False) -> DataBundle:
    return load_cifar(CIFAR100, data_root, download)
