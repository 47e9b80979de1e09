"""Shared test fixtures: tiny registered datasets ("toy-quadrants", "toy-grid") that train in a
second, one suite of every registered method trained on it once per test session, and the stored
metrics of a store, to compare two runs bit for bit."""
from __future__ import annotations

import importlib.util
import os
import sqlite3
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from bench.data.base import Augment, DataBundle, TensorSplit
from bench.plugins import load_all
from bench.registry import DATASETS

load_all()


def grid_split(n: int, seed: int, grid: int = 2, size: int = 16) -> TensorSplit:
    """Class c = a bright square filling cell c of a grid x grid partition of the image, on noise:
    boxes and masks are known exactly."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, grid * grid, (n,), generator=g)
    cell = size // grid
    images = (torch.rand(n, 1, size, size, generator=g) * 60).to(torch.uint8)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    boxes = []
    for i, c in enumerate(labels.tolist()):
        y0, x0 = (c // grid) * cell, (c % grid) * cell
        images[i, 0, y0:y0 + cell, x0:x0 + cell] = 220
        masks[i, y0:y0 + cell, x0:x0 + cell] = True
        boxes.append(np.array([[x0, y0, x0 + cell - 1, y0 + cell - 1]]))
    return TensorSplit(images, labels, [0.4], [0.35], [f"img/{seed}-{i:04d}.png" for i in range(n)],
                       boxes, masks, Augment(pad=1))


def quadrant_split(n: int, seed: int, size: int = 16) -> TensorSplit:
    """Class c = a bright square in quadrant c (a 2 x 2 grid)."""
    return grid_split(n, seed, 2, size)


if "toy-quadrants" not in DATASETS:
    @DATASETS.register("toy-quadrants", "test-only: a bright square in one of 4 quadrants", n=256)
    def load_toy(data_root, download=False, n=256):
        return DataBundle("toy-quadrants", 4, 1, 16, quadrant_split(n, 0), quadrant_split(64, 1),
                          quadrant_split(64, 2), ["tl", "tr", "bl", "br"])

if "toy-grid" not in DATASETS:
    @DATASETS.register("toy-grid", "test-only: a bright square in one of the 9 cells of a 3 x 3 "
                       "grid (top-5 defined)", n=256)
    def load_toy_grid(data_root, download=False, n=256):
        return DataBundle("toy-grid", 9, 1, 18, grid_split(n, 0, 3, 18), grid_split(64, 1, 3, 18),
                          grid_split(64, 2, 3, 18), [f"cell{c}" for c in range(9)])


# The smallest registered data set that still learns: digits-clutter with one copy of each digit on
# a 16 x 16 canvas (1,078 training, 179 holdout and 540 test images), for end-to-end tests whose
# workers (other processes, Ray) must find the data set by its registered name.
TINY_CLUTTER = "digits-clutter[copies=1,eval_copies=1,canvas=16,min_size=8,max_size=12]"


# The smallest run on which every method learns: toy-grid (256 training images of 18x18, 9
# classes, so top-5 is defined), two epochs of 32 steps of 8 images (CBAM is at chance after one);
# accuracy and WSOL.
SMOKE_ARGS = ["--preset", "smoke", "--dataset", "toy-grid", "--epochs", "2", "--batch-size", "8",
              "--tasks", "accuracy", "wsol", "--jobs", "1", "--no-progress"]


def threads_per_test() -> int:
    """Torch threads per test: BENCH_TEST_THREADS, else the cores shared among pytest-xdist's
    workers (oversubscribed OpenMP threads spin and slow every run down)."""
    if "BENCH_TEST_THREADS" in os.environ:
        return int(os.environ["BENCH_TEST_THREADS"])
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, (os.cpu_count() or 1) // workers)


@pytest.fixture(scope="session")
def smoke_store(tmp_path_factory) -> Path:
    """The directory of one ``bench run`` of every registered method (SMOKE_ARGS): its store,
    report and score maps (``maps/``). Trained once per session, by the first pytest-xdist worker
    that needs it, and shared: read it, or copy it before writing."""
    from filelock import FileLock

    from bench.cli import main

    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent  # shared by every worker of this session
    out, done = root / "smoke", root / "smoke.done"
    with FileLock(str(root / "smoke.lock")):
        if not done.exists():
            torch.set_num_threads(threads_per_test())
            assert main(["run", "--out", str(out), "--save-scoremaps", str(out / "maps"),
                         *SMOKE_ARGS]) == 0
            done.touch()
    return out


@pytest.fixture(autouse=True)
def _threads():
    """Each test's torch threads (``threads_per_test``), whatever the previous test set."""
    torch.set_num_threads(threads_per_test())
    yield


def refused(capsys, argv: list[str], store) -> str:
    """Run the CLI on ``argv`` expecting a refusal: exit code 2, one ``error:`` line and no
    traceback, the store byte for byte as before. Returns the line."""
    from bench.cli import main

    before = store.read_bytes()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert store.read_bytes() == before
    return err


TIMING = {"train_time", "train_throughput"}  # measured, so never the same twice


def stored(out: Path) -> dict[tuple, float]:
    """The store's metrics under ``out`` but timings, by (method, seed, task, metric)."""
    db = sqlite3.connect(Path(out) / "results.sqlite")
    rows = db.execute("SELECT r.method, r.seed, m.task, m.name, m.value FROM metrics m "
                      "JOIN runs r ON r.id = m.run_id").fetchall()
    db.close()
    return {row[:4]: row[4] for row in rows if row[3] not in TIMING}


def benchmark_script(name: str) -> ModuleType:
    """``benchmarks/NAME.py`` imported as a module (benchmarks are scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
