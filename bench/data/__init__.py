"""Datasets, registered by name in ``bench.registry.DATASETS``; each loader returns a DataBundle."""
# Importing the dataset modules registers them.
from bench.data import cifar, cub, digits_clutter, imagenet, wsol_metadata  # noqa: F401
from bench.data.base import Augment, DataBundle, Split, TensorSplit
from bench.data.folder import FolderSplit

__all__ = ["Augment", "DataBundle", "FolderSplit", "Split", "TensorSplit"]
