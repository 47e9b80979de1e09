"""Learning-speed metrics on hand-made holdout curves: the normalised area under the curve and the
interpolated epochs to 90% of GAP-FC's final holdout top-1, paired by seed, with "not reached"
shown as such; and the holdout curve the trainer records."""
from __future__ import annotations

import math

import pytest
import torch

from bench.metrics import METRICS
from bench.report.collect import load
from bench.report.learning import area, crossing
from bench.report.results import summary_rows
from bench.report.tables import learning_table
from bench.store import Store
from bench.tasks.base import Metric, TaskResult


def test_area_is_the_trapezoid_area_over_epochs_divided_by_epochs():
    # (0 + 50) / 2 + (50 + 100) / 2 = 100 over 2 epochs
    assert area([0.0, 50.0, 100.0]) == pytest.approx(50.0)
    assert area([30.0, 30.0, 30.0, 30.0]) == pytest.approx(30.0)  # a flat curve: its value
    # 10 -> 70 in one epoch, then flat for 3: (40 + 70 * 3) / 4
    assert area([10.0, 70.0, 70.0, 70.0, 70.0]) == pytest.approx(62.5)
    # the faster learner of two curves ending at the same value has the larger area
    assert area([10.0, 80.0, 90.0]) > area([10.0, 30.0, 90.0])
    with pytest.raises(ValueError):
        area([50.0])


def test_crossing_interpolates_between_the_measured_epochs():
    assert crossing([0.0, 40.0, 80.0], 60.0) == pytest.approx(1.5)  # halfway from 40 to 80
    assert crossing([0.0, 40.0, 80.0], 50.0) == pytest.approx(1.25)
    assert crossing([0.0, 50.0, 100.0], 50.0) == pytest.approx(1.0)  # reached at a measurement
    assert crossing([70.0, 80.0], 60.0) == 0.0  # already there before training
    assert crossing([0.0, 40.0, 80.0], 90.0) is None  # never reached
    # a dip after crossing does not matter: the first crossing counts
    assert crossing([0.0, 90.0, 20.0, 95.0], 81.0) == pytest.approx(0.9)


def _run(store: Store, method: str, seed: int, holdout: list[float]) -> None:
    run = store.start_run({"method": method, "seed": seed, "recipe": {"epochs": 3}},
                          method=method, method_name=method, options={}, backbone="resnet8",
                          dataset="toy", seed=seed, preset="smoke", device="cpu",
                          torch_version="2.x")
    store.record_task(run, "accuracy", TaskResult([Metric("top1", holdout[-1], "%", {})],
                                                  {"holdout_top1": holdout}))
    store.end_run(run, "complete", None)


def test_learning_metrics_pair_each_seed_with_gap_fc_and_say_not_reached(tmp_path):
    store = Store(tmp_path / "results.sqlite")
    # gap-fc's final holdout top-1: 100 (seed 0) and 80 (seed 1): thresholds 90 and 72
    _run(store, "gap-fc", 0, [10.0, 60.0, 100.0, 100.0])
    _run(store, "gap-fc", 1, [10.0, 40.0, 80.0, 80.0])
    _run(store, "slow", 0, [10.0, 30.0, 70.0, 95.0])  # 90 reached at 2 + 20/25 = 2.8
    _run(store, "slow", 1, [10.0, 30.0, 60.0, 84.0])  # 72 reached at 2 + 12/24 = 2.5
    _run(store, "stuck", 0, [10.0, 30.0, 60.0, 89.0])  # 90 never reached
    _run(store, "stuck", 1, [10.0, 50.0, 70.0, 74.0])  # 72 reached at 2 + 2/4 = 2.5
    _run(store, "never", 0, [10.0, 20.0, 30.0, 40.0])  # reached in no seed
    store.close()
    group = load(tmp_path).groups[0]
    r = group.records
    values = {(m, int(s)): v for m, s, v in
              r[r["metric"] == "epochs_to_90"][["method", "seed", "value"]].itertuples(index=False)}
    assert values[("gap-fc", 0)] == pytest.approx(1 + 30 / 40)  # 90 between 60 and 100
    assert values[("gap-fc", 1)] == pytest.approx(1 + 32 / 40)  # 72 between 40 and 80
    assert values[("slow", 0)] == pytest.approx(2.8)
    assert values[("slow", 1)] == pytest.approx(2.5)
    assert math.isnan(values[("stuck", 0)]) and values[("stuck", 1)] == pytest.approx(2.5)
    aucs = {(m, int(s)): v for m, s, v in
            r[r["metric"] == "learning_auc"][["method", "seed", "value"]].itertuples(index=False)}
    assert aucs[("slow", 0)] == pytest.approx((20 + 50 + 82.5) / 3)
    assert aucs[("gap-fc", 1)] == pytest.approx((25 + 60 + 80) / 3)

    table = learning_table(group)
    rows = {row[0]: row for row in table.rows}
    at = table.columns.index(METRICS.get("epochs_to_90").header())
    assert rows["stuck"][at] == "not reached in 1 of 2 seeds"
    assert rows["stuck"][at + 3] == "not reached in 1 of 2 seeds"
    assert rows["slow"][at].startswith("2.65 ± ")  # mean of 2.8 and 2.5
    # slow - gap-fc, paired by seed: 2.8 - 1.75 and 2.5 - 1.8
    assert rows["slow"][at + 1].startswith(f"+{((2.8 - 1.75) + (2.5 - 1.8)) / 2:.2f}")

    results = {r["method"]: r for r in summary_rows([group]) if r["metric"] == "epochs_to_90"}
    assert results["stuck"]["verdict"] == "not reached in 1 of 2 seeds"
    assert results["stuck"]["mean"] is None and results["stuck"]["diff"] is None
    assert results["slow"]["mean"] == pytest.approx(2.65)
    assert results["never"]["verdict"] == "not reached in 1 of 1 seeds"
    assert rows["never"][at] == "not reached in 1 of 1 seeds"


def test_the_trainer_records_the_holdout_curve_from_before_training():
    from conftest import quadrant_split

    from bench.data.base import DataBundle
    from bench.presets import Recipe
    from bench.train import evaluate, train
    from bench.api import build_model

    data = DataBundle("toy-quadrants", 4, 1, 16, quadrant_split(64, 0), quadrant_split(32, 1),
                      quadrant_split(32, 2), ["tl", "tr", "bl", "br"])
    torch.manual_seed(0)
    model = build_model("gap-fc", "resnet8", 4, 1, 16)
    before = evaluate(model, data.holdout, 64, torch.device("cpu"))["top1"]
    history = train(model, data, Recipe(dataset="toy", epochs=2, batch_size=16, lr=0.05), 0,
                    torch.device("cpu"), progress=False)
    assert len(history.holdout_top1) == 3 and history.holdout_top1[0] == before
    assert history.holdout_top1[-1] == evaluate(model, data.holdout, 64,
                                                torch.device("cpu"))["top1"]
