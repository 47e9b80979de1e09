import json
import shutil

import cv2
import numpy as np
import pytest

from bench.cli import main

TOY = ["--dataset", "toy-quadrants", "--backbone", "resnet8", "--epochs", "1", "--seeds", "1", "--jobs", "1", "--no-progress"]


def test_saved_scoremaps_evaluate_to_the_stored_numbers(smoke_store, tmp_path, capsys):
    main(["results", "--out", str(smoke_store), "--format", "json", "--per-seed"])
    stored = {r["metric"]: r["value"] for r in json.loads(capsys.readouterr().out)
              if r["method"] == "gap-fc"}
    (saved,) = (smoke_store / "maps").glob("gap-fc-run*-seed0")
    run_dir = shutil.copytree(saved, tmp_path / saved.name)  # a copy: one map is corrupted below
    assert main(["evaluate-wsol", "--metadata", str(run_dir / "metadata"), "--scoremaps", str(run_dir),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["maxboxacc_v2"] == stored["maxboxacc_v2"]
    assert result["pxap"] == stored["pxap"]
    assert set(result["maxboxacc"]) == {"30", "50", "70"}

    # a corrupted score map is named, one line, exit 2
    victim = next(run_dir.rglob("*.npy"))
    np.save(victim, np.full((4, 4), np.nan))
    code = main(["evaluate-wsol", "--metadata", str(run_dir / "metadata"), "--scoremaps", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 2 and victim.name in err and "NaN" in err and err.count("\n") == 1


def test_a_task_option_that_changes_numbers_is_stored_beside_the_default(tmp_path, capsys):
    """--cam-curve-interval 0.5 on a store where wsol is done computes wsol[cam_curve_interval=0.5]
    and stores it beside the default; rerunning either skips it."""
    import sqlite3

    args = ["run", "--methods", "gap-fc", "--tasks", "wsol", "--out", str(tmp_path), *TOY]
    assert main(args) == 0
    assert main(args + ["--cam-curve-interval", "0.5"]) == 0
    db = sqlite3.connect(tmp_path / "results.sqlite")
    tasks = sorted(t for (t,) in db.execute("SELECT task FROM task_runs"))
    assert tasks == ["wsol", "wsol[cam_curve_interval=0.5]"]
    intervals = {t: json.loads(e)["cam_curve_interval"] for t, e in db.execute(
        "SELECT task, extra FROM metrics WHERE name = 'maxboxacc_v2'")}
    assert intervals == {"wsol": 0.01, "wsol[cam_curve_interval=0.5]": 0.5}
    ended = db.execute("SELECT ended FROM task_runs ORDER BY task").fetchall()
    assert main(args + ["--cam-curve-interval", "0.5"]) == 0
    assert db.execute("SELECT ended FROM task_runs ORDER BY task").fetchall() == ended
    capsys.readouterr()
    assert main(["results", "--out", str(tmp_path), "--format", "json"]) == 0
    rows = [r for r in json.loads(capsys.readouterr().out)["summary"]
            if r["metric"] == "maxboxacc_v2"]
    assert len(rows) == 2 and len({r["setting"] for r in rows}) == 2
    for bad in ("0", "1", "7"):
        assert main(args + ["--cam-curve-interval", bad]) == 2
    err = capsys.readouterr().err
    assert err.count("cam_curve_interval must lie in (0, 1)") == 3


# clovaai/wsolevaluation's own OpenImages layout: metadata/OpenImages/test/ with an empty
# image_sizes.txt, localization.txt naming masks relative to the mask root (dataset/OpenImages),
# several instance masks per image and the ignore mask on each image's first line only.
OPENIMAGES = {"test/01226z/7af766bd43da900b.jpg": (0, [("m01226z_6554d965", (0, 2, 0, 8)),
                                                       ("m01226z_8856c605", (2, 4, 0, 4))], (4, 6, 0, 8)),
              "test/0138tl/0493e6c7cc0d4658.jpg": (1, [("m0138tl_936a53d1", (0, 8, 0, 2))], (0, 8, 0, 8))}


def rect_png(path, rect, size=8):
    r0, r1, c0, c1 = rect
    mask = np.zeros((size, size), np.uint8)
    mask[r0:r1, c0:c1] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), mask)


def write_openimages(root):
    meta = root / "metadata" / "OpenImages" / "test"
    meta.mkdir(parents=True)
    masks = root / "dataset" / "OpenImages"
    ids, labels, lines = [], [], []
    for image_id, (label, instances, ignore) in OPENIMAGES.items():
        stem = image_id[:-len(".jpg")]
        ids.append(image_id)
        labels.append(f"{image_id},{label}")
        for k, (name, rect) in enumerate(instances):
            rect_png(masks / f"{stem}_{name}.png", rect)
            lines.append(f"{image_id},{stem}_{name}.png,{stem + '_ignore.png' if k == 0 else ''}")
        rect_png(masks / f"{stem}_ignore.png", ignore)
    (meta / "image_ids.txt").write_text("\n".join(ids) + "\n")
    (meta / "class_labels.txt").write_text("\n".join(labels) + "\n")
    (meta / "image_sizes.txt").write_text("")
    (meta / "localization.txt").write_text("\n".join(lines) + "\n")
    maps = root / "scoremaps"
    first = np.zeros((8, 8))
    first[0:2], first[2:4], first[4:6] = 1.0, 0.5, 1.0  # foreground 1 / 0.5, negatives 0.5, ignored 1
    second = np.ones((8, 8))
    second[:, 0:2] = 0.0  # its foreground missed; everything else is its ignore region
    for image_id, scoremap in zip(OPENIMAGES, (first, second)):
        (maps / image_id).parent.mkdir(parents=True, exist_ok=True)
        np.save(maps / f"{image_id}.npy", scoremap)
    return meta, masks, maps


def test_reference_openimages_layout_with_mask_root(tmp_path, capfd):
    meta, masks, maps = write_openimages(tmp_path)
    assert main(["evaluate-wsol", "--metadata", str(meta), "--scoremaps", str(maps),
                 "--mask-root", str(masks), "--json"]) == 0
    result = json.loads(capfd.readouterr().out)
    # By hand: 40 foreground pixels (16 scored 1, 8 scored 0.5, 16 scored 0), 24 counted
    # background pixels (8 at 0.5, 16 at 0); the ignore regions (16 + 48 pixels at 1) are left out.
    # Precision at scores >= 1, 0.5, 0: 16/16, 24/32, 40/64; recall steps 16/40, 8/40, 16/40.
    assert result["pxap"] == pytest.approx(100 * (1 * 0.4 + 0.75 * 0.2 + 0.625 * 0.4))
    assert "maxboxacc" not in result and result["num_images"] == 2

    # without --mask-root the paths resolve under the metadata folder: one line, no OpenCV warning
    code = main(["evaluate-wsol", "--metadata", str(meta), "--scoremaps", str(maps)])
    err = capfd.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert "test/01226z/7af766bd43da900b_m01226z_6554d965.png" in err and "not found at" in err
    code = main(["evaluate-wsol", "--metadata", str(meta), "--scoremaps", str(maps),
                 "--mask-root", str(tmp_path / "nowhere")])
    err = capfd.readouterr().err
    assert code == 2 and err.startswith("error: --mask-root ") and err.count("\n") == 1
