"""The imagenet and wsol-metadata datasets on tiny fixtures written in their genuine layouts: ImageNet's
train/<wnid>/ and val/ folders with clovaai/wsolevaluation's metadata (flat val ids, ImageNetV2 holdout
ids), a CUB-like box dataset and an OpenImages-like mask dataset given as metadata folders."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.cli import main
from bench.data import imagenet, wsol_metadata
from bench.errors import BenchError
from bench.store import Store
from bench.tasks.wsol import evaluate_wsol

SIZE = 32  # input_size in these tests
WNIDS = ("n01440764", "n01443537", "n01484850")
# ILSVRC2012 validation images: (number, class, (w, h), boxes x0 y0 x1 y1 in original pixels)
VAL = [(1, 1, (40, 30), [(2, 3, 30, 20)]),
       (2, 2, (36, 36), [(0, 0, 35, 35)]),
       (3, 0, (50, 25), [(5, 5, 20, 15), (25, 2, 49, 24)]),
       (4, 1, (30, 40), [(1, 10, 28, 39)]),
       (5, 2, (44, 28), [(10, 4, 33, 27)]),
       (6, 0, (28, 44), [(3, 3, 20, 40)])]
# train-fullsup as the reference ships it (an ImageNetV2 image), plus one image of train/.
HOLDOUT = [("val2/0/5f0c1d.jpeg", 0, (32, 24), [(4, 4, 20, 20)]),
           ("train/n01443537/n01443537_2.JPEG", 1, (28, 22), [(1, 1, 10, 10)])]


def train_size(k: int, c: int) -> tuple[int, int]:
    return 24 + 2 * k, 20 + 2 * c


def val_name(number: int) -> str:
    return f"ILSVRC2012_val_{number:08d}.JPEG"


def write_image(path: Path, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def write_meta(folder: Path, rows: list, sizes: bool = True, localization: bool = True) -> Path:
    """A metadata folder as wsolevaluation writes it: rows of (id, label, (w, h), boxes)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "image_ids.txt").write_text("".join(f"{r[0]}\n" for r in rows))
    (folder / "class_labels.txt").write_text("".join(f"{r[0]},{r[1]}\n" for r in rows))
    if sizes:
        (folder / "image_sizes.txt").write_text("".join(f"{r[0]},{r[2][0]},{r[2][1]}\n" for r in rows))
    if localization:
        (folder / "localization.txt").write_text(
            "".join(f"{r[0]},{x0},{y0},{x1},{y1}\n" for r in rows for x0, y0, x1, y1 in r[3]))
    return folder


def write_imagenet(root: Path, flat_val: bool = False) -> Path:
    """train/<wnid>/ (3 images per class), val/ (2 per class, in class folders unless ``flat_val``),
    metadata/test/ (the reference's flat val ids) and metadata/val/ (train-fullsup) with val2/."""
    for c, wnid in enumerate(WNIDS):
        for k in (1, 2, 3):
            write_image(root / "train" / wnid / f"{wnid}_{k}.JPEG", train_size(k, c), 10 * c + k)
    for number, c, size, _ in VAL:
        folder = root / "val" if flat_val else root / "val" / WNIDS[c]
        write_image(folder / val_name(number), size, 100 + number)
    write_image(root / HOLDOUT[0][0], HOLDOUT[0][2], 200)
    write_meta(root / "metadata" / "test", [(f"val/{val_name(n)}", c, s, b) for n, c, s, b in VAL])
    write_meta(root / "metadata" / "val", HOLDOUT)
    return root


def load_imagenet(root: Path, **options):
    return imagenet.load(root, **{"input_size": SIZE, "resize_size": 36, "workers": 0, **options})


def scaled(box, size) -> list[int]:
    """The reference evaluator's resize_bbox: int(x * 224 / w) etc., here to SIZE."""
    x0, y0, x1, y1 = box
    w, h = size
    return [int(x0 * SIZE / w), int(y0 * SIZE / h), int(x1 * SIZE / w), int(y1 * SIZE / h)]


def message(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


# ------------------------------------------------------------------------------------------ imagenet


def test_imagenet_classes_labels_and_splits(tmp_path):
    write_imagenet(tmp_path)
    bundle = load_imagenet(tmp_path)
    assert (bundle.name, bundle.num_classes, bundle.in_channels) == ("imagenet", 3, 3)
    assert bundle.input_size == SIZE
    assert bundle.class_names == list(WNIDS)
    # train: ImageFolder order, without the train-fullsup image
    expected = [f"train/{w}/{w}_{k}.JPEG" for w in WNIDS for k in (1, 2, 3)]
    expected.remove(HOLDOUT[1][0])
    assert bundle.train.ids == expected
    assert bundle.train.labels.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    # test: the metadata's order, each flat id found in its class folder
    assert bundle.test.ids == [f"val/{WNIDS[c]}/{val_name(n)}" for n, c, _, _ in VAL]
    assert bundle.test.labels.tolist() == [c for _, c, _, _ in VAL]
    assert bundle.holdout.ids == [h[0] for h in HOLDOUT]
    assert bundle.holdout.labels.tolist() == [0, 1]
    assert bundle.train.masks is None and bundle.test.masks is None


def test_imagenet_boxes_are_rescaled_to_the_evaluation_size(tmp_path):
    write_imagenet(tmp_path)
    bundle = load_imagenet(tmp_path)
    test = bundle.test
    for i, (_, _, size, boxes) in enumerate(VAL):
        assert test.original_size(i) == size
        assert test.boxes[i].tolist() == [scaled(b, size) for b in boxes]
        assert test.image_size(i) == (SIZE, SIZE)
    assert test.boxes[2].tolist() == [[3, 6, 12, 19], [16, 2, 31, 30]]  # two boxes, by hand
    assert [b.tolist() for b in bundle.holdout.boxes] == [[scaled(b, s) for b in bs]
                                                          for _, _, s, bs in HOLDOUT]
    (x, y), = list(test.batches(8, train=False))
    assert x.shape == (6, 3, SIZE, SIZE) and y.tolist() == test.labels.tolist()
    (x, y), = list(bundle.train.batches(8, train=True, generator=torch.Generator().manual_seed(0)))
    assert x.shape == (8, 3, SIZE, SIZE) and sorted(y.tolist()) == sorted(bundle.train.labels.tolist())


def test_imagenet_flat_val_as_the_reference_extracts_it(tmp_path):
    write_imagenet(tmp_path, flat_val=True)
    bundle = load_imagenet(tmp_path)
    assert bundle.test.ids == [f"val/{val_name(n)}" for n, _, _, _ in VAL]
    assert bundle.test.labels.tolist() == [c for _, c, _, _ in VAL]
    shutil.rmtree(tmp_path / "metadata" / "test")
    with pytest.raises(BenchError) as err:
        load_imagenet(tmp_path)
    assert "flat val/" in message(err) and "wsolevaluation" in message(err)


def test_imagenet_without_metadata_is_classification_only(tmp_path, caplog):
    write_imagenet(tmp_path)
    shutil.rmtree(tmp_path / "metadata")
    with caplog.at_level(logging.INFO, logger="bench.data.imagenet"):
        bundle = load_imagenet(tmp_path)
    assert bundle.test.boxes is None and bundle.holdout is None
    assert "classification only" in caplog.text and "holdout" in caplog.text
    assert len(bundle.train) == 9
    # val/ in ImageFolder order: class 0's numbers 3, 6, class 1's 1, 4, class 2's 2, 5
    assert bundle.test.ids == [f"val/{WNIDS[c]}/{val_name(n)}" for c, n in
                               ((0, 3), (0, 6), (1, 1), (1, 4), (2, 2), (2, 5))]
    assert bundle.test.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_imagenet_metadata_can_be_turned_off_or_moved(tmp_path):
    write_imagenet(tmp_path)
    bundle = load_imagenet(tmp_path, test_metadata="", holdout_metadata="")
    assert bundle.test.boxes is None and bundle.holdout is None and len(bundle.train) == 9
    (tmp_path / "metadata").rename(tmp_path / "boxes")
    bundle = load_imagenet(tmp_path, test_metadata=str(tmp_path / "boxes" / "test"),
                           holdout_metadata="boxes/val")
    assert bundle.test.boxes is not None and len(bundle.holdout) == 2
    with pytest.raises(BenchError) as err:
        load_imagenet(tmp_path, test_metadata="elsewhere")
    assert "test_metadata='elsewhere'" in message(err) and str(tmp_path / "elsewhere") in message(err)


def test_imagenet_data_root_may_be_the_parent(tmp_path):
    write_imagenet(tmp_path / "ILSVRC")
    assert len(load_imagenet(tmp_path).test) == 6


def test_imagenet_missing_data_is_one_clear_error(tmp_path):
    with pytest.raises(BenchError) as err:
        load_imagenet(tmp_path)
    text = message(err)
    assert "missing train/ and val/" in text and str(tmp_path) in text
    assert "image-net.org" in text and "clovaai/wsolevaluation" in text


def test_imagenet_malformed_metadata_names_the_file_and_line(tmp_path):
    write_imagenet(tmp_path)
    localization = tmp_path / "metadata" / "test" / "localization.txt"
    lines = localization.read_text().splitlines()
    localization.write_text("\n".join(lines[:1] + [lines[1].rsplit(",", 1)[0]] + lines[2:]) + "\n")
    with pytest.raises(BenchError) as err:
        load_imagenet(tmp_path)
    assert f"{localization}:2:" in message(err)


def test_imagenet_metadata_must_agree_with_the_folders(tmp_path):
    write_imagenet(tmp_path)
    labels = tmp_path / "metadata" / "test" / "class_labels.txt"
    labels.write_text(labels.read_text().replace(f"{val_name(1)},1", f"{val_name(1)},0"))
    with pytest.raises(BenchError) as err:
        load_imagenet(tmp_path)
    assert str(labels) in message(err) and f"val/{WNIDS[1]}/" in message(err)

    write_imagenet(tmp_path)  # labels restored; now an image of val/ the metadata does not list
    write_image(tmp_path / "val" / WNIDS[2] / val_name(7), (20, 20), 7)
    with pytest.raises(BenchError) as err:
        load_imagenet(tmp_path)
    assert "1 images of" in message(err) and val_name(7) in message(err)


def test_imagenet_holdout_images_must_exist_and_differ_from_test(tmp_path):
    write_imagenet(tmp_path)
    (tmp_path / HOLDOUT[0][0]).unlink()
    with pytest.raises(BenchError) as err:
        load_imagenet(tmp_path)
    assert "val2/0/5f0c1d.jpeg" in message(err) and "imagenetv2-threshold0.7" in message(err)
    write_imagenet(tmp_path)
    test_row = (f"val/{WNIDS[1]}/{val_name(1)}", 1, VAL[0][2], VAL[0][3])
    write_meta(tmp_path / "metadata" / "val", HOLDOUT + [test_row])
    with pytest.raises(BenchError, match="both the test and the holdout"):
        load_imagenet(tmp_path)


def test_imagenet_bad_options(tmp_path):
    write_imagenet(tmp_path)
    with pytest.raises(BenchError, match="train_crop"):
        load_imagenet(tmp_path, train_crop="centre")
    with pytest.raises(BenchError, match="unknown option"):
        load_imagenet(tmp_path, val_metadata="metadata/test")


# ------------------------------------------------------------------------------------- wsol-metadata

WM_TRAIN = [("birds/b1.jpg", 0), ("birds/b2.jpg", 0), ("cars/c1.jpg", 1), ("cars/c2.jpg", 1),
            ("dogs/d1.jpg", 3), ("dogs/d2.jpg", 3)]
WM_HOLDOUT = [("birds/b2.jpg", 0, (30, 20), [(1, 1, 20, 15)]), ("cars/c9.jpg", 1, (24, 24), [(0, 0, 23, 23)])]
WM_TEST = [("birds/t1.jpg", 0, (40, 32), [(4, 6, 30, 25)]),
           ("cars/t2.jpg", 1, (32, 40), [(2, 2, 20, 38), (21, 0, 31, 10)]),
           ("dogs/t3.jpg", 3, (36, 30), [(0, 5, 35, 29)]),
           ("dogs/t4.jpg", 3, (30, 36), [(6, 6, 12, 12)])]


def write_box_dataset(root: Path) -> None:
    """images/<class>/*.jpg and metadata folders meta/{train,val,test} (train without localization)."""
    for i, (path, _) in enumerate(WM_TRAIN):
        write_image(root / "images" / path, (30, 20) if path == "birds/b2.jpg" else (26, 22), i)
    for i, (path, _, size, _) in enumerate(WM_HOLDOUT[1:] + WM_TEST):
        write_image(root / "images" / path, size, 50 + i)
    write_meta(root / "meta" / "train", [(p, c, None, None) for p, c in WM_TRAIN], sizes=False,
               localization=False)
    write_meta(root / "meta" / "val", WM_HOLDOUT)
    write_meta(root / "meta" / "test", WM_TEST)


BOX_OPTIONS = {"root": "images", "train": "meta/train", "test": "meta/test", "holdout": "meta/val"}


def load_metadata(data_root: Path, **options):
    return wsol_metadata.load(data_root, **{"input_size": SIZE, "resize_size": 36, "workers": 0, **options})


def test_wsol_metadata_with_boxes(tmp_path):
    write_box_dataset(tmp_path)
    bundle = load_metadata(tmp_path, **BOX_OPTIONS)
    assert bundle.num_classes == 4  # the largest class index is 3
    assert bundle.train.ids == [p for p, _ in WM_TRAIN if p != "birds/b2.jpg"]  # the holdout's image left
    assert bundle.train.labels.tolist() == [0, 1, 1, 3, 3]
    assert bundle.train.boxes is None and bundle.train.masks is None
    assert bundle.test.ids == [r[0] for r in WM_TEST] and bundle.test.labels.tolist() == [0, 1, 3, 3]
    assert [b.tolist() for b in bundle.test.boxes] == [[scaled(b, s) for b in bs] for _, _, s, bs in WM_TEST]
    assert bundle.test.boxes[1].tolist() == [[2, 1, 20, 30], [21, 0, 31, 8]]  # by hand
    assert bundle.test.masks is None
    assert bundle.holdout.ids == ["birds/b2.jpg", "cars/c9.jpg"]
    assert bundle.holdout.boxes[0].tolist() == [scaled(WM_HOLDOUT[0][3][0], (30, 20))]
    (x, y), = list(bundle.train.batches(5, train=True, generator=torch.Generator().manual_seed(0)))
    assert x.shape == (5, 3, SIZE, SIZE) and sorted(y.tolist()) == [0, 1, 1, 3, 3]
    no_holdout = load_metadata(tmp_path, **{**BOX_OPTIONS, "holdout": ""})
    assert no_holdout.holdout is None and len(no_holdout.train) == 6


def write_mask_dataset(root: Path) -> None:
    """OpenImages-like: oi/{train,test}/<class>/<id>.jpg, instance masks and ignore masks beside the
    test images (paths relative to the image folder, as the reference's), and an empty
    image_sizes.txt in the test folder, as the reference ships it."""
    for i, (path, _) in enumerate(WM_TRAIN):
        write_image(root / "oi" / "train" / path, (16, 16), i)
    lines = []
    rects = {"test/0bt_c3/aa": [(4, 12, 4, 12), (0, 4, 12, 16)], "test/0by6g/bb": [(8, 16, 0, 8)]}
    for i, (stem, instances) in enumerate(rects.items()):
        write_image(root / "oi" / f"{stem}.jpg", (16, 16), 90 + i)
        for k, (r0, r1, c0, c1) in enumerate(instances):
            mask = np.zeros((16, 16), np.uint8)
            mask[r0:r1, c0:c1] = 255
            Image.fromarray(mask).save(root / "oi" / f"{stem}_m{k}.png")
            ignore = f"{stem}_ignore.png" if k == 0 and stem.endswith("aa") else ""
            lines.append(f"{stem}.jpg,{stem}_m{k}.png,{ignore}")
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(root / "oi" / "test/0bt_c3/aa_ignore.png")
    write_meta(root / "meta" / "train", [(f"train/{p}", c, None, None) for p, c in WM_TRAIN], sizes=False,
               localization=False)
    test = write_meta(root / "meta" / "test", [(f"{s}.jpg", c, None, None) for s, c in zip(rects, (0, 1))],
                      sizes=False, localization=False)
    (test / "localization.txt").write_text("\n".join(lines) + "\n")
    (test / "image_sizes.txt").write_text("")


MASK_OPTIONS = {"root": "oi", "train": "meta/train", "test": "meta/test", "mask_root": "oi"}


def test_wsol_metadata_with_masks(tmp_path):
    write_mask_dataset(tmp_path)
    bundle = load_metadata(tmp_path, **MASK_OPTIONS, input_size=8, resize_size=8)
    assert bundle.num_classes == 4 and bundle.holdout is None
    test = bundle.test
    assert test.boxes is None and len(test.masks) == 2 and test.image_size(0) == (8, 8)
    expected = np.zeros((2, 8, 8), bool)
    expected[0, 2:6, 2:6] = expected[0, 0:2, 6:8] = True  # both instances, halved
    expected[1, 4:8, 0:4] = True
    for i in range(2):
        mask = test.masks[i]
        assert mask.dtype == torch.bool and mask.shape == (8, 8)
        np.testing.assert_array_equal(mask.numpy(), expected[i])
    # image aa's ignore region is the whole image less its foreground; image bb has none
    np.testing.assert_array_equal(test.ignore_masks[0].numpy(), ~expected[0])
    assert test.ignore_masks[1] is None


def test_wsol_metadata_mask_paths_resolve_under_mask_root(tmp_path):
    write_mask_dataset(tmp_path)
    with pytest.raises(BenchError) as err:  # default: relative to the metadata folder, where none are
        load_metadata(tmp_path, **{**MASK_OPTIONS, "mask_root": ""})
    assert str(tmp_path / "meta" / "test" / "localization.txt") in message(err)
    assert "test/0bt_c3/aa_m0.png" in message(err)


def test_wsol_metadata_errors(tmp_path):
    with pytest.raises(BenchError) as err:
        load_metadata(tmp_path, **BOX_OPTIONS)
    text = message(err)
    assert f"train={tmp_path / 'meta/train'}" in text and f"root={tmp_path / 'images'}" in text
    assert "image_ids.txt" in text
    write_box_dataset(tmp_path)
    (tmp_path / "images" / "dogs" / "t4.jpg").unlink()
    with pytest.raises(BenchError) as err:
        load_metadata(tmp_path, **BOX_OPTIONS)
    assert "dogs/t4.jpg" in message(err) and str(tmp_path / "meta" / "test" / "image_ids.txt") in message(err)
    write_box_dataset(tmp_path)
    rows = [(p, c, None, None) for p, c in WM_TRAIN + [("dogs/t4.jpg", 3)]]
    write_meta(tmp_path / "meta" / "train", rows, sizes=False, localization=False)
    with pytest.raises(BenchError, match="both the test and the train"):
        load_metadata(tmp_path, **BOX_OPTIONS)
    with pytest.raises(BenchError, match="needs the options train and test"):
        load_metadata(tmp_path, **{**BOX_OPTIONS, "test": ""})


# --------------------------------------------------------------------------------------- through the CLI

RUN = ["--backbone", "resnet8", "--epochs", "1", "--seeds", "1", "--jobs", "1", "--batch-size", "4", "--tasks", "accuracy", "wsol",
       "--no-progress", "--methods", "gap-fc", "--threads", "1"]
SMALL = f"input_size={SIZE},resize_size=36,workers=0"


@pytest.mark.parametrize("case", ["imagenet", "boxes", "masks"])
def test_a_run_stores_accuracy_and_wsol_metrics(tmp_path, case):
    data, out = tmp_path / "data", tmp_path / "out"
    if case == "imagenet":
        write_imagenet(data)
        spec = f"imagenet[{SMALL}]"
    elif case == "boxes":
        write_box_dataset(data)
        spec = f"wsol-metadata[{SMALL},{','.join(f'{k}={v}' for k, v in BOX_OPTIONS.items())}]"
    else:
        write_mask_dataset(data)
        spec = f"wsol-metadata[{SMALL},{','.join(f'{k}={v}' for k, v in MASK_OPTIONS.items())}]"
    maps = tmp_path / "maps"
    assert main(["run", "--dataset", spec, "--data-root", str(data), "--out", str(out),
                 "--save-scoremaps", str(maps), *RUN]) == 0
    store = Store(out / "results.sqlite", create=False)
    records = {(r["task"], r["metric"]): r for r in store.records()}
    store.close()
    assert 0 <= records[("accuracy", "top1")]["value"] <= 100
    if case == "masks":
        assert 0 <= records[("wsol", "pxap")]["value"] <= 100
        assert records[("wsol", "pxap")]["extra"]["ignore_regions"] is True
        assert ("wsol", "maxboxacc_v2") not in records
        # the saved maps and metadata (ignore masks included) evaluate to the stored PxAP
        (run_dir,) = [p for p in maps.iterdir() if p.is_dir()]
        assert evaluate_wsol(run_dir / "metadata", run_dir)["pxap"] == records[("wsol", "pxap")]["value"]
    else:
        for metric in ("maxboxacc_v2", "maxboxacc_50", "gt_known_loc", "top1_loc"):
            assert 0 <= records[("wsol", metric)]["value"] <= 100
        assert records[("wsol", "gt_known_loc")]["extra"]["tau_source"] == "holdout"
        assert ("wsol", "pxap") not in records
