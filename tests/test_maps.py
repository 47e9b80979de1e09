"""The ``maps`` task and its faithfulness metrics on hand-made cases with known answers: a network
that looks only at the object, whose own map is exactly the object mask, against the random and
centre references; the post-hoc CAM wiring; options, bad input and the report."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from conftest import refused

from bench import build_model
from bench.api import _tasks
from bench.cli import main
from bench.data.base import DataBundle, TensorSplit
from bench.errors import BenchError
from bench.plugins import load_all
from bench.presets import Recipe
from bench.registry import BACKBONES, METHODS, TASKS, parse_spec
from bench.report.collect import Group
from bench.report.figures import Plotter
from bench.report.stats import estimate
from bench.report.maps import maps_blocks
from bench.store import Store
from bench.tasks import faithfulness
from bench.tasks.base import RunContext
from bench.tasks.maps import (DEFAULT_SOURCES, HOLDOUT, TEST, centre_map, library_cam,
                              parse_source, select_inputs)
from bench.tasks.wsol_metrics import normalize_map

SIZE, OBJECT_H, OBJECT_W = 16, 8, 4  # 32 object pixels of 256: an eighth of the image
FRACTION = OBJECT_H * OBJECT_W / SIZE ** 2


class ObjectOnly(nn.Module):
    """Looks only at the object: p(class 1) = the share of the object's pixels still at their
    value 1 (the background is 0 and counts for nothing); its own map is the object mask."""

    def __init__(self, has_map: bool = True) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))  # the library CAMs read the device off a parameter
        self.has_map = has_map

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = (x[:, 0].clamp(0, 1).sum(dim=(1, 2)) / (OBJECT_H * OBJECT_W)).clamp(1e-6, 1 - 1e-6)
        return torch.stack([torch.log1p(-p), torch.log(p)], dim=1) * self.scale

    def localization_maps(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        if not self.has_map:
            raise NotImplementedError("this network makes no map")
        return (x[:, 0] > 0.5).float()

    def deploy(self) -> nn.Module:
        return self


def object_split(n: int, seed: int, prefix: str) -> TensorSplit:
    """An 8 x 4 object of value 1 at a random place on a 0 background (normalised exactly)."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 1, SIZE, SIZE), dtype=np.uint8)
    masks = np.zeros((n, SIZE, SIZE), dtype=bool)
    boxes = []
    for i in range(n):
        y0, x0 = rng.integers(0, SIZE - OBJECT_H + 1), rng.integers(0, SIZE - OBJECT_W + 1)
        images[i, 0, y0:y0 + OBJECT_H, x0:x0 + OBJECT_W] = 255
        masks[i, y0:y0 + OBJECT_H, x0:x0 + OBJECT_W] = True
        boxes.append(np.array([[x0, y0, x0 + OBJECT_W - 1, y0 + OBJECT_H - 1]]))
    return TensorSplit(torch.from_numpy(images), torch.ones(n, dtype=torch.int64), (0.0,), (1.0,),
                       [f"{prefix}/{i:03d}" for i in range(n)], boxes, torch.from_numpy(masks))


def object_data(n: int = 48) -> DataBundle:
    return DataBundle("objects", 2, 1, SIZE, object_split(8, 0, "train"), object_split(n, 1, "test"),
                      object_split(n, 2, "holdout"), ["background", "object"])


def run_task(model: nn.Module, data: DataBundle, out: Path, spec: str) -> dict:
    load_all()
    task = parse_spec(TASKS, spec)
    TASKS.get("maps").obj.check(task.kwargs)
    ctx = RunContext(parse_spec(METHODS, "gap-fc"), parse_spec(BACKBONES, "resnet8"), data,
                     Recipe(eval_batch_size=128), 0, torch.device("cpu"), out, 3, model,
                     options=task.kwargs)
    result = TASKS.get("maps").obj.run(ctx)
    return {"metrics": {m.name: m for m in result.metrics}, "artifacts": result.artifacts}


@pytest.fixture(scope="module")
def object_run(tmp_path_factory):
    return run_task(ObjectOnly(), object_data(), tmp_path_factory.mktemp("maps"),
                    "maps[sources=own+random+centre,images=40,road_percentiles=30+70]")


def value(run: dict, name: str) -> float:
    return run["metrics"][name].value


def test_mask_map_has_the_known_deletion_and_insertion_auc(object_run):
    # deleting the object first: p falls linearly to 0 over the first 1/8 of the pixels (a grid
    # point: 16 steps of 16 pixels, the object 2 steps), so the AUC is 1/16 (black is 0 here:
    # the split's normalisation is mean 0, std 1)
    assert value(object_run, "deletion_auc@own") == pytest.approx(FRACTION / 2, abs=1e-5)
    # insertion from the blurred image: the blur keeps the object's intensity (its reflected
    # borders add some), and this model scores the clamped intensity sum, so p sits at its
    # ceiling 1 - 1e-6 from the first step on
    assert value(object_run, "insertion_auc@own") == pytest.approx(1 - 1e-6, abs=1e-7)  # float32


def test_insertion_from_black_has_the_known_auc(tmp_path):
    # from black, the object's 32 pixels come back first, 16 a step: p is 0, 1/2, then 1 for the
    # 14 remaining steps, so the trapezoids give (1/4 + 3/4 + 14) / 16 = 1 - 1/16
    run = run_task(ObjectOnly(), object_data(), tmp_path,
                   "maps[sources=own,images=40,insertion_from=black]")
    assert value(run, "insertion_auc@own") == pytest.approx(1 - FRACTION / 2, abs=1e-5)


@pytest.fixture(scope="module")
def mean_run(tmp_path_factory):
    """The old substrate, kept as an option: the normalisation mean for deletion and insertion."""
    return run_task(ObjectOnly(), object_data(), tmp_path_factory.mktemp("maps-mean"),
                    "maps[sources=own+random,images=40,road_percentiles=50,insertion_from=mean,"
                    "deletion_to=mean]")


def test_mean_substrate_keeps_the_mirror_insertion(mean_run):
    """Insertion from the mean is deletion's mirror: 1 - 1/16 for the mask, 1/2 in expectation
    for a random order (E[p_k] = k / steps); the mask beats the random map."""
    assert value(mean_run, "insertion_auc@own") == pytest.approx(1 - FRACTION / 2, abs=1e-5)
    assert mean_run["metrics"]["insertion_auc@own"].extra["substrate"].startswith("mean: ")
    assert value(mean_run, "insertion_auc@random") == pytest.approx(0.5, abs=0.03)
    assert value(mean_run, "insertion_auc@own") > value(mean_run, "insertion_auc@random") + 0.3


def test_random_reference_lands_near_its_expected_value(object_run):
    # random order: E[p_k] = 1 - k / steps, so the deletion AUC is 1/2 in expectation (insertion:
    # see the mean substrate's test); a uniform map keeps on average half of each object pixel
    # (Average Drop 50%); random scores rank object and background alike, so PxAP is the
    # foreground share
    assert value(object_run, "deletion_auc@random") == pytest.approx(0.5, abs=0.03)
    assert value(object_run, "avg_drop@random") == pytest.approx(50.0, abs=3.0)
    assert value(object_run, "pxap@random") == pytest.approx(100 * FRACTION, abs=1.5)


def test_mask_map_beats_the_random_map(object_run):
    for name in ("maxboxacc_v2", "gt_known_loc", "pxap"):
        assert value(object_run, f"{name}@own") == 100.0
        assert value(object_run, f"{name}@random") < 60.0
    assert value(object_run, "avg_drop@own") == 0.0  # the image times its mask is the image
    assert value(object_run, "increase_in_confidence@own") == 0.0
    assert value(object_run, "deletion_auc@own") < value(object_run, "deletion_auc@random") - 0.3
    assert value(object_run, "insertion_auc@own") >= value(object_run, "insertion_auc@random")
    assert value(object_run, "road_morf@own") < value(object_run, "road_morf@random")
    assert value(object_run, "road_combined@own") > value(object_run, "road_combined@random")


def test_metrics_record_how_they_were_made(object_run):
    metrics = object_run["metrics"]
    sources = {"own", "random", "centre"}
    bases = {"gt_known_loc", "top1_loc", "maxboxacc_v2", "maxboxacc_30", "maxboxacc_50",
             "maxboxacc_70", "maxboxacc_v1", "pxap", "deletion_auc", "insertion_auc", "road_morf",
             "road_lerf", "road_combined", "avg_drop", "increase_in_confidence"}
    assert set(metrics) == {f"{b}@{s}" for b in bases for s in sources}
    deletion = metrics["deletion_auc@centre"].extra
    assert deletion["source"] == "centre" and deletion["images"] == 40
    assert deletion["substrate"].startswith("black: ") and deletion["steps"] == 16
    assert metrics["insertion_auc@centre"].extra["substrate"].startswith("blur: ")
    assert deletion["class"].startswith("predicted: ")
    assert metrics["avg_drop@own"].extra["class"].startswith("predicted: ")
    assert deletion["function"] == "bench.tasks.faithfulness.deletion_insertion"
    road = metrics["road_morf@own"].extra
    assert road["function"] == "pytorch_grad_cam.metrics.road.ROADMostRelevantFirstAverage"
    assert road["percentiles"] == [30, 70] and road["map"] == "ObjectOnly.localization_maps"
    loc = metrics["gt_known_loc@own"].extra
    assert loc["tau_source"] == "holdout" and loc["holdout_images"] == 40
    assert all(m.unit == "%" for n, m in metrics.items() if n.startswith(("pxap", "avg_drop")))


def test_gallery_arrays(object_run):
    arrays = np.load(object_run["artifacts"]["gallery"])
    assert list(arrays["sources"]) == ["own", "random", "centre"]
    assert arrays["maps"].shape == (3, 8, SIZE, SIZE)  # the wsol gallery's 8 images
    assert arrays["available"].all()
    assert arrays["maps"][0].max() == 255 and set(np.unique(arrays["maps"][0])) == {0, 255}


def test_missing_own_map_is_null_not_zero(tmp_path):
    run = run_task(ObjectOnly(has_map=False), object_data(8), tmp_path,
                   "maps[sources=own+centre,images=8,road_percentiles=50]")
    own = {n: m for n, m in run["metrics"].items() if n.endswith("@own")}
    assert {n.split("@")[0] for n in own} == {n.split("@")[0] for n in run["metrics"]
                                              if n.endswith("@centre")}
    assert all(math.isnan(m.value) for m in own.values())
    assert own["pxap@own"].extra["available"] is False
    assert "no own map" in own["pxap@own"].extra["reason"]
    assert not np.load(run["artifacts"]["gallery"])["available"][0]


class Recorder(nn.Module):
    """Records every batch it is given; constant scores."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return torch.zeros(len(x), 2)


def test_deletion_goes_to_black_and_insertion_starts_from_the_rise_blur():
    """One step: deletion sees [image, substrate], insertion [substrate, image]. Black is 0
    before normalisation, (0 - mean) / std after; the blur is an 11 x 11 Gaussian of sigma 5
    with reflected borders, computed here with OpenCV."""
    import cv2

    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 1, (2, 3, 16, 16)).astype(np.float32)
    mean, std = (0.5, 0.4, 0.3), (0.25, 0.2, 0.5)
    x = (torch.from_numpy(raw) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    model, maps = Recorder(), rng.uniform(0, 1, (2, 16, 16))
    faithfulness.deletion_insertion(model, x, torch.tensor([0, 1]), maps, 1, 64, (mean, std))
    deletion, insertion = (batch.view(2, 2, 3, 16, 16) for batch in model.seen)
    black = torch.tensor([-m / s for m, s in zip(mean, std)]).view(1, 3, 1, 1).expand(2, 3, 16, 16)
    assert torch.equal(deletion[:, 0], x) and torch.allclose(deletion[:, 1], black)
    blurred = np.stack([np.stack([cv2.GaussianBlur(x[i, c].numpy(), (11, 11), 5.0,
                                                   borderType=cv2.BORDER_REFLECT_101)
                                  for c in range(3)]) for i in range(2)])
    assert np.allclose(insertion[:, 0].numpy(), blurred, atol=1e-5)
    assert torch.equal(insertion[:, 1], x)
    unnormalised = deletion[:, 1] * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    assert torch.allclose(unnormalised, torch.zeros_like(unnormalised), atol=1e-6)  # black


def test_substrates_and_step_count_change_the_curve():
    model = ObjectOnly()
    data = object_data(4).test
    x = data.normalize(data.images)
    masks = data.masks.numpy().astype(np.float64)
    norm = (data.mean, data.std)
    mean = faithfulness.deletion_insertion(model, x, data.labels, masks, 16, 64, norm, "mean", "mean")
    coarse = faithfulness.deletion_insertion(model, x, data.labels, masks, 4, 64, norm, "mean", "mean")
    blur = faithfulness.deletion_insertion(model, x, data.labels, masks, 16, 64, norm, "blur", "blur")
    # 4 steps of 64 pixels: p = 1, 0, 0, 0, 0 -> AUC 1/8, coarser than the exact 1/16
    assert coarse[0] == pytest.approx(np.full(4, 0.125), abs=1e-5)
    assert mean[0] == pytest.approx(np.full(4, 0.0625), abs=1e-5)
    # blurring keeps some object intensity in place: deleting is slower than with the mean
    assert (blur[0] > mean[0]).all()
    assert faithfulness.pixel_counts(10, 4).tolist() == [0, 2, 5, 8, 10]


def test_the_predicted_class_is_explained_by_default_the_label_on_request(tmp_path):
    """Every image labelled 0 (background) while the network predicts 1 (object): p of the
    prediction falls as the object is deleted (AUC 1/16), p of the label rises (1 - 1/16)."""
    data = object_data(8)
    data.test.labels = torch.zeros_like(data.test.labels)
    spec = "maps[sources=own,images=8,road_percentiles=50,deletion_to=mean{}]"
    predicted = run_task(ObjectOnly(), data, tmp_path / "p", spec.format(""))
    label = run_task(ObjectOnly(), data, tmp_path / "l", spec.format(",target=label"))
    assert value(predicted, "deletion_auc@own") == pytest.approx(FRACTION / 2, abs=1e-5)
    assert value(label, "deletion_auc@own") == pytest.approx(1 - FRACTION / 2, abs=1e-5)
    assert label["metrics"]["deletion_auc@own"].extra["class"].startswith("label: ")


def test_gradcam_of_gap_fc_is_its_rectified_cam():
    torch.manual_seed(0)
    model = build_model("gap-fc", "resnet8", 4, in_channels=1).eval()
    x, y = torch.randn(3, 1, 16, 16), torch.tensor([0, 1, 3])
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = library_cam("gradcam", model, model.backbone.layer3)
    try:
        maps = cam(x, [ClassifierOutputTarget(int(c)) for c in y])
    finally:
        cam.activations_and_grads.release()
    with torch.no_grad():
        own = model.localization_maps(x, y).numpy()
    assert maps.shape == own.shape == (3, 4, 4)  # at the last stage's resolution
    for got, ref in zip(maps, own):  # Grad-CAM on GAP-FC = ReLU(CAM) / (h w), then min-max
        assert got == pytest.approx(normalize_map(np.maximum(ref, 0)), abs=1e-5)


def test_select_inputs_is_evenly_spaced():
    split = object_split(10, 0, "s")
    inputs = select_inputs(split, TEST, 4, 3, torch.device("cpu"))
    assert inputs.indices.tolist() == [0, 3, 6, 9]
    assert torch.equal(inputs.x, split.normalize(split.images[[0, 3, 6, 9]]))
    assert len(select_inputs(split, HOLDOUT, 0, 4, torch.device("cpu")).y) == 10
    assert len(select_inputs(split, TEST, 50, 4, torch.device("cpu")).y) == 10


def test_centre_map():
    m = centre_map(5, 9)
    assert m[2, 4] == 1.0 and m.argmax() == 2 * 9 + 4
    assert m[0, 4] == pytest.approx(math.exp(-0.5 * (2 / (0.25 * 5)) ** 2))
    assert np.allclose(m, m[::-1, ::-1])


def test_parse_source():
    assert parse_source("layercam-penultimate").name == "layercam-penultimate"
    assert parse_source("GradCAM-last") == parse_source("gradcam")
    assert parse_source("own").layer == ""
    assert {parse_source(s).name for s in DEFAULT_SOURCES} == set(DEFAULT_SOURCES)


def test_default_task_list_leaves_maps_out_and_shorthand_sets_images():
    assert [s.name for s in _tasks(None, {})] == ["accuracy", "wsol", "cost"]
    specs = _tasks(["accuracy", "maps"], {"maps_images": 7})
    assert str(specs[1]) == "maps[images=7]" and specs[1].kwargs["images"] == 7
    with pytest.raises(BenchError, match="maps_images applies to the maps task"):
        _tasks(["accuracy"], {"maps_images": 7})


@pytest.mark.parametrize("args, message", [
    (["--tasks", "maps[sources=own+gradcam+magic]"],
     "unknown map source 'magic'; valid: own, gradcam, gradcampp, scorecam, layercam, random, centre"),
    (["--tasks", "maps[sources=layercam-layer9]"],
     "unknown layer 'layer9' in map source 'layercam-layer9'; valid layers: last, penultimate"),
    (["--tasks", "maps[sources=random-penultimate]"], "only the CAMs"),
    (["--tasks", "maps[sources=own+own]"], "each source once"),
    (["--tasks", "maps[deletion_to=zeros]"], "option deletion_to='zeros'; valid: black, mean, blur"),
    (["--tasks", "maps[insertion_from=noise]"], "option insertion_from='noise'; valid: black, mean, blur"),
    (["--tasks", "maps[target=top5]"], "option target='top5'; valid: predicted, label"),
    (["--tasks", "maps[road_percentiles=0+50]"], "road_percentiles must be percentiles in 1..99"),
    (["--tasks", "maps", "--maps-images", "-1"], "option images must be at least 0"),
    (["--tasks", "accuracy", "--maps-images", "5"], "--maps-images applies to the maps task"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, message):
    store = tmp_path / "results.sqlite"
    Store(store).close()
    assert message in refused(capsys, ["run", "--dataset", "toy-quadrants", "--out",
                                       str(tmp_path), *args], store)


def test_run_stores_and_reports_every_source(tmp_path, capsys):
    code = main(["run", "--methods", "gap-fc", "saol", "--dataset", "toy-quadrants", "--backbone",
                 "resnet8", "--epochs", "1", "--seeds", "1", "--jobs", "1", "--no-progress", "--out", str(tmp_path), "--tasks",
                 "accuracy", "maps[road_percentiles=50]", "--maps-images", "6"])
    assert code == 0, capsys.readouterr().err
    store = Store(tmp_path / "results.sqlite", create=False)
    try:
        records = [r for r in store.records() if r["task"] == "maps[images=6,road_percentiles=50]"]
    finally:
        store.close()
    for method in ("gap-fc", "saol"):
        names = {r["metric"] for r in records if r["method"] == method}
        for source in DEFAULT_SOURCES:
            assert {f"maxboxacc_v2@{source}", f"deletion_auc@{source}",
                    f"road_combined@{source}", f"avg_drop@{source}"} <= names
    assert all(r["extra"]["images"] == 6 for r in records)
    report = (tmp_path / "report.md").read_text()
    assert "### Map quality: localization (maps[images=6,road_percentiles=50])" in report
    assert "### Map gallery: saol, seed 0" in report
    assert "| saol | layercam-penultimate |" in report
    assert "Other metrics" not in report


def synthetic_group(gallery: Path) -> Group:
    rows = []
    for run_id, (method, seed) in enumerate([("gap-fc", 0), ("gap-fc", 1), ("abn", 0)], start=1):
        for source in ("own", "gradcam"):
            for metric, value, unit in (("maxboxacc_v2", 50.0 + seed, "%"),
                                        ("deletion_auc", 0.1 + seed / 10, "p")):
                missing = method == "abn" and source == "own"
                rows.append({"run_id": run_id, "method": method, "seed": seed, "task": "maps",
                             "metric": f"{metric}@{source}", "value": None if missing else value,
                             "unit": unit, "extra": {"images": 6, "source": source},
                             "setting": ""})
    runs = pd.DataFrame({"id": [1, 2, 3], "method": ["gap-fc", "gap-fc", "abn"], "seed": [0, 1, 0]})
    task_runs = [{"run_id": 2, "task": "maps", "artifacts": {"gallery": str(gallery)}},
                 {"run_id": 3, "task": "maps", "artifacts": {"gallery": "gone.npz"}}]
    return Group("toy", "resnet8", {}, "toy / resnet8", pd.DataFrame(rows), pd.DataFrame(), runs,
                 task_runs, ["gap-fc", "abn"])


def test_report_tables_show_intervals_and_n_a(tmp_path, object_run):
    plot = Plotter(tmp_path / "figures", {"gap-fc": "#3a3a3a", "abn": "#1f77b4"})
    blocks = maps_blocks(synthetic_group(Path(object_run["artifacts"]["gallery"])), plot)
    localization, faithful, gallery, gone = blocks
    assert localization.columns == ["method", "map source", "MaxBoxAccV2 (%) ↑"]
    two_seeds = estimate([50.0, 51.0]).text("%", 2)  # gap-fc's two seeds
    assert localization.rows == [["gap-fc", "own", two_seeds], ["gap-fc", "gradcam", two_seeds],
                                 ["abn", "own", "n/a"], ["abn", "gradcam",
                                                         "50.00 (n=1, no interval)"]]
    assert faithful.columns[2] == "Deletion AUC (p) ↓"
    assert faithful.rows[0][2] == estimate([0.1, 0.2]).text("p", 3)
    assert gallery.title == "Map gallery: gap-fc, seed 1" and gallery.png.is_file()
    assert "gone.npz not found" in gone.text
