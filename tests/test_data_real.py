"""CIFAR and CUB-200-2011 loaders on tiny fixtures written in the genuine on-disk formats."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.data import cifar, cub
from bench.data.folder import FolderSplit, rescale_box
from bench.errors import BenchError

# ----------------------------------------------------------------------------------------- CIFAR


def write_pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = 3) -> dict[str, np.ndarray]:
    """cifar-10-batches-py with 5 train batches and a test batch of ``per_batch`` images each."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    written = {"train_data": [], "train_labels": []}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        write_pickle(folder / name, {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                                     b"filenames": [b"x.png"] * per_batch})
        if name == "test_batch":
            written["test_data"], written["test_labels"] = data, np.array(labels)
        else:
            written["train_data"].append(data)
            written["train_labels"] += labels
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]
    write_pickle(folder / "batches.meta", {b"num_cases_per_batch": 10000, b"label_names": names,
                                           b"num_vis": 3072})
    written["train_data"] = np.concatenate(written["train_data"])
    written["train_labels"] = np.array(written["train_labels"])
    return written


def test_cifar10_reads_the_pickles(tmp_path):
    written = write_cifar10(tmp_path)
    bundle = cifar.load_cifar10(tmp_path)
    assert (bundle.num_classes, bundle.in_channels, bundle.input_size) == (10, 3, 32)
    assert bundle.class_names[:3] == ["airplane", "automobile", "bird"] and len(bundle.class_names) == 10
    assert bundle.holdout is None and bundle.train.boxes is None
    train, test = bundle.train, bundle.test
    assert train.images.shape == (15, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (3, 3, 32, 32)
    assert train.labels.tolist() == written["train_labels"].tolist()
    assert test.labels.tolist() == written["test_labels"].tolist()
    row = written["train_data"][4]  # 1024 red values row by row, then green, then blue
    image = train.images[4].numpy()
    assert image[0, 0, 1] == row[1] and image[0, 1, 0] == row[32] and image[1, 0, 0] == row[1024]
    assert image[2, 31, 31] == row[3071]
    assert train.augment.pad == 4 and train.augment.flip == 0.5 and test.augment.pad == 0
    assert train.mean == (0.4914, 0.4822, 0.4465) and test.std == train.std
    assert test.ids[2] == "test/000002.png" and train.image_size(0) == (32, 32)


def test_cifar100_uses_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    for name, n in (("train", 5), ("test", 2)):
        write_pickle(folder / name, {b"filenames": [b"a.png"] * n, b"batch_label": b"x",
                                     b"fine_labels": list(range(90, 90 + n)),
                                     b"coarse_labels": [1] * n,
                                     b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)})
    write_pickle(folder / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                                   b"coarse_label_names": [b"s"] * 20})
    bundle = cifar.load_cifar100(tmp_path)
    assert bundle.num_classes == 100 and bundle.class_names[99] == "c99"
    assert bundle.train.labels.tolist() == [90, 91, 92, 93, 94]
    assert bundle.test.images.shape == (2, 3, 32, 32)
    assert bundle.train.std == (0.2673, 0.2564, 0.2762)


def test_cifar_missing_data_is_one_clear_error(tmp_path):
    with pytest.raises(BenchError) as err:
        cifar.load_cifar10(tmp_path)
    message = str(err.value)
    assert "cifar-10-batches-py" in message and str(tmp_path) in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message
    assert "--download" in message
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(BenchError, match="missing data_batch_3 in"):
        cifar.load_cifar10(tmp_path)


def test_cifar_default_root_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(BenchError, match="BENCH_CACHE"):
        cifar.load_cifar100(None)


def test_cifar_download_fetches_then_reads(tmp_path, monkeypatch):
    import torchvision

    calls = []

    def fake_cifar10(root, train, download):  # stands in for the network: writes the archive's files
        calls.append((root, train, download))
        write_cifar10(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    bundle = cifar.load_cifar10(tmp_path, download=True)
    assert calls == [(str(tmp_path), True, True)]
    assert len(bundle.train) == 15
    cifar.load_cifar10(tmp_path, download=True)  # present now: no second download
    assert len(calls) == 1


def test_cifar_corrupt_file(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(BenchError, match="test_batch"):
        cifar.load_cifar10(tmp_path)
    write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": np.zeros((2, 100), np.uint8),
                                                                   b"labels": [0, 1]})
    with pytest.raises(BenchError, match=r"\(N, 3072\)"):
        cifar.load_cifar10(tmp_path)


# ------------------------------------------------------------------------------------------- CUB

# (class id, file, is_training, size (w, h), box x y w h). The first image is CUB's image 1 with its
# real size and box; clovaai/wsolevaluation's metadata lists it as 60,27,385,331.
CUB_IMAGES = [
    (1, "Black_Footed_Albatross_0046_18.jpg", 0, (500, 335), (60.0, 27.0, 325.0, 304.0)),
    (1, "Black_Footed_Albatross_0009_34.jpg", 1, (40, 30), (2.0, 3.0, 20.0, 10.0)),
    (1, "Black_Footed_Albatross_0002_55.jpg", 1, (50, 60), (0.0, 0.0, 49.0, 59.0)),
    (2, "Laysan_Albatross_0002_1027.jpg", 1, (30, 30), (5.0, 5.0, 10.0, 12.0)),
    (2, "Laysan_Albatross_0003_1033.jpg", 1, (36, 24), (1.0, 2.0, 30.0, 20.0)),
    (2, "Laysan_Albatross_0082_524.jpg", 0, (24, 36), (3.0, 4.0, 15.0, 25.0)),
    (3, "Sooty_Albatross_0001_1071.jpg", 1, (32, 32), (8.0, 8.0, 16.0, 16.0)),
    (3, "Sooty_Albatross_0002_796395.jpg", 1, (28, 40), (0.0, 1.0, 27.0, 38.0)),
]
CUB_CLASSES = {1: "001.Black_footed_Albatross", 2: "002.Laysan_Albatross", 3: "003.Sooty_Albatross"}


def write_cub(root: Path) -> Path:
    """A CUB_200_2011 tree with the 8 images above (JPEG, random pixels) and its 4 index files."""
    cub_dir = root / "CUB_200_2011"
    rng = np.random.default_rng(0)
    lines = {name: [] for name in cub.TABLES}
    for image_id, (cls, name, training, (w, h), box) in enumerate(CUB_IMAGES, 1):
        path = f"{CUB_CLASSES[cls]}/{name}"
        (cub_dir / "images" / CUB_CLASSES[cls]).mkdir(parents=True, exist_ok=True)
        big = w > 100  # image 1 keeps its real size; blank, so its file stays small
        pixels = np.zeros((h, w, 3), np.uint8) if big else rng.integers(0, 256, (h, w, 3), np.uint8)
        Image.fromarray(pixels).save(cub_dir / "images" / path, quality=95)
        lines["images.txt"].append(f"{image_id} {path}")
        lines["image_class_labels.txt"].append(f"{image_id} {cls}")
        lines["train_test_split.txt"].append(f"{image_id} {training}")
        lines["bounding_boxes.txt"].append(f"{image_id} " + " ".join(f"{v:.1f}" for v in box))
    for name, rows in lines.items():
        (cub_dir / name).write_text("\n".join(rows) + "\n")
    return cub_dir


def cub_load(root: Path, **options):
    return cub.load(root, **{"holdout_per_class": 1, "workers": 0, "input_size": 16,
                             "resize_size": 20, **options})


def test_cub_splits_labels_and_ids(tmp_path):
    write_cub(tmp_path)
    bundle = cub_load(tmp_path)
    paths = [f"{CUB_CLASSES[c]}/{n}" for c, n, *_ in CUB_IMAGES]
    assert bundle.num_classes == 3 and bundle.in_channels == 3 and bundle.input_size == 16
    assert bundle.class_names == list(CUB_CLASSES.values())
    assert bundle.test.ids == [paths[0], paths[5]]
    assert bundle.holdout.ids == [paths[1], paths[3], paths[6]]  # the first training image per class
    assert bundle.train.ids == [paths[2], paths[4], paths[7]]
    assert bundle.train.labels.tolist() == [0, 1, 2] and bundle.test.labels.tolist() == [0, 1]
    assert bundle.train.labels.dtype == torch.int64


def test_cub_boxes_follow_the_reference_conversion(tmp_path):
    write_cub(tmp_path)
    bundle = cub_load(tmp_path, input_size=224, resize_size=256)
    test = bundle.test
    assert test.original_boxes[0].tolist() == [[60, 27, 385, 331]]  # as in wsolevaluation's metadata
    assert test.original_size(0) == (500, 335)
    # Evaluated at 224 x 224 like the reference: int(60 * 224 / 500) = 26, int(27 * 224 / 335) = 18, ...
    assert test.boxes[0].tolist() == [[26, 18, 172, 221]]
    assert test.image_size(0) == (224, 224)
    for i, (_, _, _, (w, h), (x, y, bw, bh)) in enumerate([CUB_IMAGES[1], CUB_IMAGES[3], CUB_IMAGES[6]]):
        expected = [int(x * 224 / w), int(y * 224 / h), int((x + bw) * 224 / w), int((y + bh) * 224 / h)]
        assert bundle.holdout.boxes[i].tolist() == [expected]
        assert bundle.holdout.original_size(i) == (w, h)


def test_rescale_box_truncates_like_the_reference():
    box = np.array([[10, 20, 99, 49]])
    assert rescale_box(box, (100, 50), (224, 224)).tolist() == [[22, 89, 221, 219]]


def test_cub_eval_batches_are_resized_and_normalised_in_order(tmp_path):
    cub_dir = write_cub(tmp_path)
    bundle = cub_load(tmp_path)
    (x, y), = list(bundle.holdout.batches(8, train=False))
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.float32
    assert y.tolist() == bundle.holdout.labels.tolist()
    image = Image.open(cub_dir / "images" / bundle.holdout.ids[1]).convert("RGB")
    expected = np.asarray(image.resize((16, 16), Image.BILINEAR), dtype=np.float32) / 255.0
    expected = (expected - np.array(cub.IMAGENET_MEAN)) / np.array(cub.IMAGENET_STD)
    np.testing.assert_allclose(x[1].permute(1, 2, 0).numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("train_crop", ["resize-crop", "random-resized"])
def test_cub_train_batches_are_deterministic_for_any_worker_count(tmp_path, train_crop):
    write_cub(tmp_path)

    def run(workers: int) -> tuple[torch.Tensor, torch.Tensor]:
        split = cub_load(tmp_path, workers=workers, train_crop=train_crop).train
        xs, ys = zip(*split.batches(3, train=True, generator=torch.Generator().manual_seed(3)))
        return torch.cat(xs), torch.cat(ys)

    x0, y0 = run(0)
    x0_again, _ = run(0)
    x2, y2 = run(2)
    assert x0.shape == (3, 3, 16, 16)
    assert torch.equal(x0, x0_again) and torch.equal(x0, x2) and torch.equal(y0, y2)
    state = torch.random.get_rng_state()
    run(0)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone
    other = torch.cat([x for x, _ in cub_load(tmp_path, train_crop=train_crop).train.batches(
        2, train=True, generator=torch.Generator().manual_seed(4))])
    assert not torch.equal(x0, other)


def test_cub_data_root_may_be_the_cub_folder_itself(tmp_path):
    cub_dir = write_cub(tmp_path)
    assert len(cub_load(cub_dir).test) == 2


def test_cub_without_holdout(tmp_path):
    write_cub(tmp_path)
    bundle = cub_load(tmp_path, holdout_per_class=0)
    assert bundle.holdout is None and len(bundle.train) == 6


def test_cub_missing_data_is_one_clear_error(tmp_path):
    with pytest.raises(BenchError) as err:
        cub_load(tmp_path)
    message = str(err.value)
    assert "CUB_200_2011" in message and str(tmp_path) in message
    assert "https://data.caltech.edu/records/65de6-vp158" in message
    assert "bounding_boxes.txt" in message and "images/" in message


def test_cub_incomplete_data(tmp_path):
    cub_dir = write_cub(tmp_path)
    (cub_dir / "images" / CUB_CLASSES[2] / CUB_IMAGES[4][1]).unlink()
    with pytest.raises(BenchError, match="1 images listed in images.txt are missing"):
        cub_load(tmp_path)


def test_cub_index_file_errors(tmp_path):
    cub_dir = write_cub(tmp_path)
    boxes = cub_dir / "bounding_boxes.txt"
    lines = boxes.read_text().splitlines()
    boxes.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(BenchError, match="bounding_boxes.txt has no line for image 8"):
        cub_load(tmp_path)
    boxes.write_text("\n".join(lines[:2] + ["3 1.0 2.0 3.0"] + lines[3:]) + "\n")
    with pytest.raises(BenchError, match="bounding_boxes.txt line 3"):
        cub_load(tmp_path)


def test_cub_bad_options(tmp_path):
    write_cub(tmp_path)
    with pytest.raises(BenchError, match="train_crop"):
        cub_load(tmp_path, train_crop="centre")
    with pytest.raises(BenchError, match="leaves a class without training images"):
        cub_load(tmp_path, holdout_per_class=3)
    with pytest.raises(BenchError, match="unknown option"):
        cub_load(tmp_path, flip=True)


def test_folder_split_without_boxes(tmp_path):
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((10, 12, 3), 255, np.uint8)).save(tmp_path / name)
    split = FolderSplit(tmp_path, ["a.png", "b.png"], [4, 4], input_size=8, mean=(0.5,) * 3,
                        std=(0.5,) * 3, workers=0)
    assert split.boxes is None and split.masks is None and split.original_size(0) == (12, 10)
    (x, y), = list(split.batches(4, train=True, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(x, torch.ones(2, 3, 8, 8)) and y.tolist() == [4, 4]


def test_folder_split_shards_are_disjoint_halves(tmp_path):
    names = [f"{i}.png" for i in range(9)]
    for i, name in enumerate(names):
        Image.fromarray(np.full((6, 6, 3), 20 * i, np.uint8)).save(tmp_path / name)
    split = FolderSplit(tmp_path, names, list(range(9)), input_size=6, mean=(0.0,) * 3,
                        std=(1.0,) * 3, workers=0)

    def labels(shard):
        g = torch.Generator().manual_seed(1)
        return [y.tolist() for _, y in split.batches(4, train=True, generator=g, shard=shard)]

    whole, first, second = labels((0, 1)), labels((0, 2)), labels((1, 2))
    assert [len(b) for b in first] == [2, 2] and [len(b) for b in second] == [2, 2]
    for w, a, b in zip(whole, first, second):  # each global batch split between the two ranks
        assert sorted(a + b) == sorted(w)


# ----------------------------------------------------------------- the smoke preset on each fixture

def stored(out: Path) -> dict[str, float]:
    from bench.store import Store

    store = Store(out / "results.sqlite", create=False)
    values = {r["metric"]: r["value"] for r in store.records()}
    store.close()
    return values


def test_smoke_preset_runs_on_the_cifar_fixture(tmp_path):
    from bench.cli import main

    write_cifar10(tmp_path, per_batch=8)
    assert main(["run", "--preset", "smoke", "--dataset", "cifar10", "--data-root", str(tmp_path),
                 "--methods", "gap-fc", "--epochs", "1", "--seeds", "1", "--jobs", "1", "--batch-size", "8", "--tasks", "accuracy",
                 "wsol", "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    metrics = stored(tmp_path / "out")
    assert 0 <= metrics["top1"] <= 100
    assert "maxboxacc_v2" not in metrics  # CIFAR has no boxes: no WSOL metrics, no failure


def test_smoke_preset_runs_on_the_cub_fixture(tmp_path):
    from bench.cli import main

    write_cub(tmp_path)
    assert main(["run", "--preset", "smoke", "--dataset",
                 "cub200[input_size=16,resize_size=20,holdout_per_class=1,workers=0]",
                 "--data-root", str(tmp_path), "--methods", "gap-fc", "--epochs", "1", "--seeds", "1", "--jobs", "1",
                 "--batch-size", "2", "--tasks", "accuracy", "wsol", "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    metrics = stored(tmp_path / "out")
    assert 0 <= metrics["top1"] <= 100 and 0 <= metrics["maxboxacc_v2"] <= 100
