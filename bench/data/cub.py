"""CUB-200-2011 (Wah et al. 2011): 200 bird species, 5,994 train / 5,794 test images, one box each;
the standard WSOL benchmark, read from the official ``CUB_200_2011/`` tree.

Boxes: ``bounding_boxes.txt`` gives (x, y, width, height); like the reference evaluator's metadata
(clovaai/wsolevaluation, metadata/CUB/*/localization.txt) the box is (x, y, x + width, y + height),
e.g. image 1's (60, 27, 325, 304) becomes (60, 27, 385, 331). Evaluation resizes images and boxes to
``input_size`` as that evaluator does (see bench/data/folder.py).

Training transforms: ``train_crop=resize-crop`` is the reference's (resize to ``resize_size``
squared, random ``input_size`` crop, horizontal flip); ``random-resized`` is torchvision's
RandomResizedCrop(input_size) with a flip. Normalisation: the ImageNet mean and std.

Holdout (the split on which the WSOL threshold is chosen): the first ``holdout_per_class`` training
images of each class in ``images.txt`` order, removed from training. The reference instead uses
train-fullsup, 5 extra images per class collected separately (CUBV2); those are not in the archive.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.data.base import IMAGENET_MEAN, IMAGENET_STD, DataBundle, parse_options
from bench.data.folder import FolderSplit, ImageOptions
from bench.data.paths import data_dir, describe_root
from bench.errors import BenchError
from bench.registry import DATASETS

URL = "https://data.caltech.edu/records/65de6-vp158 (CUB_200_2011.tgz)"
FOLDER = "CUB_200_2011"
TABLES = {  # file -> its columns after the image id
    "images.txt": ("path",),
    "image_class_labels.txt": ("class_id",),
    "train_test_split.txt": ("is_training_image",),
    "bounding_boxes.txt": ("x", "y", "width", "height"),
}
@dataclass(frozen=True)
class CubOptions(ImageOptions):
    """The options of cub200 (its registry defaults): the image options, and the holdout size."""

    holdout_per_class: int = 5

    def validate(self) -> None:
        self.check("cub200")
        if self.holdout_per_class < 0:
            raise BenchError(f"cub200 option holdout_per_class must be >= 0, got {self.holdout_per_class}")


def _read_table(path: Path, columns: tuple[str, ...]) -> dict[int, list[str]]:
    """``<image_id> <columns...>`` lines -> {image_id: values}; the last column may hold spaces."""
    rows: dict[int, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split(maxsplit=len(columns))
            if len(parts) != len(columns) + 1 or not parts[0].isdigit():
                raise BenchError(f"{path} line {number}: expected '<image_id> "
                                 f"{' '.join(f'<{c}>' for c in columns)}', got {line.strip()!r}")
            rows[int(parts[0])] = [p.strip() for p in parts[1:]]
    return rows


def _number(path: Path, image_id: int, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise BenchError(f"{path}: image {image_id} has the non-numeric value {text!r}") from None


def find_root(data_root: Path | None) -> Path:
    """The CUB_200_2011 directory (``data_root`` itself or its child), or a BenchError."""
    root = data_dir(data_root)
    cub = root if (root / "images.txt").is_file() else root / FOLDER
    missing = [name for name in TABLES if not (cub / name).is_file()]
    missing += [] if (cub / "images").is_dir() else ["images/"]
    if missing:
        raise BenchError(f"CUB-200-2011 not found: missing {', '.join(missing)} in {FOLDER}/ under "
                         f"{describe_root(data_root)}; download {URL} (no automatic download) "
                         f"and extract it there (giving {FOLDER}/images.txt, "
                         f"{FOLDER}/images/001.Black_footed_Albatross/..., ...)")
    return cub


def read_metadata(cub: Path) -> tuple[list[str], np.ndarray, np.ndarray, list[np.ndarray]]:
    """Image paths, 0-based labels, is-training flags and original (1, 4) boxes, by image id."""
    tables = {name: _read_table(cub / name, columns) for name, columns in TABLES.items()}
    image_ids = sorted(tables["images.txt"])
    for name, table in tables.items():
        absent = [i for i in image_ids if i not in table]
        if absent:
            raise BenchError(f"{cub / name} has no line for image {absent[0]} of images.txt "
                             f"({len(absent)} images lack one); the archive is incomplete")
    paths = [tables["images.txt"][i][0] for i in image_ids]
    labels = np.array([int(_number(cub / "image_class_labels.txt", i,
                                   tables["image_class_labels.txt"][i][0])) - 1 for i in image_ids])
    training = np.array([tables["train_test_split.txt"][i][0] == "1" for i in image_ids])
    boxes = []
    box_file = cub / "bounding_boxes.txt"
    for i in image_ids:
        x, y, w, h = (_number(box_file, i, v) for v in tables["bounding_boxes.txt"][i])
        boxes.append(np.array([[round(x), round(y), round(x + w), round(y + h)]], dtype=np.int64))
    absent = [p for p in paths if not (cub / "images" / p).is_file()]
    if absent:
        raise BenchError(f"CUB-200-2011 is incomplete: {len(absent)} images listed in images.txt "
                         f"are missing under {cub / 'images'}, e.g. {absent[0]}; extract {URL} again")
    return paths, labels, training, boxes


def holdout_indices(labels: np.ndarray, training: np.ndarray, per_class: int) -> np.ndarray:
    """The first ``per_class`` training images of every class (in image-id order)."""
    chosen: list[int] = []
    taken: dict[int, int] = defaultdict(int)
    for index in np.flatnonzero(training):
        label = int(labels[index])
        if taken[label] < per_class:
            chosen.append(int(index))
            taken[label] += 1
    return np.array(chosen, dtype=np.int64)


@DATASETS.register("cub200", "CUB-200-2011 birds: 200 classes, ~6k train / ~5.8k test images with "
                   "boxes; the standard WSOL benchmark", aliases=("cub",),
                   **dataclasses.asdict(CubOptions()))
def load(data_root: Path | None = None, download: bool = False, **options: object) -> DataBundle:
    """CUB-200-2011 from ``data_root``; it cannot be downloaded automatically."""
    opts = parse_options(CubOptions, "cub200", options)
    cub = find_root(data_root)
    paths, labels, training, boxes = read_metadata(cub)
    num_classes = int(labels.max()) + 1
    class_names = [""] * num_classes
    for path, label in zip(paths, labels):
        class_names[label] = class_names[label] or Path(path).parts[0]
    if labels.min() < 0 or not all(class_names):
        raise BenchError(f"{cub / 'image_class_labels.txt'}: class ids must run 1..{num_classes} "
                         f"with images in every class")

    holdout = holdout_indices(labels, training, opts.holdout_per_class)
    in_train = training.copy()
    in_train[holdout] = False
    if np.bincount(labels[in_train], minlength=num_classes).min() == 0:
        raise BenchError(f"cub200 holdout_per_class={opts.holdout_per_class} leaves a class "
                         f"without training images")

    def split(indices: np.ndarray, train: bool) -> FolderSplit:
        return FolderSplit(cub / "images", [paths[i] for i in indices], labels[indices],
                           input_size=opts.input_size, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                           train_transform=opts.train_transform() if train else None,
                           boxes=[boxes[i] for i in indices], workers=opts.workers)

    return DataBundle(
        name="cub200", num_classes=num_classes, in_channels=3, input_size=opts.input_size,
        train=split(np.flatnonzero(in_train), True), test=split(np.flatnonzero(~training), False),
        holdout=split(holdout, False) if len(holdout) else None, class_names=class_names)
