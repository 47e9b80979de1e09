"""The ``wsol`` task: how well a trained classifier's own class maps locate the object (protocol:
WSOL.md), and ``evaluate_wsol``, the standalone evaluator of saved score maps.

Both score maps through ``WsolEvaluator`` (bench/tasks/wsol_metrics.py, where every detail taken from
the reference evaluator clovaai/wsolevaluation is listed), so the task's numbers and the evaluator's
agree exactly on maps the task saved.

The task, for a trained model:
- maps: ``model.localization_maps(x, y)`` for the ground-truth class, called under ``torch.no_grad()``
  (a method whose map needs gradients enables them itself), resized to each image's size with bicubic
  interpolation and min-max normalised per image, as the reference's inference.py does;
- tau for the classic metrics is chosen on ``data.holdout`` (the first tau of maximal GT-known BoxAcc
  at IoU 50, with the classic box rule), never on test; without a box-annotated holdout, Zhou et al.'s
  fixed 20% of the maximum is used and ``tau_source`` says so;
- on ``data.test``: GT-known / Top-1 / Top-5 Loc at that tau (classic box rule, option
  ``classic_box_rule``: ``largest`` contour by default, or ``all`` contours; Top-5 only when there are
  more than 5 classes), MaxBoxAcc at IoU 30/50/70 with all contours and their mean MaxBoxAccV2,
  MaxBoxAcc V1 (largest contour, IoU 50), and PxAP when the split has masks (no ignore regions);
- a gallery figure of 8 fixed test images (the first image of each of the first 8 classes, filled up
  in index order when there are fewer classes): input, ground-truth boxes (green), predicted boxes
  at the holdout tau (red) and the map overlaid; its path is in ``TaskResult.artifacts["gallery"]``;
- option ``save_scoremaps=DIR``: the test maps are saved as ``RUN/<image_id>.npy`` (float64, image
  size), RUN = ``DIR/<method>-run<id>-seed<seed>``, with a metadata folder ``RUN/metadata`` (boxes,
  and masks as PNGs under ``RUN/metadata/masks``) so that ``evaluate_wsol(RUN/metadata, RUN)``
  reproduces the task's numbers.
A dataset without boxes or masks gives no metrics (a logged warning, no failure). The maps task
scores every map source with the same pieces: ``holdout_tau`` and ``SplitScorer``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import cv2
import numpy as np
import torch

from bench.data.base import Split
from bench.data.metadata import (LOCALIZATION, MaskEntry, WsolMetadata, check_box,
                                  check_mask_files, read_masks, read_metadata, write_metadata)
from bench.errors import BenchError
from bench.registry import TASKS
from bench.tasks.base import Metric, RunContext, Task, TaskResult
from bench.tasks.wsol_metrics import (BOX_RULES, CLASSIC_BOX_RULE, V2_IOU_THRESHOLDS, BoxAccuracy,
                                      WsolEvaluator, best_iou, cam_thresholds, map_boxes, prepare_map,
                                      scale_boxes, topk_loc)

log = logging.getLogger(__name__)

CLASSIC_IOU = 50
FALLBACK_TAU = 0.2  # Zhou et al. 2016: 20% of the map's maximum
GALLERY_SIZE = 8


def check_interval(interval: float, name: str = "cam_curve_interval") -> None:
    """The tau sweep's step must lie in (0, 1): a BenchError naming ``name`` otherwise."""
    if not 0 < interval < 1:
        raise BenchError(f"{name} must lie in (0, 1), got {interval}", name)


def load_scoremap(path: Path) -> np.ndarray:
    """A saved score map, validated as the reference requires: 2-D floats in [0, 1], no NaN."""
    if not path.is_file():
        raise BenchError(f"{path}: score map missing; expected one <image_id>.npy per line of image_ids.txt")
    try:
        scoremap = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):  # numpy calls any non-.npy file "pickled data"
        with open(path, "rb") as f:
            npy = f.read(6) == b"\x93NUMPY"
        what = "a damaged .npy file, or one of Python objects" if npy else "not a .npy file"
        raise BenchError(f"{path}: not a numeric score map ({what}); save each map as a 2-D "
                         f"float array with numpy.save") from None
    if not np.issubdtype(scoremap.dtype, np.floating):
        raise BenchError(f"{path}: score map must hold floating-point scores, got dtype {scoremap.dtype}")
    if scoremap.ndim != 2 or scoremap.size == 0:
        raise BenchError(f"{path}: score map must be a non-empty 2-D (height, width) array, "
                         f"got shape {scoremap.shape}")
    if np.isnan(scoremap).any():
        raise BenchError(f"{path}: score map contains NaN")
    if scoremap.min() < 0 or scoremap.max() > 1:
        raise BenchError(f"{path}: score map values must lie in [0, 1], got min {scoremap.min():.6g}, "
                         f"max {scoremap.max():.6g} (normalise it per image)")
    return scoremap.astype(np.float64)


def evaluate_wsol(metadata_dir: str | Path, scoremap_dir: str | Path, cam_curve_interval: float = 0.01,
                  multi_contour: bool = True, iou_thresholds: Sequence[int] = V2_IOU_THRESHOLDS,
                  mask_root: Optional[str | Path] = None) -> dict:
    """Evaluate saved score maps ``<scoremap_dir>/<image_id>.npy`` against a metadata folder whose
    mask paths resolve under ``mask_root`` (default: the metadata folder; the reference's
    ``--mask_root`` for its own metadata).

    Each map is scored on its own grid (boxes and masks are scaled to it, as the reference scales them
    to its 224 x 224 maps). Returns ``maxboxacc`` per IoU threshold (under the box rule:
    ``multi_contour`` = all contours, else the largest), their mean ``maxboxacc_mean`` (named
    ``maxboxacc_v2`` too when it is MaxBoxAccV2), ``best_tau``, ``maxboxacc_v1`` and, with masks,
    ``pxap``; all in percent.
    """
    check_interval(cam_curve_interval)
    if not iou_thresholds or any(not 0 < t <= 100 for t in iou_thresholds):
        raise BenchError(f"iou_thresholds are percentages in (0, 100], got {list(iou_thresholds)}",
                         "iou_thresholds")
    if mask_root is not None and not Path(mask_root).is_dir():
        raise BenchError(f"mask_root {mask_root}: not a directory", "mask_root")
    meta = read_metadata(metadata_dir, mask_root)
    check_mask_files(meta, Path(metadata_dir) / LOCALIZATION)
    root = Path(scoremap_dir)
    if not root.is_dir():
        raise BenchError(f"{root}: not a directory of score maps")
    evaluator = WsolEvaluator(cam_curve_interval, multi_contour, iou_thresholds)
    for image_id in meta.image_ids:
        scoremap = load_scoremap(root / f"{image_id}.npy")
        size = (scoremap.shape[1], scoremap.shape[0])
        boxes = scale_boxes(meta.boxes[image_id], meta.image_sizes[image_id], size) if meta.boxes else None
        foreground, ignore = read_masks(meta, image_id, size) if meta.masks else (None, None)
        evaluator.add(scoremap, boxes, foreground, ignore)
    where = {"mask_root": str(meta.root)} if meta.masks else {}
    return {**evaluator.results(), "metadata": str(metadata_dir), "scoremaps": str(scoremap_dir),
            **where}


@dataclass
class MapItem:
    """One image's evaluated map with what the metrics and the gallery need."""

    index: int  # the image's index in its split
    image: torch.Tensor  # the network input (C, H, W), normalised
    label: int
    ranked: np.ndarray  # classes by decreasing score (top 5 at most)
    scoremap: np.ndarray  # (height, width) in [0, 1], at the image size


def model_maps(model: torch.nn.Module, split: Split, batch_size: int,
               device: torch.device) -> Iterator[MapItem]:
    """The ground-truth-class map of every image of ``split``, in index order."""
    index = 0
    for x, y in split.batches(batch_size, train=False, device=device):
        with torch.no_grad():
            scores = model(x)
            raw = model.localization_maps(x, y).detach().float().cpu().numpy()
        ranked = scores.topk(min(5, scores.shape[1]), dim=1).indices.cpu().numpy()
        for j in range(len(y)):
            yield MapItem(index, x[j], int(y[j]), ranked[j], prepare_map(raw[j], split.image_size(index)))
            index += 1


def split_maxboxacc_v2(model: torch.nn.Module, split: Split, batch_size: int, device: torch.device,
                       interval: float = 0.01) -> float:
    """MaxBoxAccV2 (%) of ``model``'s maps on a box-annotated split (e.g. the holdout, to select
    hyper-parameters the reference way: Choe et al. 2020, Sec. 5.2)."""
    if split is None or split.boxes is None:
        raise BenchError("selecting by WSOL needs a box-annotated holdout split; this dataset has "
                         "none (use select accuracy)", "select")
    evaluator = WsolEvaluator(interval, True, V2_IOU_THRESHOLDS)
    for item in model_maps(model, split, batch_size, device):
        evaluator.add(item.scoremap, _gt_boxes(split, item.index))
    return float(evaluator.results()["maxboxacc_v2"])


def _gt_boxes(split: Split, index: int) -> np.ndarray:
    """Image ``index``'s ground-truth boxes, checked to lie inside the image."""
    boxes = np.asarray(split.boxes[index], dtype=np.int64).reshape(-1, 4)
    if len(boxes) == 0:
        raise BenchError(f"image {split.ids[index]!r} has no ground-truth box")
    for box in boxes.tolist():
        check_box(tuple(box), split.image_size(index), f"image {split.ids[index]!r}")
    return boxes


def holdout_tau(holdout: Optional[Split], maps: Callable[[Split], Iterable[MapItem]], rule: str,
                thresholds: np.ndarray, dataset: str) -> tuple[float, str]:
    """(tau, source): the first tau of best GT-known BoxAcc at IoU 50 over ``maps(holdout)``, or
    the classic 0.2 when there is no box-annotated holdout (then ``maps`` is never called)."""
    if holdout is None or holdout.boxes is None:
        log.warning("%s has no box-annotated holdout split; the classic metrics use tau = %.2f",
                    dataset, FALLBACK_TAU)
        return FALLBACK_TAU, "fixed (no holdout)"
    accuracy = BoxAccuracy(thresholds, (CLASSIC_IOU,))
    for item in maps(holdout):
        accuracy.add(map_boxes(item.scoremap, thresholds).select(rule), _gt_boxes(holdout, item.index))
    return accuracy.best_threshold(CLASSIC_IOU)[1], "holdout"


def gallery_indices(labels: Sequence[int], count: int = GALLERY_SIZE) -> list[int]:
    """The first image of each of the first ``count`` classes, filled up in index order."""
    labels = [int(v) for v in labels]
    first: dict[int, int] = {}
    for i, label in enumerate(labels):
        first.setdefault(label, i)
    chosen = [first[c] for c in sorted(first)][:count]
    rest = [i for i in range(len(labels)) if i not in set(chosen)]
    return sorted(chosen + rest[:count - len(chosen)])


def display_image(image: torch.Tensor) -> tuple[np.ndarray, Optional[str]]:
    """A normalised input as an image to show (rescaled to [0, 1]) and its colour map."""
    array = image.detach().float().cpu().numpy()
    array = (array - array.min()) / max(float(array.max() - array.min()), 1e-12)
    if array.shape[0] == 3:
        return array.transpose(1, 2, 0), None
    return array[0], "gray"


def save_gallery(path: Path, items: list[MapItem], gt: dict[int, np.ndarray], predicted: dict[int, np.ndarray],
                 title: str, class_names: Sequence[str]) -> Path:
    """Two rows per image column: the input with its boxes, and the map overlaid with the same boxes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    fig = Figure(figsize=(2.0 * len(items), 4.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(items), squeeze=False)
    for col, item in enumerate(items):
        height, width = item.scoremap.shape
        extent = (-0.5, width - 0.5, height - 0.5, -0.5)
        image, cmap = display_image(item.image)
        name = class_names[item.label] if item.label < len(class_names) else str(item.label)
        top1 = int(item.ranked[0])
        guess = class_names[top1] if top1 < len(class_names) else str(top1)
        for row, ax in enumerate(axes[:, col]):
            ax.imshow(image, cmap=cmap, extent=extent)
            if row == 1:
                ax.imshow(item.scoremap, cmap="jet", alpha=0.5, vmin=0, vmax=1, extent=extent)
            for boxes, colour in ((gt.get(item.index, np.zeros((0, 4))), "lime"),
                                  (predicted[item.index], "red")):
                for x0, y0, x1, y1 in np.asarray(boxes).tolist():
                    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1,
                                           fill=False, edgecolor=colour, linewidth=1.2))
            ax.set_axis_off()
        axes[0, col].set_title(f"{name}\npred: {guess}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _ignore_mask(split: Split, index: int) -> Optional[np.ndarray]:
    """The image's ignore region (pixels PxAP leaves out), or None."""
    masks = getattr(split, "ignore_masks", None)
    mask = masks[index] if masks is not None else None
    return None if mask is None else mask.cpu().numpy().astype(bool)


class _ScoremapWriter:
    """Writes the test maps as ``<dir>/<image_id>.npy`` and the split's metadata in ``<dir>/metadata``."""

    def __init__(self, root: Path, split: Split) -> None:
        self.root, self.split = root, split
        self.meta = WsolMetadata(root / "metadata", [], {})

    def add(self, item: MapItem) -> None:
        image_id = self.split.ids[item.index]
        path = self.root / f"{image_id}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, item.scoremap)
        self.meta.image_ids.append(image_id)
        self.meta.class_labels[image_id] = item.label
        self.meta.image_sizes[image_id] = tuple(self.split.image_size(item.index))
        if self.split.boxes is not None:
            self.meta.boxes[image_id] = np.asarray(self.split.boxes[item.index]).reshape(-1, 4)
        if self.split.masks is not None:
            mask_path = f"masks/{image_id}.png"
            target = self.meta.root / mask_path
            target.parent.mkdir(parents=True, exist_ok=True)
            mask = self.split.masks[item.index].cpu().numpy().astype(np.uint8) * 255
            if not cv2.imwrite(str(target), mask):
                raise BenchError(f"{target}: could not write the mask PNG")
            ignore, ignore_path = _ignore_mask(self.split, item.index), ""
            if ignore is not None:
                ignore_path = f"masks/{image_id}.ignore.png"
                if not cv2.imwrite(str(self.meta.root / ignore_path), ignore.astype(np.uint8) * 255):
                    raise BenchError(f"{self.meta.root / ignore_path}: could not write the mask PNG")
            self.meta.masks[image_id] = MaskEntry((mask_path,), ignore_path)

    def close(self) -> Path:
        return write_metadata(self.meta, self.meta.root)


class SplitScorer:
    """Every metric of the wsol task for one split's maps, streamed image by image: the
    evaluator's MaxBoxAcc (all contours, IoU 30/50/70), MaxBoxAcc V1 and PxAP, and the classic
    GT-known / Top-1 / Top-5 Loc at one ``tau`` chosen elsewhere (on the holdout)."""

    def __init__(self, split: Split, tau: float, tau_source: str, rule: str,
                 cam_curve_interval: float) -> None:
        self.split, self.tau, self.tau_source, self.rule = split, tau, tau_source, rule
        self.tau_grid = np.array([tau])
        self.evaluator = WsolEvaluator(cam_curve_interval, True, V2_IOU_THRESHOLDS)
        self.box_ok: list[bool] = []
        self.labels: list[int] = []
        self.ranked: list[np.ndarray] = []

    def add(self, item: MapItem) -> np.ndarray:
        """Score one image's map; returns its predicted boxes at tau (under the classic rule)."""
        split, index = self.split, item.index
        gt = _gt_boxes(split, index) if split.boxes is not None else None
        foreground = split.masks[index].cpu().numpy() if split.masks is not None else None
        self.evaluator.add(item.scoremap, gt, foreground, _ignore_mask(split, index))
        boxes = map_boxes(item.scoremap, self.tau_grid).select(self.rule)
        if gt is not None:
            self.box_ok.append(best_iou(boxes, gt)[0] >= CLASSIC_IOU / 100)
        self.labels.append(item.label)
        self.ranked.append(item.ranked)
        return boxes[0]

    def metrics(self, num_classes: int) -> list[Metric]:
        """The split's metrics, each with how it was obtained in ``extra``."""
        results = self.evaluator.results()
        interval = results["cam_curve_interval"]
        labels, ranked = np.array(self.labels), np.stack(self.ranked)
        metrics: list[Metric] = []
        if self.box_ok:
            classic = {"tau": self.tau, "tau_source": self.tau_source, "box_rule": BOX_RULES[self.rule],
                       "iou_threshold": CLASSIC_IOU, "cam_curve_interval": interval}
            metrics.append(Metric("gt_known_loc", topk_loc(self.box_ok, labels), "%", classic))
            metrics.append(Metric("top1_loc", topk_loc(self.box_ok, labels, ranked, 1), "%", classic))
            if num_classes > 5:
                metrics.append(Metric("top5_loc", topk_loc(self.box_ok, labels, ranked, 5), "%",
                                      classic))
            sweep = {"cam_curve_interval": interval, "box_rule": results["box_rule"],
                     "tau_chosen_on": "test (max over tau, as MaxBoxAcc defines it)"}
            metrics.append(Metric("maxboxacc_v2", results["maxboxacc_v2"], "%",
                                  {**sweep, "iou_thresholds": list(V2_IOU_THRESHOLDS)}))
            for delta in V2_IOU_THRESHOLDS:
                metrics.append(Metric(f"maxboxacc_{delta}", results["maxboxacc"][str(delta)], "%",
                                      {**sweep, "iou_threshold": delta,
                                       "best_tau": results["best_tau"][str(delta)]}))
            metrics.append(Metric("maxboxacc_v1", results["maxboxacc_v1"], "%",
                                  {**sweep, "box_rule": BOX_RULES["largest"], "iou_threshold": 50}))
        if "pxap" in results:
            ignore_regions = getattr(self.split, "ignore_masks", None) is not None
            metrics.append(Metric("pxap", results["pxap"], "%", {"cam_curve_interval": interval,
                                                                "ignore_regions": ignore_regions}))
        return metrics


def check_wsol_options(options: dict[str, Any], task: str) -> None:
    """The options a task shares with wsol (``cam_curve_interval``, ``classic_box_rule``)."""
    check_interval(options["cam_curve_interval"], f"task '{task}': option cam_curve_interval")
    if options["classic_box_rule"] not in BOX_RULES:
        raise BenchError(f"task '{task}': option classic_box_rule="
                         f"{options['classic_box_rule']!r}; valid: {', '.join(BOX_RULES)}")


def has_annotations(split: Split) -> bool:
    """Whether a split has boxes or masks to score maps against."""
    return split.boxes is not None or split.masks is not None


class WsolTask(Task):
    """Weakly-supervised object localization of a trained classifier (see the module docstring)."""

    name = "wsol"
    needs_training = True
    output_options = ("save_scoremaps",)

    def check(self, options: dict[str, Any]) -> None:
        check_wsol_options(options, self.name)

    def run(self, ctx: RunContext) -> TaskResult:
        interval, rule = ctx.options["cam_curve_interval"], ctx.options["classic_box_rule"]
        save_dir = Path(ctx.options["save_scoremaps"]) if ctx.options["save_scoremaps"] else None
        test = ctx.data.test
        if not has_annotations(test):
            log.warning("wsol: dataset %s has no boxes or masks on its test split; no WSOL metrics",
                        ctx.data.name)
            return TaskResult()
        batch_size = ctx.recipe.eval_batch_size
        tau, tau_source = holdout_tau(ctx.data.holdout,
                                      lambda split: model_maps(ctx.model, split, batch_size, ctx.device),
                                      rule, cam_thresholds(interval), ctx.data.name)
        scorer = SplitScorer(test, tau, tau_source, rule, interval)
        if save_dir is not None:  # one folder per run, so runs sharing DIR never overwrite
            save_dir = save_dir / f"{ctx.method.name}-run{ctx.run_id}-seed{ctx.seed}"
        writer = _ScoremapWriter(save_dir, test) if save_dir is not None else None
        chosen = set(gallery_indices(test.labels.tolist()))
        shown: list[MapItem] = []
        gt_shown: dict[int, np.ndarray] = {}
        predicted: dict[int, np.ndarray] = {}
        for item in model_maps(ctx.model, test, batch_size, ctx.device):
            boxes = scorer.add(item)
            if writer is not None:
                writer.add(item)
            if item.index in chosen:
                shown.append(item)
                predicted[item.index] = boxes
                if test.boxes is not None:
                    gt_shown[item.index] = _gt_boxes(test, item.index)
        if writer is not None:
            log.info("wsol: test score maps saved to %s, metadata in %s", save_dir, writer.close())
        title = (f"{ctx.method} on {ctx.backbone}, {ctx.data.name}: boxes at tau={tau:.3f} "
                 f"({tau_source}, {BOX_RULES[rule]}); green = ground truth, red = predicted")
        gallery = save_gallery(ctx.out_dir / "figures" / f"gallery-run{ctx.run_id}.png", shown, gt_shown,
                               predicted, title, ctx.data.class_names)
        return TaskResult(metrics=scorer.metrics(ctx.data.num_classes),
                          artifacts={"gallery": str(gallery)})


TASKS.add("wsol", WsolTask(),
          "weakly-supervised localization: GT-known/Top-1/Top-5 Loc (tau from the holdout), "
          "MaxBoxAccV2, MaxBoxAcc, PxAP; a gallery figure",
          cam_curve_interval=0.01, classic_box_rule=CLASSIC_BOX_RULE, save_scoremaps=None, order=10)

__all__ = ["MapItem", "SplitScorer", "WsolTask", "check_wsol_options", "display_image",
           "evaluate_wsol", "has_annotations", "holdout_tau", "load_scoremap", "model_maps"]
