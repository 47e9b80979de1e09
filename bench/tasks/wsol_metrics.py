"""WSOL localization metrics (numpy/cv2 only), written to give the same numbers as the reference
evaluator of Choe et al., "Evaluating Weakly Supervised Object Localization Methods Right" (CVPR 2020),
clovaai/wsolevaluation (evaluation.py, inference.py, util.py), on the same inputs.

Reference behaviour followed here, detail by detail:

- Map preparation (reference inference.py): the raw class map, in float64, is resized to the image with
  ``cv2.resize(..., interpolation=cv2.INTER_CUBIC)``, then min-max normalised per image as
  ``m -= m.min(); m /= m.max()``; a constant map becomes all zeros. The reference also returns zeros for
  a map containing NaN; here any non-finite map gives zeros.
- Boxes from a map at threshold tau (reference ``compute_bboxes_from_scoremaps``): quantise to 8 bits by
  truncation, ``q = (s * 255).astype(uint8)``; the integer threshold is ``int(tau * q.max())`` (relative
  to the quantised maximum, 255 for a normalised map); pixels strictly above it are kept
  (``cv2.threshold`` with ``THRESH_BINARY``); contours come from
  ``cv2.findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)``. RETR_TREE also lists the inner contours of
  holes, and with all contours each of them is a candidate box too. A contour's ``cv2.boundingRect``
  ``(x, y, w, h)`` gives the box ``(x, y, min(x + w, W - 1), min(y + h, H - 1))``: one pixel past the
  contour's last column and row (then clipped to the map), exactly as the reference does. The largest
  contour is the first of maximal ``cv2.contourArea`` (polygon area: a one-pixel blob has area 0).
  No contour gives the single box (0, 0, 0, 0), which inclusive counting treats as the pixel at the
  origin, not as an empty box.
- IoU (reference ``calculate_multiple_iou``): inclusive pixel counts, area = (x1 - x0 + 1)(y1 - y0 + 1);
  a pair whose union is <= 0 gets IoU 0.
- BoxAcc(tau, delta): an image is correct when the best IoU over all (candidate box, ground-truth box)
  pairs is >= delta / 100. MaxBoxAcc(delta) = max over tau of ``correct * 100 / n``, tau swept over
  ``np.arange(0, 1, cam_curve_interval)``, each delta optimised separately. MaxBoxAccV2 = mean of
  MaxBoxAcc at delta 30, 50, 70 with all contours (reference ``multi_contour_eval`` and
  ``multi_iou_eval``, its training defaults); MaxBoxAcc (V1) = largest contour at delta 50 (the
  reference with both flags off).
- Ground-truth boxes are given in image pixels and are scaled to the score map's grid by
  ``int(x * map_w / image_w)`` (reference ``resize_bbox``, which scales them to the 224 x 224 grid its
  maps are saved at). For a map at image size this is the identity.
- PxAP (reference ``MaskEvaluator``): histograms of the scores of foreground and of background pixels,
  pooled over the whole split, with bin edges ``thresholds + [1, 2, 3]`` (``np.histogram``: half-open
  bins, so a score of 1.0 falls in [1, 2)); tp and fp are the reversed cumulative sums (pixels >= each
  edge, from the top); precision = tp / (tp + fp), recall = tp / #foreground;
  PxAP = 100 * sum_l precision_l * (recall_l - recall_{l-1}) over the edges where tp + fp > 0. Ignore
  pixels (the ignore region minus the foreground) count as neither. A constant map therefore scores the
  foreground fraction of the split.

The classic protocol (Zhou et al. 2016): GT-known Loc = % of images whose ground-truth-class map gives a
box with IoU >= 0.5 at one fixed tau; Top-1 / Top-5 Loc additionally need the ground-truth class among
the top 1 / 5 predictions (the box of a correctly predicted class is the box of the ground-truth class's
map, so no other class's map is needed). Its "largest connected component" is taken here, as in the
reference V1 and the WSOL code that followed CAM, as the largest contour of the pipeline above
(``CLASSIC_BOX_RULE``, switchable to all contours). The fixed tau is chosen on a held-out split as the
first tau of maximal GT-known BoxAcc at delta 50 (``BoxAccuracy.best_threshold``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import cv2
import numpy as np

from bench.errors import BenchError

BOX_RULES = {"all": "all contours", "largest": "largest contour"}
CLASSIC_BOX_RULE = "largest"
V2_IOU_THRESHOLDS = (30, 50, 70)


def cam_thresholds(cam_curve_interval: float) -> np.ndarray:
    """The tau grid ``np.arange(0, 1, interval)`` (float64), as the reference sweeps it."""
    interval = float(cam_curve_interval)
    if not 0.0 < interval < 1.0:
        raise BenchError(f"cam curve interval must be in (0, 1), e.g. 0.01; got {cam_curve_interval}")
    return np.arange(0, 1, interval)


def check_iou_thresholds(iou_thresholds: Sequence[int]) -> tuple[int, ...]:
    """IoU thresholds delta in percent: integers in 1..100, at least one."""
    values = tuple(iou_thresholds)
    if not values or any(isinstance(d, bool) or int(d) != d or not 1 <= d <= 100 for d in values):
        raise BenchError(f"IoU thresholds are integer percentages in 1..100, e.g. 30 50 70; got {values}")
    return tuple(int(d) for d in values)


def resize_map(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A raw 2-D map resized to ``size`` = (width, height) with bicubic interpolation, in float64."""
    return cv2.resize(np.asarray(raw, dtype=np.float64), tuple(int(s) for s in size),
                      interpolation=cv2.INTER_CUBIC)


def normalize_map(scoremap: np.ndarray) -> np.ndarray:
    """Min-max normalisation to [0, 1]; a constant (or non-finite) map becomes all zeros."""
    m = np.array(scoremap, dtype=np.float64)
    if not np.isfinite(m).all() or m.min() == m.max():
        return np.zeros_like(m)
    m -= m.min()
    m /= m.max()
    return m


def prepare_map(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A network's raw map as the reference scores it: resized to the image, then normalised."""
    return normalize_map(resize_map(raw, size))


def quantize(scoremap: np.ndarray) -> np.ndarray:
    """The 8-bit map the boxes are drawn from: ``(s * 255)`` truncated to uint8."""
    return (np.asarray(scoremap, dtype=np.float64) * 255).astype(np.uint8)


def iou_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of every pair of (x0, y0, x1, y1) boxes with inclusive pixel counts: shape (len a, len b)."""
    a = np.asarray(boxes_a, dtype=np.int64).reshape(-1, 4)[:, None, :]
    b = np.asarray(boxes_b, dtype=np.int64).reshape(-1, 4)[None, :, :]
    inter_w = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    inter_h = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    inter = inter_w * inter_h
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    union = area_a + area_b - inter
    degenerate = union <= 0
    iou = inter / np.where(degenerate, 1, union)
    iou[degenerate] = 0.0
    return iou


def scale_boxes(boxes: np.ndarray, image_size: tuple[int, int], map_size: tuple[int, int]) -> np.ndarray:
    """Boxes in image pixels moved to a map's grid (sizes are (width, height)) by truncation."""
    (image_w, image_h), (map_w, map_h) = image_size, map_size
    out = [(int(float(x0) * map_w / image_w), int(float(y0) * map_h / image_h),
            int(float(x1) * map_w / image_w), int(float(y1) * map_h / image_h))
           for x0, y0, x1, y1 in np.asarray(boxes).reshape(-1, 4)]
    return np.array(out, dtype=np.int64).reshape(-1, 4)


def _contour_boxes(quantized: np.ndarray,
                   thresholds: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each integer threshold, the boxes of every contour of ``quantized > threshold`` and of
    the largest one. The binary maps are stacked, one background row between two, and traced by
    one ``cv2.findContours`` call: a map's contours cannot touch another's, and they come out in
    the same order as when traced alone (raster order of their first pixel). Each contour's
    ``cv2.boundingRect`` (integer points: min, and max - min + 1) and ``cv2.contourArea`` (the
    shoelace sum, exact in integers) are computed for all contours at once."""
    height, width = quantized.shape
    pitch = height + 1
    stacked = np.zeros((len(thresholds), pitch, width), dtype=np.uint8)
    stacked[:, :height] = np.where(quantized[None] > thresholds[:, None, None], 255, 0)
    contours = cv2.findContours(stacked.reshape(-1, width), cv2.RETR_TREE,
                                cv2.CHAIN_APPROX_SIMPLE)[-2]
    none = np.zeros((1, 4), dtype=np.int64)
    if len(contours) == 0:
        return [(none, none)] * len(thresholds)
    lengths = np.fromiter((len(c) for c in contours), dtype=np.int64, count=len(contours))
    points = np.concatenate(contours).reshape(-1, 2).astype(np.int64)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    x, y = points[:, 0], points[:, 1]
    top = np.minimum.reduceat(y, starts)
    tile = top // pitch
    offset = tile * pitch
    boxes = np.stack([np.minimum.reduceat(x, starts), top - offset,
                      np.minimum(np.maximum.reduceat(x, starts) + 1, width - 1),
                      np.minimum(np.maximum.reduceat(y, starts) - offset + 1, height - 1)], axis=1)
    following = np.arange(1, len(points) + 1)
    following[starts + lengths - 1] = starts  # each contour is closed
    twice_area = np.abs(np.add.reduceat(x * y[following] - x[following] * y, starts))
    order = np.argsort(tile, kind="stable")  # per map, in the order traced
    bounds = np.searchsorted(tile[order], np.arange(len(thresholds) + 1))
    boxes, twice_area = boxes[order], twice_area[order]
    traced = np.flatnonzero(bounds[1:] > bounds[:-1])  # maps with at least one contour
    peak = np.repeat(np.maximum.reduceat(twice_area, bounds[traced]), np.diff(bounds)[traced])
    # the first of maximal area in each map: the first position at or after its start at its peak
    at_peak = np.flatnonzero(twice_area == peak)
    largest = at_peak[np.searchsorted(at_peak, bounds[traced])]
    out = [(none, none)] * len(thresholds)
    for k, pick in zip(traced, largest):
        out[k] = (boxes[bounds[k]:bounds[k + 1]], boxes[pick:pick + 1])
    return out


@dataclass(frozen=True)
class MapBoxes:
    """The candidate boxes of one score map at each tau: every contour's, and the largest contour's."""

    all: list[np.ndarray]
    largest: list[np.ndarray]

    def select(self, rule: str) -> list[np.ndarray]:
        """Candidates per tau under a box rule, "all" (V2) or "largest" (V1, classic)."""
        if rule not in BOX_RULES:
            raise BenchError(f"unknown box rule {rule!r}; valid: {', '.join(BOX_RULES)}")
        return self.all if rule == "all" else self.largest


def map_boxes(scoremap: np.ndarray, thresholds: np.ndarray) -> MapBoxes:
    """Candidate boxes of a [0, 1] score map at each tau. Contours are traced once per distinct
    binary map (two integer thresholds with no quantised value between them give the same one),
    all of them in one call."""
    quantized = quantize(scoremap)
    peak = int(quantized.max())
    integer = np.array([int(tau * peak) for tau in np.asarray(thresholds, dtype=np.float64)],
                       dtype=np.int64)
    masks = np.searchsorted(np.unique(quantized), integer, side="right")  # a binary map's identity
    _, first, which = np.unique(masks, return_index=True, return_inverse=True)
    traced = _contour_boxes(quantized, integer[first])
    return MapBoxes([traced[i][0] for i in which], [traced[i][1] for i in which])


def best_iou(candidates: Sequence[np.ndarray], gt_boxes: np.ndarray) -> np.ndarray:
    """For each tau, the best IoU between any of its candidate boxes and any ground-truth box."""
    counts = np.array([len(c) for c in candidates])
    ious = iou_matrix(np.concatenate(candidates), gt_boxes).max(axis=1)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    return np.maximum.reduceat(ious, starts)


class BoxAccuracy:
    """Streaming BoxAcc(tau, delta) over a split: counts of correct images per tau and IoU threshold."""

    def __init__(self, thresholds: np.ndarray, iou_thresholds: Sequence[int] = V2_IOU_THRESHOLDS) -> None:
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self.iou_thresholds = check_iou_thresholds(iou_thresholds)
        self.correct = {d: np.zeros(len(self.thresholds), dtype=np.int64) for d in self.iou_thresholds}
        self.count = 0

    def add(self, candidates: Sequence[np.ndarray], gt_boxes: np.ndarray) -> np.ndarray:
        """Score one image from its candidates per tau; returns its best IoU per tau."""
        iou = best_iou(candidates, gt_boxes)
        for delta in self.iou_thresholds:
            self.correct[delta] += iou >= delta / 100
        self.count += 1
        return iou

    def accuracy(self, delta: int) -> np.ndarray:
        """BoxAcc in percent at every tau for IoU threshold ``delta``."""
        if self.count == 0:
            raise BenchError("box accuracy of an empty split: no image was evaluated")
        return self.correct[delta] * 100.0 / float(self.count)

    def max_box_acc(self) -> dict[int, float]:
        """MaxBoxAcc(delta) in percent for each IoU threshold."""
        return {d: float(self.accuracy(d).max()) for d in self.iou_thresholds}

    def best_threshold(self, delta: int) -> tuple[int, float]:
        """(index, tau) of the first tau of maximal BoxAcc at ``delta``."""
        index = int(np.argmax(self.accuracy(delta)))
        return index, float(self.thresholds[index])


class PixelAP:
    """Streaming PxAP: score histograms of foreground and background pixels pooled over a split."""

    def __init__(self, thresholds: np.ndarray) -> None:
        self.edges = np.append(np.asarray(thresholds, dtype=np.float64), [1.0, 2.0, 3.0])
        self.foreground = np.zeros(len(self.edges) - 1, dtype=np.int64)
        self.background = np.zeros(len(self.edges) - 1, dtype=np.int64)

    def add(self, scoremap: np.ndarray, foreground: np.ndarray, ignore: Optional[np.ndarray] = None) -> None:
        """Pool one image: ``foreground`` and ``ignore`` are boolean masks of the map's shape."""
        foreground = np.asarray(foreground, dtype=bool)
        background = ~foreground if ignore is None else ~foreground & ~np.asarray(ignore, dtype=bool)
        self.foreground += np.histogram(scoremap[foreground], bins=self.edges)[0]
        self.background += np.histogram(scoremap[background], bins=self.edges)[0]

    def value(self) -> float:
        """PxAP in percent."""
        num_foreground = int(self.foreground.sum())
        if num_foreground == 0:
            raise BenchError("PxAP needs foreground pixels; the masks of this split are all empty")
        tp = self.foreground[::-1].cumsum()
        fp = self.background[::-1].cumsum()
        predicted = tp + fp
        nonzero = predicted != 0
        precision = np.divide(tp, predicted, out=np.zeros(len(tp)), where=nonzero)
        recall = tp / num_foreground
        return float((precision[1:] * np.diff(recall))[nonzero[1:]].sum() * 100)


def topk_loc(box_correct: np.ndarray, labels: np.ndarray, ranked: Optional[np.ndarray] = None,
             k: int = 1) -> float:
    """Classic Loc in percent: GT-known (``ranked`` None) or Top-k, given per image whether the
    ground-truth class's box is correct and the classes ranked by score (N, >= k)."""
    correct = np.asarray(box_correct, dtype=bool)
    if ranked is not None:
        correct = correct & (np.asarray(ranked)[:, :k] == np.asarray(labels)[:, None]).any(axis=1)
    return 100.0 * float(correct.mean())


class WsolEvaluator:
    """Every WSOL metric of one split, streamed image by image: MaxBoxAcc under the chosen box rule
    at each IoU threshold, MaxBoxAcc V1 (largest contour, delta 50), and PxAP where masks are given."""

    def __init__(self, cam_curve_interval: float = 0.01, multi_contour: bool = True,
                 iou_thresholds: Sequence[int] = V2_IOU_THRESHOLDS) -> None:
        self.interval = float(cam_curve_interval)
        self.thresholds = cam_thresholds(cam_curve_interval)
        self.rule = "all" if multi_contour else "largest"
        self.boxes = BoxAccuracy(self.thresholds, iou_thresholds)
        self.v1 = BoxAccuracy(self.thresholds, (50,))
        self.pxap = PixelAP(self.thresholds)
        self.num_images = 0
        self.num_masks = 0

    def add(self, scoremap: np.ndarray, gt_boxes: Optional[np.ndarray] = None,
            foreground: Optional[np.ndarray] = None,
            ignore: Optional[np.ndarray] = None) -> None:
        """Score one [0, 1] map against its boxes (in the map's grid) and/or its masks."""
        self.num_images += 1
        if gt_boxes is not None:
            candidates = map_boxes(scoremap, self.thresholds)
            self.boxes.add(candidates.select(self.rule), gt_boxes)
            self.v1.add(candidates.largest, gt_boxes)
        if foreground is not None:
            self.pxap.add(scoremap, foreground, ignore)
            self.num_masks += 1

    def results(self) -> dict:
        """The metrics as a JSON-ready dict; box metrics only if boxes were given, PxAP if masks."""
        out: dict = {"num_images": self.num_images, "cam_curve_interval": self.interval,
                     "box_rule": BOX_RULES[self.rule],
                     "iou_thresholds": list(self.boxes.iou_thresholds)}
        if self.boxes.count:
            per_delta = self.boxes.max_box_acc()
            out["maxboxacc"] = {str(d): v for d, v in per_delta.items()}
            out["maxboxacc_mean"] = float(np.mean(list(per_delta.values())))
            out["best_tau"] = {str(d): self.boxes.best_threshold(d)[1] for d in per_delta}
            if self.rule == "all" and self.boxes.iou_thresholds == V2_IOU_THRESHOLDS:
                out["maxboxacc_v2"] = out["maxboxacc_mean"]
            out["maxboxacc_v1"] = self.v1.max_box_acc()[50]
        if self.num_masks:
            out["pxap"] = self.pxap.value()
        return out
