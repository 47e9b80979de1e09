"""Shared test fixtures: a tiny registered dataset ("toy-quadrants") that trains in a second, and
the stored metrics of a store, to compare two runs bit for bit."""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.data.base import Augment, DataBundle, TensorSplit
from bench.plugins import load_all
from bench.registry import DATASETS

load_all()


def quadrant_split(n: int, seed: int, size: int = 16) -> TensorSplit:
    """Class c = a bright square in quadrant c, on noise: boxes and masks are known exactly."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    half = size // 2
    images = (torch.rand(n, 1, size, size, generator=g) * 60).to(torch.uint8)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    boxes = []
    for i, c in enumerate(labels.tolist()):
        y0, x0 = (c // 2) * half, (c % 2) * half
        images[i, 0, y0:y0 + half, x0:x0 + half] = 220
        masks[i, y0:y0 + half, x0:x0 + half] = True
        boxes.append(np.array([[x0, y0, x0 + half - 1, y0 + half - 1]]))
    return TensorSplit(images, labels, [0.4], [0.35], [f"img/{seed}-{i:04d}.png" for i in range(n)],
                       boxes, masks, Augment(pad=1))


if "toy-quadrants" not in DATASETS:
    @DATASETS.register("toy-quadrants", "test-only: a bright square in one of 4 quadrants", n=256)
    def load_toy(data_root, download=False, n=256):
        return DataBundle("toy-quadrants", 4, 1, 16, quadrant_split(n, 0), quadrant_split(64, 1),
                          quadrant_split(64, 2), ["tl", "tr", "bl", "br"])


@pytest.fixture(autouse=True)
def _threads():
    """Two torch threads per test (the CI machine's cores); BENCH_TEST_THREADS=1 where several
    test runs share the cores (oversubscribed OpenMP threads spin and slow every run down)."""
    torch.set_num_threads(int(os.environ.get("BENCH_TEST_THREADS", "2")))
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
