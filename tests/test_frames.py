"""``bench.results`` and ``bench.compare``: stored results as DataFrames whose numbers are those of
``bench results --format csv`` and, for a hand-made store, the statistics computed here."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hand_stats import holm, paired_p
from scipy import stats

import bench
from bench.cli import main
from bench.errors import BenchError
from bench.report.results import SUMMARY_FIELDS
from bench.store import Store
from bench.tasks.base import Metric, TaskResult

TOP1 = {"gap-fc": [70.0, 72.0, 71.0], "se": [73.0, 75.5, 74.0], "cbam": [70.5, 71.0, 72.5]}
PARAMS = {"gap-fc": 78000, "se": 79000, "cbam": 79500}


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("frames")
    store = Store(out / "results.sqlite")
    for method, values in TOP1.items():
        for seed, top1 in enumerate(values):
            run = store.start_run({"method": method, "seed": seed, "recipe": {"epochs": 2}},
                                  method=method, method_name=method, options={},
                                  backbone="resnet8", dataset="toy", seed=seed, preset="smoke",
                                  device="cpu", torch_version="2.x")
            holdout = [10.0, top1 - 20.0, top1]  # the curve the learning-speed metrics read
            store.record_task(run, "accuracy", TaskResult([Metric("top1", top1, "%", {})],
                                                          curves={"holdout_top1": holdout}))
            if seed == 0:
                store.record_task(run, "cost", TaskResult([Metric("params", PARAMS[method],
                                                                  "count", {})]))
            store.end_run(run, "complete")
    store.close()
    return out


def cli(capsys, *args: str) -> str:
    assert main(["results", *args]) == 0
    return capsys.readouterr().out


def test_results_are_the_csv_of_bench_results(out, capsys):
    frame = bench.results(out)
    text = cli(capsys, "--out", str(out), "--format", "csv", "--interval", "t")
    assert list(frame.columns) == SUMMARY_FIELDS
    # 3 methods x (top1, params, and the learning-speed metrics derived from the stored curves)
    assert set(frame["metric"]) == {"top1", "params", "learning_auc", "epochs_to_90"}
    assert len(frame) == 12
    assert frame.to_csv(index=False) + "\n" == text  # print adds the last newline
    parsed = pd.read_csv(io.StringIO(text))
    numeric = ["n", "mean", "ci_low", "ci_high", "diff", "diff_low", "diff_high", "p", "p_holm"]
    assert np.array_equal(frame[numeric].to_numpy(float), parsed[numeric].to_numpy(float),
                          equal_nan=True)
    assert bench.results(out, interval="bootstrap").to_csv(index=False) + "\n" == cli(
        capsys, "--out", str(out), "--format", "csv", "--interval", "bootstrap")


def test_results_hold_the_statistics_computed_by_hand(out):
    frame = bench.results(out).set_index(["method", "metric"])
    t = stats.t.ppf(0.975, 2)
    for method, values in TOP1.items():
        row = frame.loc[(method, "top1")]
        mean = sum(values) / 3
        half = t * np.std(values, ddof=1) / math.sqrt(3)
        assert row["n"] == 3 and row["mean"] == pytest.approx(mean, abs=1e-12)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((mean - half, mean + half))
    diffs = {m: [a - b for a, b in zip(TOP1[m], TOP1["gap-fc"])] for m in ("se", "cbam")}
    corrected = dict(zip(diffs, holm([paired_p(d) for d in diffs.values()])))
    for method, d in diffs.items():
        row = frame.loc[(method, "top1")]
        assert row["diff"] == pytest.approx(sum(d) / 3)
        assert row["p"] == pytest.approx(paired_p(d)) and row["p_holm"] == pytest.approx(
            corrected[method])
    assert frame.loc[("gap-fc", "top1"), "verdict"] == "reference"
    assert frame.loc[("se", "params"), "mean"] == 79000 and frame.loc[("se", "params"), "n"] == 1


def test_per_seed_results_are_the_stored_records(out, capsys):
    frame = bench.results(out, per_seed=True)
    assert frame.to_csv(index=False) + "\n" == cli(capsys, "--out", str(out), "--per-seed",
                                                   "--format", "csv")
    top1 = frame[frame["metric"] == "top1"]
    assert {m: list(top1[top1["method"] == m].sort_values("seed")["value"]) for m in TOP1} == TOP1


def test_compare_is_the_verdict_table_of_one_metric(out):
    table = bench.compare(out, metric="top1")
    assert list(table["method"]) == ["gap-fc", "se", "cbam"] and set(table["metric"]) == {"top1"}
    assert table.to_csv(index=False) == bench.results(out).query("metric == 'top1'").to_csv(
        index=False)
    with pytest.raises(BenchError, match="metric 'top9' is not stored under .*; stored: top1, "
                                         "params"):
        bench.compare(out, metric="top9")


def test_results_of_a_path_that_is_no_store_name_it(tmp_path):
    with pytest.raises(BenchError, match=str(tmp_path / "nowhere")):
        bench.results(tmp_path / "nowhere")
    (tmp_path / "results.sqlite").write_text("not a database")
    with pytest.raises(BenchError, match=str(tmp_path / "results.sqlite")):
        bench.results(tmp_path)


def test_the_notebook_example_runs(out):
    doc = (Path(__file__).resolve().parents[1] / "docs" / "notebooks.md").read_text()
    code = doc.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 11
    scope: dict = {}
    exec(code.replace('"reports"', repr(str(out))), scope)
    assert list(scope["verdicts"]["method"]) == ["gap-fc", "se", "cbam"]
    assert scope["seeds"].pivot_table(index="seed", columns="method", values="value",
                                      aggfunc="first").shape == (3, 3)
