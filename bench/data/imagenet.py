"""ImageNet (ILSVRC2012, Russakovsky et al. 2015): 1,000 classes, ~1.28M train / 50,000 val images;
a WSOL benchmark with the validation boxes, as in clovaai/wsolevaluation (Choe et al. 2020).

Layout under the data root (or its ``imagenet/`` or ``ILSVRC/`` child): ``train/<wnid>/*.JPEG`` and
``val/``, either in class folders ``val/<wnid>/*.JPEG`` (torchvision's layout) or flat as the archive
extracts (``val/ILSVRC2012_val_00000001.JPEG``, the reference's layout; labels then come from the
metadata). Class index = the wnid's position in sorted order, as torchvision's ImageFolder and the
reference's metadata number them (val_00000293, a tench, n01440764, is class 0); class names are wnids.

Boxes: a metadata folder (bench/data/metadata.py), option ``test_metadata``, default ``metadata/test``:
clovaai/wsolevaluation's ``metadata/ILSVRC/test/`` holds the boxes of all 50,000 validation images
(copy its ``metadata/ILSVRC/`` to ``metadata/``). Its image ids are paths under the root; the
reference's are flat (``val/ILSVRC2012_val_00000001.JPEG``), so an id ``val/<name>`` is looked up by
name among val/'s class folders. The split's ids (score-map names) are the files' paths. The metadata's
labels must agree with the class folders, and it must list all of val/ (the test split is then its
images, in its order). Without the folder the dataset serves classification only: boxes None, logged.

Holdout (where the WSOL threshold is chosen): option ``holdout_metadata``, default ``metadata/val``, the
reference's name for its train-fullsup split: 10,000 ImageNetV2 images with boxes, ids
``val2/<class>/<hash>.jpeg`` (imagenetv2-threshold0.7.tar.gz extracted as ``val2/``, as its
dataset/prepare_imagenet.sh does). Holdout images under train/ are removed from training. Without the
folder there is no holdout (the WSOL task then uses the classic tau 0.2, logged).

Metadata options are relative to the root unless absolute; an empty value turns one off. A folder named
explicitly must exist; a default one is used where present.

Training: RandomResizedCrop(input_size) and a horizontal flip (``train_crop=random-resized``, the
standard ImageNet recipe, default) or the WSOL reference's resize-then-crop (``resize-crop``).
Evaluation resizes to input_size squared without a centre crop, as the WSOL reference evaluates boxes;
top-1 is thus not measured under torchvision's Resize(256) + CenterCrop(224) protocol.
Normalisation: the ImageNet mean and std.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from bench.data.base import IMAGENET_MEAN, IMAGENET_STD, DataBundle, parse_options
from bench.data.folder import FolderSplit, ImageOptions
from bench.data.metadata import CLASS_LABELS, IMAGE_IDS, WsolMetadata
from bench.data.paths import data_dir, describe_root
from bench.data.wsol_metadata import (METADATA_HELP, MetadataSplit, check_images, exclusive,
                                      read_split, without)
from bench.errors import BenchError
from bench.registry import DATASETS

log = logging.getLogger(__name__)

URL = "https://image-net.org/"
METADATA = "metadata/ILSVRC/ of https://github.com/clovaai/wsolevaluation"
IMAGENETV2_URL = "https://s3-us-west-2.amazonaws.com/imagenetv2public/imagenetv2-threshold0.7.tar.gz"
ROOT_NAMES = ("imagenet", "ILSVRC")  # children of the data root also searched
DEFAULT_TEST = "metadata/test"
DEFAULT_HOLDOUT = "metadata/val"


@dataclass(frozen=True)
class ImageNetOptions(ImageOptions):
    """The options of imagenet (its registry defaults)."""

    train_crop: str = "random-resized"
    test_metadata: str = DEFAULT_TEST
    holdout_metadata: str = DEFAULT_HOLDOUT

    def validate(self) -> None:
        self.check("imagenet")


def find_root(data_root: Path | None) -> Path:
    """The directory holding train/ and val/ (the data root or its imagenet/ or ILSVRC/), or a BenchError."""
    base = data_dir(data_root)
    for root in (base, *(base / name for name in ROOT_NAMES)):
        if (root / "train").is_dir() and (root / "val").is_dir():
            return root
    missing = [f"{name}/" for name in ("train", "val") if not (base / name).is_dir()]
    raise BenchError(f"ImageNet not found: missing {' and '.join(missing)} under {describe_root(data_root)} "
                     f"(nor in its {' or '.join(n + '/' for n in ROOT_NAMES)}); download "
                     f"ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from {URL} (no automatic "
                     f"download), extract them as train/<wnid>/*.JPEG and val/, and for WSOL boxes copy "
                     f"{METADATA} to metadata/ there")


def metadata_folder(root: Path, value: str, default: str, option: str) -> Optional[Path]:
    """The metadata folder of an option: None if off or if the default is absent; else it must exist."""
    folder = root / Path(value).expanduser()
    if value and folder.is_dir():
        return folder
    if value and value != default:
        raise BenchError(f"imagenet option {option}={value!r}: {folder} is not a directory; {METADATA_HELP}")
    return None


def list_images(folder: Path, root: Path, class_to_idx: dict[str, int]) -> tuple[list[str], list[int]]:
    """(paths relative to ``root``, labels) of ``folder/<wnid>/`` images, in ImageFolder's order."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    items = make_dataset(str(folder), class_to_idx, IMG_EXTENSIONS, allow_empty=True)
    return [Path(path).relative_to(root).as_posix() for path, _ in items], [label for _, label in items]


def locate(ids: Sequence[str], val_paths: Sequence[str]) -> list[str]:
    """The files of metadata ids: as given, or for a flat ``val/<name>`` the val/<wnid>/<name> found."""
    by_name = {path.rsplit("/", 1)[-1]: path for path in val_paths}
    return [by_name.get(i[len("val/"):], i) if i.startswith("val/") and i.count("/") == 1 else i
            for i in ids]


def check_labels(meta: WsolMetadata, folder: Path, paths: Sequence[str],
                 class_to_idx: dict[str, int]) -> None:
    """Metadata labels must index the classes and agree with the class folder an image lies in."""
    for image_id, path in zip(meta.image_ids, paths):
        label = meta.class_labels[image_id]
        if label >= len(class_to_idx):
            raise BenchError(f"{folder / CLASS_LABELS}: image {image_id!r} has class {label}, but train/ "
                             f"has {len(class_to_idx)} classes")
        parts = path.split("/")
        if len(parts) == 3 and parts[0] in ("train", "val") and parts[1] in class_to_idx \
                and class_to_idx[parts[1]] != label:
            raise BenchError(f"{folder / CLASS_LABELS}: image {image_id!r} has class {label} but lies in "
                             f"{parts[0]}/{parts[1]}/, class {class_to_idx[parts[1]]} in sorted-wnid order "
                             f"(torchvision's ImageFolder numbering, which the metadata must follow)")


def annotated(root: Path, folder: Path, val_paths: Sequence[str], class_to_idx: dict[str, int],
              hint: str) -> tuple[WsolMetadata, list[str]]:
    """A metadata folder read in full, and the files of its images (checked to exist and agree)."""
    meta = read_split(folder, annotations=True)
    paths = locate(meta.image_ids, val_paths)
    check_images(root, paths, folder / IMAGE_IDS, hint)
    check_labels(meta, folder, paths, class_to_idx)
    return meta, paths


@DATASETS.register("imagenet", "ImageNet ILSVRC2012 from train/<wnid>/ and val/ folders: 1000 classes; "
                   "WSOL boxes and holdout from clovaai/wsolevaluation's metadata", aliases=("ilsvrc",),
                   **dataclasses.asdict(ImageNetOptions()))
def load(data_root: Path | None = None, download: bool = False, **options: object) -> DataBundle:
    """ImageNet from ``data_root``; it cannot be downloaded automatically."""
    opts = parse_options(ImageNetOptions, "imagenet", options)
    root = find_root(data_root)
    classes = sorted(entry.name for entry in os.scandir(root / "train") if entry.is_dir())
    if not classes:
        raise BenchError(f"{root / 'train'} has no class folders; expected train/<wnid>/*.JPEG "
                         f"(ILSVRC2012_img_train.tar from {URL})")
    class_to_idx = {wnid: index for index, wnid in enumerate(classes)}
    unknown = sorted(entry.name for entry in os.scandir(root / "val")
                     if entry.is_dir() and entry.name not in class_to_idx)
    if unknown:
        raise BenchError(f"{root / 'val'} has class folder {unknown[0]}/ that train/ lacks "
                         f"({len(unknown)} such); train/ and val/ must have the same classes")
    train_paths, train_labels = list_images(root / "train", root, class_to_idx)
    counts = np.bincount(train_labels, minlength=len(classes))
    if counts.min() == 0:
        from torchvision.datasets.folder import IMG_EXTENSIONS

        raise BenchError(f"{root / 'train' / classes[int(counts.argmin())]} holds no images "
                         f"({', '.join(IMG_EXTENSIONS)}); every class needs training images")
    val_paths, val_labels = list_images(root / "val", root, class_to_idx)

    test_dir = metadata_folder(root, opts.test_metadata, DEFAULT_TEST, "test_metadata")
    if test_dir is None:
        log.info("imagenet: no box metadata (option test_metadata=%r under %s): classification only, no "
                 "WSOL boxes; copy %s to %s for them", opts.test_metadata, root, METADATA,
                 root / "metadata")
        if not val_paths:
            raise BenchError(f"{root / 'val'} has no images in class folders; a flat val/ (as the archive "
                             f"extracts) takes its labels from the box metadata: copy {METADATA} to "
                             f"{root / 'metadata'}, or sort val/ into val/<wnid>/ folders")
        test = FolderSplit(root, val_paths, val_labels, input_size=opts.input_size, mean=IMAGENET_MEAN,
                           std=IMAGENET_STD, workers=opts.workers)
        test_paths = val_paths
    else:
        meta, test_paths = annotated(root, test_dir, val_paths, class_to_idx,
                                     f"extract ILSVRC2012_img_val.tar from {URL} as val/")
        uncovered = sorted(set(val_paths) - set(test_paths))
        if uncovered:
            raise BenchError(f"{len(uncovered)} images of {root / 'val'} are not in {test_dir / IMAGE_IDS}, "
                             f"e.g. {uncovered[0]}; the metadata must list all of val/ (or set "
                             f"test_metadata= for classification only)")
        test = MetadataSplit(root, test_paths, meta, opts)

    holdout, holdout_paths = None, []
    holdout_dir = metadata_folder(root, opts.holdout_metadata, DEFAULT_HOLDOUT, "holdout_metadata")
    if holdout_dir is None:
        log.info("imagenet: no holdout metadata (option holdout_metadata=%r under %s): the WSOL threshold "
                 "is not chosen on a holdout", opts.holdout_metadata, root)
    else:
        meta, holdout_paths = annotated(
            root, holdout_dir, val_paths, class_to_idx,
            f"the reference's train-fullsup images are ImageNetV2's: extract {IMAGENETV2_URL} as "
            f"{root / 'val2'}, or set holdout_metadata= to go without a holdout")
        exclusive(test_paths, {"holdout": holdout_paths})
        holdout = MetadataSplit(root, holdout_paths, meta, opts)

    keep = without(train_paths, holdout_paths)
    train = FolderSplit(root, [train_paths[i] for i in keep], np.asarray(train_labels)[keep],
                        input_size=opts.input_size, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                        train_transform=opts.train_transform(), workers=opts.workers)
    return DataBundle(name="imagenet", num_classes=len(classes), in_channels=3, input_size=opts.input_size,
                      train=train, test=test, holdout=holdout, class_names=classes)
