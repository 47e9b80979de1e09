"""WSOL metrics, metadata folders and the standalone evaluator, on hand-made inputs with known answers.
Cases marked "reference" use the inputs and expected outputs of clovaai/wsolevaluation's own tests."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from bench.data.metadata import MaskEntry, WsolMetadata, read_masks, read_metadata, write_metadata
from bench.errors import BenchError
from bench.tasks.wsol import evaluate_wsol
from bench.tasks.wsol_metrics import (BoxAccuracy, PixelAP, WsolEvaluator, best_iou, cam_thresholds,
                                      iou_matrix, map_boxes, normalize_map, prepare_map, quantize,
                                      scale_boxes, topk_loc)

GRID = cam_thresholds(0.01)


def box_map(shape, boxes, value=1.0):
    """A map that is ``value`` inside the inclusive boxes and 0 elsewhere."""
    m = np.zeros(shape)
    for x0, y0, x1, y1 in boxes:
        m[y0:y1 + 1, x0:x1 + 1] = value
    return m


def max_acc(scoremaps, gt, rule, deltas=(30, 50, 70)):
    acc = BoxAccuracy(GRID, deltas)
    for m, boxes in zip(scoremaps, gt):
        acc.add(map_boxes(m, GRID).select(rule), np.array(boxes))
    return acc


# --- boxes from maps -------------------------------------------------------------------------------

def test_reference_unimodal_boxes():
    scoremap = np.array([[0.0, 0.0, 0.0, 0.0, 0.0],
                         [0.0, 0.4, 0.4, 0.4, 0.6],
                         [0.0, 0.4, 1.0, 0.8, 0.6],
                         [0.0, 0.4, 0.4, 0.4, 0.6]])
    boxes = map_boxes(scoremap, np.arange(0, 1, 0.2)).largest
    assert [b.tolist() for b in boxes] == [[[1, 1, 4, 3]], [[1, 1, 4, 3]], [[2, 1, 4, 3]],
                                           [[2, 2, 4, 3]], [[2, 2, 3, 3]]]


def test_reference_multimodal_boxes_and_all_contours():
    scoremap = np.array([[0.4, 0.0, 0.2, 0.2, 0.2],
                         [0.4, 0.4, 0.0, 0.4, 0.0],
                         [0.0, 0.0, 0.0, 0.4, 0.0],
                         [1.0, 0.6, 0.8, 0.2, 0.2]])
    boxes = map_boxes(scoremap, np.arange(0, 1, 0.2))
    assert [b.tolist() for b in boxes.largest] == [[[0, 0, 4, 3]], [[0, 0, 2, 2]], [[0, 3, 3, 3]],
                                                   [[2, 3, 3, 3]], [[0, 3, 1, 3]]]
    # every contour: at tau 0.2 the upper-left blob and the right-hand one, at 0.6 two single pixels
    assert boxes.all[1].tolist() == [[0, 1, 4, 3], [0, 0, 2, 2]]
    assert boxes.all[3].tolist() == [[2, 3, 3, 3], [0, 3, 1, 3]]


def test_empty_map_gives_the_origin_box():
    boxes = map_boxes(np.zeros((3, 3)), np.arange(0, 1, 0.2))
    assert all(b.tolist() == [[0, 0, 0, 0]] for b in boxes.all + boxes.largest)


def test_box_is_one_pixel_past_the_contour_and_clipped():
    m = box_map((20, 30), [(2, 3, 5, 7)])
    assert map_boxes(m, [0.5]).all[0].tolist() == [[2, 3, 6, 8]]  # boundingRect x + w, y + h
    m = box_map((20, 30), [(25, 15, 29, 19)])
    assert map_boxes(m, [0.5]).all[0].tolist() == [[25, 15, 29, 19]]  # clipped at W - 1, H - 1


def test_quantisation_and_strict_threshold():
    m = np.zeros((20, 20))
    m[0, 0] = 1.0  # the maximum: quantised 255
    m[5:8, 5:8] = 51.5 / 255  # quantised to 51 = int(0.2 * 255): not above the threshold, dropped
    m[12:15, 12:15] = 52.5 / 255  # quantised to 52: kept
    assert quantize(m)[6, 6] == 51 and quantize(m)[13, 13] == 52
    assert sorted(map_boxes(m, [0.2]).all[0].tolist()) == [[0, 0, 1, 1], [12, 12, 15, 15]]
    # 52/255 - 1e-9 lies above 0.2 but truncates to 51: dropped, as the reference's uint8 cast does
    m[12:15, 12:15] = 52 / 255 - 1e-9
    assert map_boxes(m, [0.2]).all[0].tolist() == [[0, 0, 1, 1]]


def test_threshold_is_relative_to_the_quantised_maximum():
    m = np.zeros((10, 10))
    m[2:4, 2:4] = 0.5  # quantised 127, the maximum
    m[6:8, 6:8] = 0.3  # quantised 76 > int(0.5 * 127) = 63: kept at tau 0.5
    assert sorted(map_boxes(m, [0.5]).all[0].tolist()) == [[2, 2, 4, 4], [6, 6, 8, 8]]
    assert map_boxes(m, [0.7]).all[0].tolist() == [[2, 2, 4, 4]]


# --- IoU and box accuracy ---------------------------------------------------------------------------

def test_reference_iou_values():
    assert iou_matrix([[1, 2, 5, 6]], [[3, 1, 4, 5]])[0, 0] == pytest.approx(8 / 27)
    assert (iou_matrix(np.zeros((3, 4)), np.zeros((5, 4))) == 1).all()  # one pixel vs the same pixel
    eye = np.array([[1, 1, 3, 3], [4, 4, 5, 5]])
    assert (iou_matrix(eye, eye) == np.eye(2)).all()


def test_iou_inclusive_and_degenerate():
    assert iou_matrix([[0, 0, 9, 9]], [[0, 0, 4, 9]])[0, 0] == pytest.approx(50 / 100)
    assert iou_matrix([[5, 5, 3, 3]], [[5, 5, 3, 3]])[0, 0] == 0  # union <= 0


def test_map_equal_to_the_box_scores_100_everywhere():
    gt = [[(10, 12, 30, 40)], [(0, 0, 15, 9), (40, 40, 60, 50)], [(5, 5, 62, 62)]]
    maps = [box_map((64, 64), g) for g in gt]
    for rule in ("all", "largest"):
        acc = max_acc(maps, gt, rule)
        assert acc.max_box_acc() == {30: 100.0, 50: 100.0, 70: 100.0}
        assert all((acc.accuracy(d) == 100).all() for d in (30, 50, 70))


def test_background_only_map_scores_0():
    gt = [(0, 0, 7, 7)]  # an object in the corner; the map lights everything else
    m = 1.0 - box_map((64, 64), gt)
    for rule in ("all", "largest"):
        assert max_acc([m], [gt], rule).max_box_acc() == {30: 0.0, 50: 0.0, 70: 0.0}


def test_hole_contours_are_candidates_with_all_contours():
    # RETR_TREE, as the reference: the hole a lit background leaves around the object is a contour
    # whose box (one pixel around the hole, plus one) matches the 10 x 10 object with IoU 100/169.
    gt = [(20, 20, 29, 29)]
    m = 1.0 - box_map((64, 64), gt)
    assert map_boxes(m, [0.5]).all[0].tolist() == [[0, 0, 63, 63], [19, 19, 31, 31]]
    assert max_acc([m], [gt], "all").max_box_acc() == {30: 100.0, 50: 100.0, 70: 0.0}
    assert max_acc([m], [gt], "largest").max_box_acc() == {30: 0.0, 50: 0.0, 70: 0.0}


def test_two_objects_one_lit_all_contours_vs_largest():
    gt = [(2, 2, 21, 21), (40, 40, 47, 47)]  # two objects; the map lights the small one only...
    m = box_map((64, 64), [(40, 40, 47, 47)])
    m += box_map((64, 64), [(2, 40, 31, 60)])  # ...and a larger distractor on the background
    assert max_acc([m], [gt], "all").max_box_acc() == {30: 100.0, 50: 100.0, 70: 100.0}
    assert max_acc([m], [gt], "largest").max_box_acc() == {30: 0.0, 50: 0.0, 70: 0.0}


def test_max_over_tau_per_delta_and_first_best_tau():
    gt = [(10, 10, 29, 29)]
    m = box_map((40, 40), [(5, 5, 34, 34)], 0.5) + box_map((40, 40), gt, 0.5)  # halo 0.5, object 1
    acc = max_acc([m], [gt], "largest")
    # halo box (5..35)^2 has IoU 400/961 < 0.5 with the object; kept while int(tau*255) < 127
    first = np.argmax(GRID * 255 >= 127)
    assert acc.best_threshold(50) == (first, GRID[first])
    assert acc.best_threshold(30) == (0, 0.0)
    assert (acc.accuracy(50)[:first] == 0).all() and (acc.accuracy(50)[first:] == 100).all()


def test_box_accuracy_counts_images():
    gt = [[(10, 10, 29, 29)], [(0, 0, 9, 9)], [(0, 0, 9, 9)], [(30, 30, 39, 39)]]
    maps = [box_map((40, 40), gt[0]), box_map((40, 40), gt[1]), np.zeros((40, 40)),
            box_map((40, 40), [(0, 0, 9, 9)])]
    # the empty map gives the origin box: IoU 1/100 with (0..9)^2
    assert max_acc(maps, gt, "all").max_box_acc() == {30: 50.0, 50: 50.0, 70: 50.0}


def test_best_iou_takes_each_tau_over_its_own_boxes():
    cands = [np.array([[0, 0, 9, 9], [50, 50, 59, 59]]), np.array([[0, 0, 4, 9]])]
    assert best_iou(cands, np.array([[50, 50, 59, 59], [0, 0, 99, 99]])).tolist() == [1.0, 0.005]


def test_scale_boxes_reference_case_and_identity():
    assert scale_boxes([(1, 2, 4, 3)], (10, 20), (35, 10)).tolist() == [[3, 1, 14, 1]]
    boxes = np.array([[0, 3, 499, 374], [17, 0, 40, 41]])
    assert (scale_boxes(boxes, (500, 375), (500, 375)) == boxes).all()


# --- map preparation ---------------------------------------------------------------------------------

def test_normalize_map():
    assert (normalize_map(np.full((4, 5), 3.2)) == 0).all()
    m = normalize_map(np.array([[-2.0, 0.0], [2.0, 6.0]]))
    assert m.tolist() == [[0.0, 0.25], [0.5, 1.0]]
    assert (normalize_map(np.array([[np.nan, 1.0]])) == 0).all()


def test_prepare_map_resizes_bicubic_then_normalises():
    raw = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = prepare_map(raw, (8, 6))
    assert out.shape == (6, 8) and out.dtype == np.float64 and out.min() == 0 and out.max() == 1
    expected = cv2.resize(raw.astype(np.float64), (8, 6), interpolation=cv2.INTER_CUBIC)
    assert np.allclose(out, (expected - expected.min()) / (expected.max() - expected.min()))


# --- PxAP ----------------------------------------------------------------------------------------------

def brute_force_pxap(scores, foreground, edges):
    """100 * sum_l P(edge_l) (R(edge_l) - R(edge_{l-1})), thresholds from the top, counted directly."""
    total, prev_recall = 0.0, 0.0
    for edge in edges[::-1]:
        predicted = scores >= edge
        if predicted.sum() == 0:
            continue
        recall = (predicted & foreground).sum() / foreground.sum()
        total += (predicted & foreground).sum() / predicted.sum() * (recall - prev_recall)
        prev_recall = recall
    return 100 * total


def test_pxap_perfect_mask_is_100():
    fg = box_map((32, 32), [(4, 4, 20, 12)]) > 0
    ap = PixelAP(GRID)
    ap.add(fg.astype(float), fg)
    assert ap.value() == 100.0


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
def test_pxap_constant_map_is_the_foreground_fraction(value):
    fg1 = box_map((32, 32), [(4, 4, 20, 12)]) > 0
    fg2 = box_map((16, 16), [(0, 0, 3, 3)]) > 0
    ap = PixelAP(GRID)
    for fg in (fg1, fg2):
        ap.add(np.full(fg.shape, value), fg)
    assert ap.value() == pytest.approx(100 * (fg1.sum() + fg2.sum()) / (32 * 32 + 16 * 16))


def test_pxap_pools_pixels_and_matches_brute_force():
    rng = np.random.default_rng(0)
    maps = [rng.random((12, 15)), rng.random((20, 9)) ** 3]
    fgs = [rng.random((12, 15)) < 0.3, rng.random((20, 9)) < 0.6]
    ap = PixelAP(GRID)
    for m, fg in zip(maps, fgs):
        ap.add(m, fg)
    pooled = brute_force_pxap(np.concatenate([m.ravel() for m in maps]),
                              np.concatenate([f.ravel() for f in fgs]), ap.edges[:-1])
    assert ap.value() == pytest.approx(pooled, abs=1e-9)
    per_image = [brute_force_pxap(m.ravel(), f.ravel(), ap.edges[:-1]) for m, f in zip(maps, fgs)]
    assert abs(ap.value() - np.mean(per_image)) > 0.1  # pooled, not averaged per image


def test_pxap_excludes_ignore_pixels():
    fg = box_map((32, 32), [(4, 4, 20, 12)]) > 0
    ignore = box_map((32, 32), [(0, 20, 31, 31)]) > 0
    m = fg.astype(float)
    m[ignore] = 1.0  # high scores on the background, but inside the ignore region
    ap = PixelAP(GRID)
    ap.add(m, fg, ignore)
    assert ap.value() == 100.0


def test_topk_loc():
    box_ok = np.array([True, True, False, True])
    labels = np.array([0, 1, 2, 3])
    ranked = np.array([[0, 5], [2, 1], [2, 0], [4, 5]])
    assert topk_loc(box_ok, labels) == 75.0
    assert topk_loc(box_ok, labels, ranked, 1) == 25.0
    assert topk_loc(box_ok, labels, ranked, 2) == 50.0


# --- metadata folders and the standalone evaluator ----------------------------------------------------

def write_lines(path: Path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def make_folder(tmp_path: Path, localization=None, sizes=None, labels=None, ids=None) -> Path:
    root = tmp_path / "meta"
    root.mkdir(exist_ok=True)
    write_lines(root / "image_ids.txt", ids or ["a/x.jpg", "b.jpg"])
    write_lines(root / "class_labels.txt", labels or ["a/x.jpg,0", "b.jpg,3"])
    write_lines(root / "image_sizes.txt", sizes or ["a/x.jpg,40,30", "b.jpg,20,20"])
    write_lines(root / "localization.txt", localization or ["a/x.jpg,5,5,14,14", "b.jpg,0,0,9,9",
                                                            "b.jpg,12,12,19,19"])
    return root


def test_read_metadata_boxes(tmp_path):
    meta = read_metadata(make_folder(tmp_path))
    assert meta.image_ids == ["a/x.jpg", "b.jpg"]
    assert meta.class_labels == {"a/x.jpg": 0, "b.jpg": 3}
    assert meta.image_sizes == {"a/x.jpg": (40, 30), "b.jpg": (20, 20)}
    assert meta.boxes["b.jpg"].tolist() == [[0, 0, 9, 9], [12, 12, 19, 19]]
    assert meta.masks == {}


@pytest.mark.parametrize("change, match", [
    (dict(localization=["a/x.jpg,5,5,14", "b.jpg,0,0,9,9"]), r"localization\.txt:1: expected path,x0"),
    (dict(localization=["a/x.jpg,5,5,14,14", "b.jpg,0,0,9,x"]),
     r"localization\.txt:2: y1 must be an integer"),
    (dict(localization=["a/x.jpg,5,5,40,14", "b.jpg,0,0,9,9"]),
     r"localization\.txt:1: box \(5,5,40,14\) is outside the 40x30"),
    (dict(localization=["a/x.jpg,5,5,14,14", "b.jpg,9,0,3,9"]), r"localization\.txt:2: box .* inverted"),
    (dict(localization=["a/x.jpg,5,5,14,14", "c.jpg,0,0,9,9"]),
     r"localization\.txt:2: image 'c\.jpg' is not in image_ids"),
    (dict(localization=["a/x.jpg,5,5,14,14"]),
     r"localization\.txt: no box for image 'b\.jpg' \(image_ids\.txt line 2\)"),
    (dict(labels=["a/x.jpg,0", "b.jpg,zero"]), r"class_labels\.txt:2: class_index must be an integer"),
    (dict(labels=["a/x.jpg,0"]), r"class_labels\.txt: no line for image 'b\.jpg'"),
    (dict(labels=["a/x.jpg,0", "b.jpg,1", "d.jpg,2"]), r"class_labels\.txt:3: image 'd\.jpg' is not in"),
    (dict(sizes=["a/x.jpg,40", "b.jpg,20,20"]), r"image_sizes\.txt:1: expected path,width,height"),
    (dict(ids=["a/x.jpg", "b.jpg", "a/x.jpg"]), r"image_ids\.txt:3: image 'a/x\.jpg' is listed twice"),
])
def test_metadata_errors_name_file_and_line(tmp_path, change, match):
    with pytest.raises(BenchError, match=match):
        read_metadata(make_folder(tmp_path, **change))


def test_metadata_missing_file(tmp_path):
    root = make_folder(tmp_path)
    (root / "class_labels.txt").unlink()
    with pytest.raises(BenchError, match=r"class_labels\.txt: missing"):
        read_metadata(root)
    (root / "image_sizes.txt").unlink()
    write_lines(root / "class_labels.txt", ["a/x.jpg,0", "b.jpg,3"])
    with pytest.raises(BenchError,
                       match=r"image_sizes\.txt: missing or empty; boxes \(.*localization\.txt:1\)"):
        read_metadata(root)
    (root / "image_sizes.txt").write_text("\n")  # empty counts as absent
    with pytest.raises(BenchError, match=r"image_sizes\.txt: missing or empty; boxes"):
        read_metadata(root)


def test_empty_sizes_file_is_absent_for_masks(tmp_path):
    # the reference's OpenImages metadata: masks only, and an empty image_sizes.txt
    root = make_folder(tmp_path, localization=["a/x.jpg,m1.png,", "b.jpg,m3.png,"])
    (root / "image_sizes.txt").write_text("")
    meta = read_metadata(root)
    assert meta.image_sizes == {} and set(meta.masks) == {"a/x.jpg", "b.jpg"}


def save_map(root: Path, image_id: str, m: np.ndarray) -> None:
    path = root / f"{image_id}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, m)


def test_evaluate_wsol_known_answer_and_flags(tmp_path):
    meta = make_folder(tmp_path)
    maps = tmp_path / "maps"
    save_map(maps, "a/x.jpg", box_map((30, 40), [(5, 5, 14, 14)]))  # right
    save_map(maps, "b.jpg", box_map((20, 20), [(3, 14, 8, 19)]))  # matches neither box
    out = evaluate_wsol(meta, maps)
    assert out["maxboxacc"] == {"30": 50.0, "50": 50.0, "70": 50.0}
    assert out["maxboxacc_v2"] == 50.0 and out["maxboxacc_v1"] == 50.0
    assert out["num_images"] == 2 and out["box_rule"] == "all contours" and "pxap" not in out
    out = evaluate_wsol(meta, maps, cam_curve_interval=0.25, multi_contour=False, iou_thresholds=(50,))
    assert out["maxboxacc"] == {"50": 50.0} and "maxboxacc_v2" not in out
    assert out["box_rule"] == "largest contour" and out["best_tau"] == {"50": 0.0}


def test_evaluate_wsol_scores_on_the_map_grid(tmp_path):
    # a 224 x 224 map for a 448 x 336 image, as the reference saves them: boxes are scaled to the map
    root = tmp_path / "meta"
    root.mkdir()
    write_lines(root / "image_ids.txt", ["img.jpg"])
    write_lines(root / "class_labels.txt", ["img.jpg,0"])
    write_lines(root / "image_sizes.txt", ["img.jpg,448,336"])
    write_lines(root / "localization.txt", ["img.jpg,100,90,300,250"])
    maps = tmp_path / "maps"
    gt_on_map = scale_boxes([(100, 90, 300, 250)], (448, 336), (224, 224))[0]
    save_map(maps, "img.jpg", box_map((224, 224), [tuple(gt_on_map)]))
    assert evaluate_wsol(root, maps)["maxboxacc"]["70"] == 100.0


@pytest.mark.parametrize("bad, match", [
    (None, r"b\.jpg\.npy: score map missing"),
    (np.zeros((2, 20, 20)), r"b\.jpg\.npy: score map must be a non-empty 2-D"),
    (np.full((20, 20), np.nan), r"b\.jpg\.npy: score map contains NaN"),
    (np.full((20, 20), 1.5), r"b\.jpg\.npy: score map values must lie in \[0, 1\]"),
    (-np.ones((20, 20)), r"b\.jpg\.npy: score map values must lie in \[0, 1\]"),
    (np.ones((20, 20), dtype=np.int64), r"b\.jpg\.npy: score map must hold floating-point scores"),
    (b"\x00\xffgarbage", r"b\.jpg\.npy: not a numeric score map \(not a \.npy file\)"),
    (b"", r"b\.jpg\.npy: not a numeric score map \(not a \.npy file\)"),
    (np.array([{"a": 1}], dtype=object), r"b\.jpg\.npy: not a numeric score map \(.*Python objects\)"),
])
def test_evaluate_wsol_validates_score_maps(tmp_path, bad, match):
    meta = make_folder(tmp_path)
    maps = tmp_path / "maps"
    save_map(maps, "a/x.jpg", box_map((30, 40), [(5, 5, 14, 14)]))
    if isinstance(bad, bytes):
        (maps / "b.jpg.npy").write_bytes(bad)
    elif bad is not None:
        save_map(maps, "b.jpg", bad)
    with pytest.raises(BenchError, match=match) as error:
        evaluate_wsol(meta, maps)
    assert "pickle" not in str(error.value)


def test_masks_round_trip_and_pxap(tmp_path):
    root = tmp_path / "meta"
    fg = {"p.png": box_map((16, 24), [(2, 2, 9, 9)]) > 0, "q.png": box_map((16, 24), [(10, 4, 20, 12)]) > 0}
    ignore = box_map((16, 24), [(0, 12, 23, 15)]) > 0
    (root / "m").mkdir(parents=True)
    for name, mask in fg.items():
        cv2.imwrite(str(root / "m" / name), mask.astype(np.uint8) * 255)
    cv2.imwrite(str(root / "m" / "ign.png"), ignore.astype(np.uint8) * 255)
    meta = WsolMetadata(root, ["one.jpg", "two.jpg"], {"one.jpg": 1, "two.jpg": 0},
                        masks={"one.jpg": MaskEntry(("m/p.png", "m/q.png"), "m/ign.png"),
                               "two.jpg": MaskEntry(("m/q.png",))})
    write_metadata(meta, root)
    assert (root / "localization.txt").read_text().splitlines() == [
        "one.jpg,m/p.png,m/ign.png", "one.jpg,m/q.png,", "two.jpg,m/q.png,"]
    back = read_metadata(root)
    assert back.masks == meta.masks and back.boxes == {} and back.image_sizes == {}
    foreground, ign = read_masks(back, "one.jpg", (24, 16))
    assert (foreground == (fg["p.png"] | fg["q.png"])).all() and (ign == ignore & ~foreground).all()
    assert read_masks(back, "two.jpg", (24, 16))[1] is None
    maps = tmp_path / "maps"
    save_map(maps, "one.jpg", foreground.astype(float))
    save_map(maps, "two.jpg", np.full((16, 24), 0.5))
    expected = brute_force_pxap(np.concatenate([foreground.ravel(), np.full(16 * 24, 0.5)])[
        np.concatenate([~ign.ravel(), np.ones(16 * 24, bool)])],
        np.concatenate([foreground[~ign], fg["q.png"].ravel()]), np.append(GRID, 1.0))
    out = evaluate_wsol(root, maps)
    assert out["pxap"] == pytest.approx(expected) and "maxboxacc" not in out


def test_mask_metadata_errors(tmp_path):
    root = make_folder(tmp_path, localization=["a/x.jpg,m1.png,ign.png", "a/x.jpg,m2.png,other.png",
                                               "b.jpg,m3.png,"])
    with pytest.raises(BenchError, match=r"localization\.txt:2: a second ignore mask"):
        read_metadata(root)
    root = make_folder(tmp_path, localization=["a/x.jpg,m1.png,", "b.jpg,m3.png,"])
    meta = read_metadata(root)
    with pytest.raises(BenchError, match=r"m1\.png: missing \(a mask named in localization\.txt\)"):
        read_masks(meta, "a/x.jpg", (40, 30))
    (root / "m1.png").write_bytes(b"not an image")
    with pytest.raises(BenchError, match=r"m1\.png: not a readable image"):
        read_masks(meta, "a/x.jpg", (40, 30))


def test_missing_mask_is_found_before_opencv_warns(tmp_path, capfd):
    root = make_folder(tmp_path, localization=["a/x.jpg,m1.png,", "b.jpg,m3.png,"])
    maps = tmp_path / "maps"
    for image_id in ("a/x.jpg", "b.jpg"):
        save_map(maps, image_id, np.zeros((30, 40)))
    with pytest.raises(BenchError, match=r"mask 'm1\.png' of image 'a/x\.jpg' not found at "):
        evaluate_wsol(root, maps)
    with pytest.raises(BenchError, match=r"m1\.png: missing"):
        read_masks(read_metadata(root), "a/x.jpg", (40, 30))
    assert capfd.readouterr().err == ""  # OpenCV's "can't open/read file" warning never printed


def test_evaluator_results_keys():
    ev = WsolEvaluator(0.1)
    ev.add(box_map((10, 10), [(1, 1, 5, 5)]), np.array([[1, 1, 5, 5]]))
    out = ev.results()
    assert set(out) == {"num_images", "cam_curve_interval", "box_rule", "iou_thresholds", "maxboxacc",
                        "maxboxacc_mean", "best_tau", "maxboxacc_v2", "maxboxacc_v1"}
    with pytest.raises(BenchError, match="cam curve interval"):
        WsolEvaluator(0)
    with pytest.raises(BenchError, match="IoU thresholds"):
        WsolEvaluator(0.1, iou_thresholds=(0, 50))


def _per_threshold_boxes(scoremap: np.ndarray, thresholds: np.ndarray) -> tuple[list, list]:
    """The reference's sweep written out: at every tau, cv2.threshold, findContours (RETR_TREE,
    CHAIN_APPROX_SIMPLE), each contour's cv2.boundingRect box, the first contour of maximal
    cv2.contourArea."""
    q = (scoremap * 255).astype(np.uint8)
    h, w = q.shape
    all_boxes, largest = [], []
    for tau in thresholds:
        _, binary = cv2.threshold(q, int(tau * q.max()), 255, cv2.THRESH_BINARY)
        contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
        if not contours:
            all_boxes.append(np.zeros((1, 4), np.int64))
            largest.append(np.zeros((1, 4), np.int64))
            continue
        boxes = []
        for c in contours:
            x, y, bw, bh = cv2.boundingRect(c)
            boxes.append((x, y, min(x + bw, w - 1), min(y + bh, h - 1)))
        areas = [cv2.contourArea(c) for c in contours]
        all_boxes.append(np.array(boxes, np.int64))
        largest.append(np.array([boxes[areas.index(max(areas))]], np.int64))
    return all_boxes, largest


def _random_maps(rng: np.random.Generator) -> list[np.ndarray]:
    maps = []
    for size in ((32, 32), (17, 23), (64, 48)):
        noise = rng.random(size)
        maps.append(noise)  # many small contours, holes inside holes
        maps.append(cv2.GaussianBlur(noise, (0, 0), 2.0))  # smooth blobs
        maps.append(np.round(noise * 4) / 4)  # few levels: many thresholds give one mask
        ring = np.zeros(size)
        ring[2:-2, 2:-2] = 1.0
        ring[5:-5, 5:-5] = rng.random((size[0] - 10, size[1] - 10)) * 0.5  # a ring with a hole
        maps.append(ring)
    maps.append(np.zeros((32, 32)))  # constant: one box at the origin
    return [normalize_map(m) for m in maps]


def test_vectorised_sweep_equals_the_per_threshold_reference_on_random_maps():
    rng = np.random.default_rng(7)
    thresholds = cam_thresholds(0.01)
    for scoremap in _random_maps(rng):
        got = map_boxes(scoremap, thresholds)
        want_all, want_largest = _per_threshold_boxes(scoremap, thresholds)
        assert len(got.all) == len(want_all) == len(thresholds)
        for g, w in zip(got.all, want_all):
            np.testing.assert_array_equal(g, w)
        for g, w in zip(got.largest, want_largest):
            np.testing.assert_array_equal(g, w)
