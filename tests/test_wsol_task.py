"""The ``wsol`` task on tiny hand-built datasets: metric keys, units and ranges for an untrained
network, tau taken from the holdout split (never test), and the round trip through saved score maps."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench import build_model
from bench.data.base import DataBundle, TensorSplit
from bench.presets import Recipe
from bench.plugins import load_all
from bench.registry import BACKBONES, METHODS, TASKS, parse_spec
from bench.tasks.base import RunContext
from bench.tasks.wsol import evaluate_wsol, gallery_indices
from bench.tasks.wsol_metrics import cam_thresholds, prepare_map, quantize

MEAN, STD = (0.5,), (0.25,)


def split(images: np.ndarray, labels, boxes=None, masks=None, prefix="test") -> TensorSplit:
    n = len(labels)
    return TensorSplit(torch.from_numpy(images.astype(np.uint8)).unsqueeze(1), torch.tensor(labels),
                       MEAN, STD,
                       [f"{prefix}/{i:03d}.png" for i in range(n)],
                       None if boxes is None else [np.array(b) for b in boxes],
                       None if masks is None else torch.from_numpy(masks))


def context(data: DataBundle, model: nn.Module, out_dir: Path, **options) -> RunContext:
    load_all()
    return RunContext(parse_spec(METHODS, "gap-fc"), parse_spec(BACKBONES, "resnet8"), data,
                      Recipe(eval_batch_size=4), 0, torch.device("cpu"), out_dir, 7, model,
                      options={**TASKS.get("wsol").defaults, **options})


def random_boxes_split(rng, n, k, size, prefix, with_masks=True):
    images = rng.integers(0, 256, (n, size, size))
    boxes, masks = [], np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        x0, y0 = rng.integers(0, size // 2, 2)
        x1, y1 = x0 + rng.integers(2, size // 2), y0 + rng.integers(2, size // 2)
        boxes.append([[x0, y0, x1, y1]])
        masks[i, y0:y1 + 1, x0:x1 + 1] = True
    return split(images, [i % k for i in range(n)], boxes, masks if with_masks else None, prefix)


@pytest.fixture(scope="module")
def untrained_run(tmp_path_factory):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    k = 10
    data = DataBundle("toy", k, 1, 16, random_boxes_split(rng, 20, k, 16, "train"),
                      random_boxes_split(rng, 20, k, 16, "test"),
                      random_boxes_split(rng, 10, k, 16, "holdout"))
    model = build_model("gap-fc", "resnet8", k, in_channels=1).eval()
    out = tmp_path_factory.mktemp("run")
    result = TASKS.get("wsol").obj.run(context(data, model, out, save_scoremaps=str(out / "maps")))
    return data, model, out, result


def test_untrained_metric_keys_units_and_ranges(untrained_run):
    _, _, _, result = untrained_run
    metrics = {m.name: m for m in result.metrics}
    assert set(metrics) == {"gt_known_loc", "top1_loc", "top5_loc", "maxboxacc_v2", "maxboxacc_30",
                            "maxboxacc_50", "maxboxacc_70", "maxboxacc_v1", "pxap"}
    assert all(m.unit == "%" and 0 <= m.value <= 100 for m in metrics.values())
    parts = [metrics[f"maxboxacc_{d}"].value for d in (30, 50, 70)]
    assert metrics["maxboxacc_v2"].value == pytest.approx(np.mean(parts))
    assert parts[0] >= parts[1] >= parts[2]
    assert metrics["top1_loc"].value <= metrics["top5_loc"].value <= metrics["gt_known_loc"].value
    # GT-known Loc at one tau with the largest contour cannot beat the best tau with it
    assert metrics["gt_known_loc"].value <= metrics["maxboxacc_v1"].value
    extra = metrics["gt_known_loc"].extra
    assert extra["tau_source"] == "holdout" and extra["box_rule"] == "largest contour"
    assert extra["tau"] in cam_thresholds(0.01).tolist()
    assert metrics["maxboxacc_50"].extra["best_tau"] in cam_thresholds(0.01).tolist()


def test_untrained_gallery_written(untrained_run):
    _, _, out, result = untrained_run
    path = Path(result.artifacts["gallery"])
    assert path == out / "figures" / "gallery-run7.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_saved_score_maps_reproduce_the_task(untrained_run):
    data, model, out, result = untrained_run
    metrics = {m.name: m.value for m in result.metrics}
    maps = out / "maps" / "gap-fc-run7-seed0"  # one folder per run
    assert sorted(p.name for p in (maps / "test").iterdir()) == [f"{i:03d}.png.npy" for i in range(20)]
    with torch.no_grad():
        x = next(data.test.batches(20, train=False))[0]
        raw = model.localization_maps(x, data.test.labels).numpy()
    assert np.array_equal(np.load(maps / "test" / "003.png.npy"), prepare_map(raw[3], (16, 16)))
    evaluated = evaluate_wsol(maps / "metadata", maps)
    assert evaluated["maxboxacc_v2"] == metrics["maxboxacc_v2"]
    assert evaluated["maxboxacc_v1"] == metrics["maxboxacc_v1"]
    assert evaluated["pxap"] == metrics["pxap"]
    assert [evaluated["maxboxacc"][str(d)] for d in (30, 50, 70)] == [metrics[f"maxboxacc_{d}"]
                                                                      for d in (30, 50, 70)]


class InputMap(nn.Module):
    """A stand-in classifier: its map is the input image, its scores rank class 0 first, then 1, 2, ..."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -torch.arange(self.k, dtype=torch.float32).expand(len(x), self.k)

    def localization_maps(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


SIZE, HALO = 32, 150


def halo_image():
    """Object (10..21)^2 at 255 inside a halo (4..27)^2 at 150: right only once the halo is dropped."""
    image = np.zeros((SIZE, SIZE))
    image[4:28, 4:28] = HALO
    image[10:22, 10:22] = 255
    return image, [[10, 10, 21, 21]]


def peak_image():
    """Object (8..23)^2 at 100 with a 4 x 4 peak at 255: right only while the object is kept whole."""
    image = np.zeros((SIZE, SIZE))
    image[8:24, 8:24] = 100
    image[12:16, 12:16] = 255
    return image, [[8, 8, 23, 23]]


def build(kinds, labels, prefix):
    pairs = [halo_image() if kind == "halo" else peak_image() for kind in kinds]
    return split(np.stack([p[0] for p in pairs]), labels, [p[1] for p in pairs], prefix=prefix)


def test_tau_comes_from_the_holdout_not_test(tmp_path):
    holdout = build(["halo"] * 3, [0, 1, 2], "holdout")
    # on test alone a low tau is best (3 of 5 right); the holdout's tau gets only the 2 halo images
    test = build(["halo", "halo", "peak", "peak", "peak"], [0, 4, 1, 1, 1], "test")
    data = DataBundle("toy", 6, 1, SIZE, holdout, test, holdout)
    result = TASKS.get("wsol").obj.run(context(data, InputMap(6).eval(), tmp_path))
    metrics = {m.name: m for m in result.metrics}
    halo_level = quantize(prepare_map(halo_image()[0], (SIZE, SIZE)))[5, 5]
    grid = cam_thresholds(0.01)
    expected_tau = grid[np.argmax([int(t * 255) >= halo_level for t in grid])]
    assert metrics["gt_known_loc"].extra["tau"] == expected_tau and 0.55 < expected_tau < 0.6
    assert metrics["gt_known_loc"].extra["tau_source"] == "holdout"
    assert metrics["gt_known_loc"].value == 40.0  # the two halo images
    assert metrics["top1_loc"].value == 20.0  # ... of which class 0 is predicted first
    assert metrics["top5_loc"].value == 40.0  # ... and class 4 is in the top 5
    assert metrics["maxboxacc_50"].value == 60.0 and metrics["maxboxacc_v1"].value == 60.0
    assert metrics["maxboxacc_50"].extra["best_tau"] == 0.0
    assert "pxap" not in metrics


def test_without_holdout_the_classic_tau_is_used(tmp_path):
    test = build(["halo", "peak"], [0, 1], "test")
    data = DataBundle("toy", 3, 1, SIZE, test, test, None)
    result = TASKS.get("wsol").obj.run(context(data, InputMap(3).eval(), tmp_path))
    metrics = {m.name: m for m in result.metrics}
    assert metrics["gt_known_loc"].extra["tau"] == 0.2
    assert metrics["gt_known_loc"].extra["tau_source"] == "fixed (no holdout)"
    assert metrics["gt_known_loc"].value == 50.0  # tau 0.2 keeps the halo, and the whole peak object
    assert "top5_loc" not in metrics  # 3 classes: Top-5 is meaningless


def test_dataset_without_boxes_gives_no_metrics(tmp_path, caplog):
    images = np.zeros((3, SIZE, SIZE))
    data = DataBundle("plain", 3, 1, SIZE, split(images, [0, 1, 2]), split(images, [0, 1, 2]))
    with caplog.at_level(logging.WARNING, logger="bench.tasks.wsol"):
        result = TASKS.get("wsol").obj.run(context(data, InputMap(3).eval(), tmp_path))
    assert result.metrics == [] and result.artifacts == {}
    assert "no boxes or masks" in caplog.text


def test_gallery_indices():
    assert gallery_indices([3, 3, 1, 0, 1, 2, 9, 8, 7, 6, 5, 4]) == [0, 2, 3, 5, 8, 9, 10, 11]
    assert gallery_indices([1, 1, 0, 0, 1]) == [0, 1, 2, 3, 4]
    assert gallery_indices([2, 2, 2, 1, 0, 5, 5, 4, 3, 6, 7, 8, 9]) == [0, 3, 4, 5, 7, 8, 9, 10]


@pytest.mark.parametrize("with_ignore, expected", [(False, 50.0), (True, 100.0)])
def test_pxap_leaves_ignore_regions_out(tmp_path, with_ignore, expected):
    # Object in columns 0-1 (value 128); a brighter distractor in columns 6-7. Counted as background,
    # the distractor halves the precision at every threshold that finds the object (PxAP 50); as an
    # ignore region (the reference's OpenImages protocol) it is left out and PxAP is 100.
    image = np.zeros((1, 8, 8))
    image[0, :, 0:2], image[0, :, 6:8] = 128, 255
    foreground = np.zeros((1, 8, 8), bool)
    foreground[0, :, 0:2] = True
    test = split(image, [0], masks=foreground)
    if with_ignore:
        ignore = np.zeros((8, 8), bool)
        ignore[:, 6:8] = True
        test.ignore_masks = [torch.from_numpy(ignore)]
    data = DataBundle("ignore", 2, 1, 8, test, test)
    result = TASKS.get("wsol").obj.run(context(data, InputMap(2).eval(), tmp_path))
    pxap = {m.name: m for m in result.metrics}["pxap"]
    assert pxap.value == pytest.approx(expected)
    assert pxap.extra["ignore_regions"] is with_ignore
