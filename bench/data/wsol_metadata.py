"""Any dataset described by WSOL metadata folders (the format of clovaai/wsolevaluation, read by
bench/data/metadata.py): ``wsol-metadata[train=DIR,test=DIR,holdout=DIR,root=DIR]``.

One metadata folder per split; its image ids are image paths under the image root (option ``root``,
default the data root). Folder options are relative to the data root unless absolute: ``train`` and
``test`` are required, ``holdout`` (the split on which the WSOL threshold is chosen; the reference
calls it train-fullsup and names its folder ``val``) is optional. Holdout images that are also in the
train folder are removed from training; an image in both test and train or holdout is an error.
Classes: the largest class index over the splits, plus one.

Annotations: the test and holdout folders' localization.txt gives boxes and/or masks (a folder without
one gives a split without them, for classification only); the train folder's is not read. Boxes are
rescaled to the evaluation size as for every image-folder dataset (bench/data/folder.py). Masks are
read from their PNGs when asked for, ``split.masks[i]`` an (input_size, input_size) bool tensor (the
grid of ``image_size(i)``, resized by nearest neighbour and thresholded as the reference does), so a
large split's masks are never all in memory. Mask paths are relative to ``mask_root`` (default: the
metadata folder, bench's convention); clovaai/wsolevaluation's OpenImages metadata names them relative
to its mask root (its image folder), so set ``mask_root`` to that folder there; its empty
image_sizes.txt counts as absent (masks need no sizes). Ignore masks (``split.ignore_masks``) leave
their pixels out of PxAP, as the reference does. Image and mask files are checked at load.

Training transforms as cub200 (``train_crop=resize-crop``, the reference's recipe, by default);
normalisation with the ImageNet mean and std.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from bench.data.base import IMAGENET_MEAN, IMAGENET_STD, DataBundle, parse_options
from bench.data.folder import FolderSplit, ImageOptions
from bench.data.metadata import (IMAGE_IDS, LOCALIZATION, WsolMetadata, check_mask_files,
                                 read_labels, read_masks, read_metadata)
from bench.data.paths import data_dir, describe_root
from bench.errors import BenchError
from bench.registry import DATASETS

log = logging.getLogger(__name__)

METADATA_HELP = ("a WSOL metadata folder holds image_ids.txt, class_labels.txt and, for boxes or masks, "
                 "image_sizes.txt and localization.txt (see clovaai/wsolevaluation's metadata/ folders)")


@dataclass(frozen=True)
class WsolMetadataOptions(ImageOptions):
    """The options of wsol-metadata (its registry defaults)."""

    root: str = ""
    train: str = "train"
    test: str = "test"
    holdout: str = ""
    mask_root: str = ""

    def validate(self) -> None:
        self.check("wsol-metadata")
        if not self.train or not self.test:
            raise BenchError("wsol-metadata needs the options train and test (metadata folders)")


class MetadataMasks:
    """The foreground (or, with ``ignore``, the ignore-region) masks of a split's images on a
    size x size grid, read on access; an image without an ignore mask gives None."""

    def __init__(self, meta: WsolMetadata, ids: Sequence[str], size: int, ignore: bool = False) -> None:
        self.meta, self.ids, self.size, self.ignore = meta, list(ids), size, ignore

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Optional[torch.Tensor]:
        foreground, ignore = read_masks(self.meta, self.ids[index], (self.size, self.size))
        mask = ignore if self.ignore else foreground
        return None if mask is None else torch.from_numpy(mask)


class MetadataSplit(FolderSplit):
    """Image files with the labels, boxes and masks of a metadata folder; ``paths`` are the files of
    ``meta.image_ids`` (under ``root``), in that order. With ``train``, augmented by the options' crop."""

    def __init__(self, root: Path, paths: Sequence[str], meta: WsolMetadata, opts: ImageOptions,
                 train: bool = False) -> None:
        ids = meta.image_ids
        super().__init__(root, paths, [meta.class_labels[i] for i in ids], input_size=opts.input_size,
                         mean=IMAGENET_MEAN, std=IMAGENET_STD,
                         train_transform=opts.train_transform() if train else None,
                         boxes=[meta.boxes[i] for i in ids] if meta.boxes else None,
                         workers=opts.workers)
        self.masks = MetadataMasks(meta, ids, opts.input_size) if meta.masks else None
        has_ignore = any(entry.ignore for entry in meta.masks.values())
        self.ignore_masks = MetadataMasks(meta, ids, opts.input_size, ignore=True) if has_ignore else None


def read_split(folder: Path, annotations: bool, mask_root: Optional[Path] = None) -> WsolMetadata:
    """A metadata folder: with ``annotations`` and a localization.txt, read and validated in full (mask
    paths then resolve under ``mask_root``, default the folder, and must exist); else ids and labels."""
    if annotations and (folder / LOCALIZATION).is_file():
        meta = read_metadata(folder, mask_root)
        check_mask_files(meta, folder / LOCALIZATION)
        return meta
    ids, labels = read_labels(folder)
    return WsolMetadata(folder, list(ids), {i: labels[i] for i in ids})


def check_images(root: Path, paths: Sequence[str], listed_in: Path, hint: str) -> None:
    """A BenchError unless every ``root / path`` is a file."""
    missing = [p for p in paths if not (root / p).is_file()]
    if missing:
        raise BenchError(f"{len(missing)} of the {len(paths)} images listed in {listed_in} are missing "
                         f"under {root}, e.g. {missing[0]}; {hint}")


def exclusive(test: Sequence[str], others: dict[str, Sequence[str]]) -> None:
    """A BenchError if a test image is also in another split (its numbers would not be test numbers)."""
    test_set = set(test)
    for name, paths in others.items():
        shared = [p for p in paths if p in test_set]
        if shared:
            raise BenchError(f"{len(shared)} images are in both the test and the {name} split, e.g. "
                             f"{shared[0]}; the splits must be disjoint")


def without(paths: Sequence[str], removed: Sequence[str]) -> np.ndarray:
    """Indices of ``paths`` not in ``removed``; logs how many holdout images left training."""
    gone = set(removed)
    keep = np.array([i for i, p in enumerate(paths) if p not in gone], dtype=np.int64)
    if len(keep) < len(paths):
        log.info("%d holdout images removed from the training split", len(paths) - len(keep))
    return keep


@DATASETS.register("wsol-metadata", "any dataset given as WSOL metadata folders (clovaai/wsolevaluation "
                   "format) per split plus an image root; boxes and/or masks",
                   **dataclasses.asdict(WsolMetadataOptions()))
def load(data_root: Path | None = None, download: bool = False, **options: object) -> DataBundle:
    """The splits of metadata folders under ``data_root``; nothing is downloaded."""
    opts = parse_options(WsolMetadataOptions, "wsol-metadata", options)
    base = data_dir(data_root)
    image_root = base / Path(opts.root).expanduser()
    mask_root = base / Path(opts.mask_root).expanduser() if opts.mask_root else None
    folders = {name: base / Path(value).expanduser() for name, value in
               (("train", opts.train), ("test", opts.test), ("holdout", opts.holdout)) if value}
    missing = [f"{name}={folder}" for name, folder in folders.items() if not folder.is_dir()]
    if not image_root.is_dir():
        missing.append(f"root={image_root}")
    if missing:
        raise BenchError(f"wsol-metadata: not found: {', '.join(missing)} (relative paths are under the "
                         f"data root {describe_root(data_root)}); {METADATA_HELP}")
    metas = {name: read_split(folder, name != "train", mask_root) for name, folder in folders.items()}
    hint = "give the image root as option root (image ids are paths under it)"
    for name, meta in metas.items():
        check_images(image_root, meta.image_ids, folders[name] / IMAGE_IDS, hint)
    holdout_ids = metas["holdout"].image_ids if "holdout" in metas else []
    exclusive(metas["test"].image_ids, {"train": metas["train"].image_ids, "holdout": holdout_ids})
    train_meta = metas["train"]
    keep = [train_meta.image_ids[i] for i in without(train_meta.image_ids, holdout_ids)]
    if not keep:
        raise BenchError(f"wsol-metadata: every image of {folders['train'] / IMAGE_IDS} is in the holdout")
    metas["train"] = WsolMetadata(train_meta.root, keep, {i: train_meta.class_labels[i] for i in keep})
    num_classes = 1 + max(max(meta.class_labels.values()) for meta in metas.values())

    def split(name: str) -> MetadataSplit:
        return MetadataSplit(image_root, metas[name].image_ids, metas[name], opts, train=name == "train")

    return DataBundle(name="wsol-metadata", num_classes=num_classes, in_channels=3,
                      input_size=opts.input_size, train=split("train"), test=split("test"),
                      holdout=split("holdout") if "holdout" in metas else None)
