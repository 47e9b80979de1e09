"""digits-clutter, the default dataset: real handwritten digits on a cluttered canvas, with exact
boxes and masks (it is generated), built in about a second with no download.

Sources are scikit-learn's copy of the UCI optical-recognition digits (1,797 8x8 images, values
0..16). Splits are by SOURCE digit, stratified by class (60/10/30 % of each class to train / holdout
/ test); clutter is cut only from the split's own sources, so no source digit is seen by two
splits. ``holdout`` is the box-annotated split for choosing the WSOL threshold (the role of
train-fullsup in Choe et al. 2020). Each train source is placed ``copies`` times, each holdout/test
source ``eval_copies`` times.

One image: the digit is rescaled to a side drawn uniformly from [min_size, max_size] pixels
(linear interpolation, anti-aliased when shrinking, zero outside the digit) at a uniform sub-pixel
position inside the canvas. Its mask is its own rendered intensity above ``MASK_THRESHOLD`` (before
clutter); its box is the tight box of that mask (x0, y0, x1, y1 inclusive). Then ``clutter``
fragments: each a random crop (3..6 source pixels a side) of ANOTHER source digit of the split,
rescaled like an object, placed with the crop inside the canvas and multiplied by
``clutter_contrast``. The digit is composited on top with max(), Gaussian noise of standard
deviation ``noise`` (intensity in [0, 1]) is added everywhere, and the image is quantised to uint8.

Difficulty: the defaults are set so that the GAP-FC baseline (ResNet-8, 8
epochs, SGD lr 0.1 cosine, batch 128) reaches about 86 % test top-1, clearly below the ceiling
(clutter_contrast 0.8: 76.5 %; clutter=6, clutter_contrast=0.6: 94.7 %).

Generated splits are cached as .npz under the data root (``bench.data.paths.data_dir``), keyed by a
hash of every option and ``FORMAT_VERSION``; an unreadable or mismatching cache file is regenerated.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.data.base import Augment, DataBundle, TensorSplit, parse_options
from bench.data.paths import data_dir
from bench.errors import BenchError
from bench.registry import DATASETS

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump whenever generation changes, so old cache files are not reused
SOURCE = 8  # side of a source digit, pixels
SPLITS = ("train", "holdout", "test")
SPLIT_FRACTIONS = (0.6, 0.1, 0.3)  # of each class's sources; the test split takes the rest
MASK_THRESHOLD = 0.2  # a rendered digit pixel (intensity in [0, 1]) above this is foreground
FRAGMENT_SIDES = (3, 6)  # inclusive range of a clutter crop's side, in source pixels
ARRAYS = ("images", "labels", "boxes", "masks", "sources", "clutter_sources", "sizes")


@dataclass(frozen=True)
class ClutterConfig:
    """Every option of digits-clutter (its registry defaults); all of them key the cache."""

    canvas: int = 32
    min_size: int = 12
    max_size: int = 22
    clutter: int = 8
    clutter_contrast: float = 0.7
    noise: float = 0.05
    copies: int = 4
    eval_copies: int = 2
    seed: int = 0

    def validate(self) -> None:
        if not 4 <= self.min_size <= self.max_size <= self.canvas:
            raise BenchError(f"digits-clutter needs 4 <= min_size <= max_size <= canvas, got "
                             f"min_size={self.min_size}, max_size={self.max_size}, "
                             f"canvas={self.canvas}")
        if self.clutter < 0 or self.copies < 1 or self.eval_copies < 1:
            raise BenchError(f"digits-clutter needs clutter >= 0, copies >= 1, eval_copies >= 1, "
                             f"got {self.clutter}, {self.copies}, {self.eval_copies}")
        if not 0.0 <= self.clutter_contrast <= 1.0 or self.noise < 0:
            raise BenchError(f"digits-clutter needs clutter_contrast in [0, 1] and noise >= 0, "
                             f"got {self.clutter_contrast}, {self.noise}")

    def key(self) -> str:
        """Canonical text of the options and format version, hashed into the cache file name."""
        return json.dumps({"format": FORMAT_VERSION, **dataclasses.asdict(self)}, sort_keys=True)


def source_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 UCI digits as float32 (N, 8, 8) intensities in [0, 1], and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def split_sources(labels: np.ndarray, seed: int) -> list[np.ndarray]:
    """Disjoint sorted source indices for train / holdout / test, stratified by class."""
    rng = np.random.default_rng([seed, 0])
    parts: list[list[np.ndarray]] = [[], [], []]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_train = round(SPLIT_FRACTIONS[0] * len(idx))
        n_holdout = round(SPLIT_FRACTIONS[1] * len(idx))
        for part, chunk in zip(parts, np.split(idx, [n_train, n_train + n_holdout])):
            part.append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def resampling_weights(size: np.ndarray, offset: np.ndarray, canvas: int) -> np.ndarray:
    """(N, canvas, 8) matrices mapping a source axis onto the canvas: a digit of side ``size``
    starting at ``offset``, linear interpolation (widened to anti-alias when shrinking), zero
    outside the source."""
    scale = (SOURCE / size)[:, None, None]  # source pixels per canvas pixel
    centres = np.arange(canvas)[None, :, None] + 0.5 - offset[:, None, None]
    u = centres * scale - 0.5  # source coordinate of each canvas pixel centre
    width = np.maximum(scale, 1.0)
    reach = int(np.ceil(width.max()))
    near = np.floor(u) + np.arange(-reach, reach + 2)  # every integer the kernel reaches from u
    total = _triangle(u - near, width).sum(-1, keepdims=True)  # over source and padding alike
    return (_triangle(u - np.arange(SOURCE), width) / total).astype(np.float32)


def _triangle(distance: np.ndarray, width: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - np.abs(distance) / width, 0.0, None)


def render(sources: np.ndarray, size: np.ndarray, x: np.ndarray, y: np.ndarray,
           canvas: int) -> np.ndarray:
    """Each (8, 8) source drawn with side ``size`` and top-left corner (x, y): (N, canvas, canvas)."""
    rows = resampling_weights(size, y, canvas)
    cols = resampling_weights(size, x, canvas)
    return rows @ sources @ cols.transpose(0, 2, 1)


def tight_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, 4) inclusive x0, y0, x1, y1 of each non-empty (N, H, W) mask."""
    rows, cols = masks.any(2), masks.any(1)
    h, w = masks.shape[1:]
    return np.stack([cols.argmax(1), rows.argmax(1), w - 1 - cols[:, ::-1].argmax(1),
                     h - 1 - rows[:, ::-1].argmax(1)], axis=1).astype(np.int32)


def _fragments(digits: np.ndarray, sources: np.ndarray, cfg: ClutterConfig,
               rng: np.random.Generator) -> np.ndarray:
    """One clutter fragment per entry of ``sources``: a random crop, rescaled and placed so the crop
    lies inside the canvas, at ``clutter_contrast``."""
    n = len(sources)
    lo, hi = FRAGMENT_SIDES
    cw, ch = rng.integers(lo, hi + 1, n), rng.integers(lo, hi + 1, n)
    cx, cy = rng.integers(0, SOURCE - cw + 1), rng.integers(0, SOURCE - ch + 1)
    grid = np.arange(SOURCE)
    keep_rows = (grid >= cy[:, None]) & (grid < (cy + ch)[:, None])
    keep_cols = (grid >= cx[:, None]) & (grid < (cx + cw)[:, None])
    crops = digits[sources] * (keep_rows[:, :, None] & keep_cols[:, None, :])
    size = rng.uniform(cfg.min_size, cfg.max_size, n)
    x = rng.uniform(-cx * size / SOURCE, cfg.canvas - (cx + cw) * size / SOURCE)
    y = rng.uniform(-cy * size / SOURCE, cfg.canvas - (cy + ch) * size / SOURCE)
    return cfg.clutter_contrast * render(crops, size, x, y, cfg.canvas)


def generate_split(digits: np.ndarray, labels: np.ndarray, sources: np.ndarray, copies: int,
                   cfg: ClutterConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Images, labels, boxes, masks and provenance of one split built from ``sources`` only."""
    n = len(sources) * copies
    position = np.tile(np.arange(len(sources)), copies)
    size = rng.uniform(cfg.min_size, cfg.max_size, n)
    x = rng.uniform(0.0, cfg.canvas - size)
    y = rng.uniform(0.0, cfg.canvas - size)
    digit = render(digits[sources[position]], size, x, y, cfg.canvas)
    masks = digit > MASK_THRESHOLD
    if not masks.any(axis=(1, 2)).all():
        raise BenchError(f"digits-clutter min_size={cfg.min_size} is too small: some digits lose "
                         f"every pixel above the mask threshold {MASK_THRESHOLD}")

    # Clutter sources: any source of this split except the image's own digit.
    other = rng.integers(0, len(sources) - 1, (n, cfg.clutter))
    other += other >= position[:, None]
    clutter_sources = sources[other]
    image = digit
    for k in range(cfg.clutter):
        image = np.maximum(image, _fragments(digits, clutter_sources[:, k], cfg, rng))
    image = image + cfg.noise * rng.standard_normal(image.shape, dtype=np.float32)
    image = np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    return {"images": image[:, None], "labels": labels[sources[position]], "boxes": tight_boxes(masks),
            "masks": masks, "sources": sources[position], "clutter_sources": clutter_sources,
            "sizes": size.astype(np.float32)}


def generate(cfg: ClutterConfig) -> dict[str, dict[str, np.ndarray]]:
    """All three splits (see the module docstring); a pure function of ``cfg``."""
    cfg.validate()
    digits, labels = source_digits()
    parts = split_sources(labels, cfg.seed)
    return {name: generate_split(digits, labels, sources,
                                 cfg.copies if name == "train" else cfg.eval_copies, cfg,
                                 np.random.default_rng([cfg.seed, i + 1]))
            for i, (name, sources) in enumerate(zip(SPLITS, parts))}


def cache_path(cfg: ClutterConfig, data_root: Path | None) -> Path:
    digest = hashlib.sha256(cfg.key().encode()).hexdigest()[:16]
    return data_dir(data_root) / "digits-clutter" / f"v{FORMAT_VERSION}-{digest}.npz"


def _read_cache(path: Path, cfg: ClutterConfig) -> dict[str, dict[str, np.ndarray]] | None:
    """The cached splits, or None when the file is missing, unreadable or for other options."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if str(npz["config"]) != cfg.key():
                raise ValueError("options differ")
            return {s: {a: npz[f"{s}/{a}"] for a in ARRAYS} for s in SPLITS}
    except Exception as exc:  # any damage to the file means: regenerate it
        log.warning("regenerating unreadable digits-clutter cache %s (%s)", path, exc)
        return None


def _umask() -> int:
    """This process's umask (read by setting it, then restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_cache(path: Path, cfg: ClutterConfig, splits: dict[str, dict[str, np.ndarray]]) -> None:
    """Write atomically (temp file + rename) so concurrent runs never read a partial file."""
    arrays = {f"{s}/{a}": splits[s][a] for s in SPLITS for a in ARRAYS}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez_compressed(f, config=np.array(cfg.key()), **arrays)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: readable as a plain file
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        raise BenchError(f"cannot write the digits-clutter cache {path}: {exc}; give a writable "
                         f"data root or set $BENCH_CACHE") from None


def load_splits(cfg: ClutterConfig, data_root: Path | None = None) -> dict[str, dict[str, np.ndarray]]:
    """The generated splits, from the cache when present, else generated and cached."""
    path = cache_path(cfg, data_root)
    splits = _read_cache(path, cfg)
    if splits is None:
        splits = generate(cfg)
        _write_cache(path, cfg, splits)
    return splits


def _tensor_split(name: str, arrays: dict[str, np.ndarray], mean: float, std: float,
                  augment: Augment) -> TensorSplit:
    return TensorSplit(
        images=torch.from_numpy(arrays["images"]), labels=torch.from_numpy(arrays["labels"]),
        mean=(mean,), std=(std,), ids=[f"{name}/{i:06d}.png" for i in range(len(arrays["labels"]))],
        boxes=[box[None].astype(np.int64) for box in arrays["boxes"]],
        masks=torch.from_numpy(arrays["masks"]), augment=augment)


@DATASETS.register("digits-clutter", "UCI handwritten digits among clutter of other digits; "
                   "exact boxes and masks; generated in seconds, no download",
                   aliases=("digits",), **dataclasses.asdict(ClutterConfig()))
def load(data_root: Path | None = None, download: bool = False, **options: object) -> DataBundle:
    """digits-clutter with ``options`` (see ``ClutterConfig``); ``download`` is not needed."""
    cfg = parse_options(ClutterConfig, "digits-clutter", options)
    splits = load_splits(cfg, data_root)
    train_pixels = splits["train"]["images"].astype(np.float64) / 255.0
    mean, std = float(train_pixels.mean()), float(train_pixels.std())
    no_augment = Augment()
    return DataBundle(
        name="digits-clutter", num_classes=10, in_channels=1, input_size=cfg.canvas,
        train=_tensor_split("train", splits["train"], mean, std, Augment(pad=2)),
        test=_tensor_split("test", splits["test"], mean, std, no_augment),
        holdout=_tensor_split("holdout", splits["holdout"], mean, std, no_augment),
        class_names=[str(c) for c in range(10)])
