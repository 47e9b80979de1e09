"""Datasets, registered by name in ``bench.registry.DATASETS``; each loader returns a DataBundle."""
from bench.data import cifar, cub, digits_clutter  # noqa: F401  (registers the datasets)
from bench.data.base import Augment, DataBundle, Split, TensorSplit
from bench.data.folder import FolderSplit

__all__ = ["Augment", "DataBundle", "FolderSplit", "Split", "TensorSplit"]
