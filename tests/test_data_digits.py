"""digits-clutter: exact boxes and masks, splits disjoint by source digit, determinism, caching."""
from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.data import digits_clutter as dc
from bench.errors import BenchError
from bench.plugins import load_all
from bench.registry import DATASETS, parse_spec

SMALL = dict(copies=1, eval_copies=1)  # fast variant for the loading and caching tests


@pytest.fixture(scope="module")
def default_splits():
    return dc.generate(dc.ClutterConfig())


def test_boxes_are_tight_boxes_of_non_empty_masks(default_splits):
    canvas = dc.ClutterConfig().canvas
    for name, s in default_splits.items():
        assert s["images"].shape == (len(s["labels"]), 1, canvas, canvas), name
        assert s["images"].dtype == np.uint8 and s["masks"].dtype == bool
        for box, mask in zip(s["boxes"], s["masks"]):
            ys, xs = np.nonzero(mask)
            assert len(ys) > 0
            assert tuple(box) == (xs.min(), ys.min(), xs.max(), ys.max())
        x0, y0, x1, y1 = s["boxes"].T
        assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 < canvas).all() and (y1 < canvas).all()
        assert (x0 <= x1).all() and (y0 <= y1).all()


def test_labels_are_the_source_digits_labels(default_splits):
    _, labels = dc.source_digits()
    for s in default_splits.values():
        assert np.array_equal(s["labels"], labels[s["sources"]])


def test_splits_are_disjoint_by_source_including_clutter(default_splits):
    _, labels = dc.source_digits()
    used = {name: set(s["sources"]) | set(s["clutter_sources"].ravel())
            for name, s in default_splits.items()}
    assert not used["train"] & used["holdout"]
    assert not used["train"] & used["test"]
    assert not used["holdout"] & used["test"]
    objects = {name: set(s["sources"]) for name, s in default_splits.items()}
    assert sum(len(o) for o in objects.values()) == len(labels)  # every digit in exactly one split
    for name, s in default_splits.items():
        assert used[name] == objects[name]  # clutter only from the split's own digits
        assert (s["clutter_sources"] != s["sources"][:, None]).all()  # never the image's own digit
    for cls in range(10):  # stratified 60/10/30 per class, to rounding
        n = (labels == cls).sum()
        for name, fraction in zip(dc.SPLITS[:2], dc.SPLIT_FRACTIONS[:2]):
            assert abs((labels[list(objects[name])] == cls).sum() - fraction * n) <= 0.5


def test_copies_per_source(default_splits):
    cfg = dc.ClutterConfig()
    for name, s in default_splits.items():
        copies = cfg.copies if name == "train" else cfg.eval_copies
        assert set(np.bincount(s["sources"])[np.unique(s["sources"])]) == {copies}


def test_renderer_matches_bilinear_grid_sample():
    """Enlarging is bilinear interpolation with zero padding: torch's grid_sample (align_corners
    False) with the affine map of a side-``size`` square at (x, y) on the canvas."""
    rng = np.random.default_rng(0)
    digits, _ = dc.source_digits()
    n, canvas = 16, 32
    size = rng.uniform(8, 24, n)
    x, y = rng.uniform(-4, canvas - size), rng.uniform(-4, canvas - size)
    ours = dc.render(digits[:n], size, x, y, canvas)
    theta = np.zeros((n, 2, 3))
    theta[:, 0, 0] = theta[:, 1, 1] = canvas / size
    theta[:, 0, 2] = (canvas - 2 * x) / size - 1
    theta[:, 1, 2] = (canvas - 2 * y) / size - 1
    grid = F.affine_grid(torch.tensor(theta), [n, 1, canvas, canvas], align_corners=False)
    ref = F.grid_sample(torch.tensor(digits[:n, None], dtype=torch.float64), grid,
                        mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-5)


@pytest.mark.parametrize("size", [4.0, 5.5, 8.0, 20.0])
def test_resampling_weights_sum_to_one_inside_the_digit(size):
    """Shrinking or enlarging, a canvas pixel well inside the digit is a weighted mean of sources."""
    weights = dc.resampling_weights(np.array([size]), np.array([3.0]), 40)[0]
    scale = dc.SOURCE / size
    u = (np.arange(40) + 0.5 - 3.0) * scale - 0.5
    inside = (u >= max(scale, 1.0) - 1) & (u <= dc.SOURCE - max(scale, 1.0))
    assert inside.sum() >= 2
    np.testing.assert_allclose(weights[inside].sum(1), 1.0, atol=1e-6)


def test_without_clutter_or_noise_the_image_is_the_digit():
    s = dc.generate(dc.ClutterConfig(clutter=0, noise=0.0, **SMALL))["test"]
    image, mask = s["images"][:, 0], s["masks"]
    bright = round(255 * dc.MASK_THRESHOLD)
    assert (image[mask] >= bright).all()  # rounding of a value just above the threshold
    assert not (image[~mask] > bright).any()


def test_clutter_is_dimmer_and_under_the_digit():
    cfg = dc.ClutterConfig(noise=0.0, clutter_contrast=0.5, **SMALL)
    s = dc.generate(cfg)["train"]
    image, mask = s["images"][:, 0], s["masks"]
    ceiling = round(255 * max(cfg.clutter_contrast, dc.MASK_THRESHOLD))
    assert image[~mask].max() <= ceiling  # outside the digit: clutter at reduced contrast
    assert (image[~mask] > 0).mean() > 0.05  # and there is clutter
    assert (image[mask] >= round(255 * dc.MASK_THRESHOLD)).all()  # the digit composited on top


def test_same_seed_same_data_other_seed_other_data():
    a, b = dc.generate(dc.ClutterConfig(**SMALL)), dc.generate(dc.ClutterConfig(**SMALL))
    c = dc.generate(dc.ClutterConfig(seed=1, **SMALL))
    for split in dc.SPLITS:
        for key in dc.ARRAYS:
            assert np.array_equal(a[split][key], b[split][key]), (split, key)
        assert not np.array_equal(a[split]["images"], c[split]["images"])
    assert set(a["test"]["sources"]) != set(c["test"]["sources"])


def test_generation_is_fast():
    dc.source_digits()  # scikit-learn's import and file read are not generation
    start = time.process_time()  # CPU time: robust to a machine shared with other work
    dc.generate(dc.ClutterConfig())
    assert time.process_time() - start < 4.0


def test_bundle(tmp_path):
    cfg = dc.ClutterConfig(**SMALL)
    bundle = dc.load(tmp_path, **SMALL)
    splits = dc.generate(cfg)
    assert (bundle.num_classes, bundle.in_channels, bundle.input_size) == (10, 1, 32)
    assert bundle.class_names == [str(c) for c in range(10)]
    assert bundle.train.augment.pad == 2 and bundle.train.augment.flip == 0.0
    assert bundle.test.augment.pad == 0 and bundle.holdout.augment.pad == 0
    for name, split in (("train", bundle.train), ("holdout", bundle.holdout), ("test", bundle.test)):
        arrays = splits[name]
        assert split.images.dtype == torch.uint8
        assert torch.equal(split.images, torch.from_numpy(arrays["images"]))
        assert torch.equal(split.labels, torch.from_numpy(arrays["labels"]))
        assert split.labels.dtype == torch.int64
        assert torch.equal(split.masks, torch.from_numpy(arrays["masks"]))
        assert len(split.boxes) == len(split) and split.boxes[0].shape == (1, 4)
        assert np.array_equal(np.concatenate(split.boxes), arrays["boxes"])
        assert split.ids[3] == f"{name}/000003.png"
        assert split.image_size(0) == (32, 32)
    x = bundle.train.normalize(bundle.train.images).double()  # train statistics normalise to 0, 1
    assert abs(x.mean().item()) < 1e-4 and abs(x.std(unbiased=False).item() - 1) < 1e-4


def test_registered_spec_loads(tmp_path):
    load_all()
    spec = parse_spec(DATASETS, "digits-clutter[copies=1,eval_copies=1,clutter=2]")
    bundle = DATASETS.get(spec.name).obj(tmp_path, **spec.kwargs)
    assert len(bundle.train) == len(dc.generate(dc.ClutterConfig(clutter=2, **SMALL))["train"]["labels"])


def test_second_load_reads_the_cache(tmp_path, monkeypatch):
    first = dc.load(tmp_path, **SMALL)
    assert dc.cache_path(dc.ClutterConfig(**SMALL), tmp_path).is_file()

    def fail(cfg):
        raise AssertionError("generated again instead of reading the cache")

    monkeypatch.setattr(dc, "generate", fail)
    second = dc.load(tmp_path, **SMALL)
    assert torch.equal(first.test.images, second.test.images)
    assert torch.equal(first.holdout.masks, second.holdout.masks)
    assert first.train.mean == second.train.mean


def test_corrupted_cache_is_regenerated(tmp_path, caplog):
    cfg = dc.ClutterConfig(**SMALL)
    first = dc.load(tmp_path, **SMALL)
    path = dc.cache_path(cfg, tmp_path)
    path.write_bytes(path.read_bytes()[:1000])  # truncated file
    with caplog.at_level(logging.WARNING, logger=dc.__name__):
        second = dc.load(tmp_path, **SMALL)
    assert "regenerating" in caplog.text
    assert torch.equal(first.train.images, second.train.images)
    assert dc._read_cache(path, cfg) is not None  # the file was rewritten whole


def test_cache_for_other_options_is_not_used(tmp_path):
    a, b = dc.ClutterConfig(**SMALL), dc.ClutterConfig(noise=0.0, **SMALL)
    assert dc.cache_path(a, tmp_path) != dc.cache_path(b, tmp_path)
    dc.load(tmp_path, **SMALL)
    dc.cache_path(b, tmp_path).write_bytes(dc.cache_path(a, tmp_path).read_bytes())
    assert dc._read_cache(dc.cache_path(b, tmp_path), b) is None


def test_default_cache_directory_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    cfg = dc.ClutterConfig(**SMALL)
    assert dc.cache_path(cfg, None).parent == tmp_path / "digits-clutter"
    dc.load(None, **SMALL)
    assert dc.cache_path(cfg, None).is_file()
    assert not list((tmp_path / "digits-clutter").glob("*.tmp"))


@pytest.mark.parametrize("options", [dict(min_size=20, max_size=10), dict(max_size=40),
                                     dict(copies=0), dict(clutter_contrast=1.5), dict(noise=-1.0),
                                     dict(colour=3)])
def test_bad_options_are_bench_errors(tmp_path, options):
    with pytest.raises(BenchError):
        dc.load(tmp_path, **options)
