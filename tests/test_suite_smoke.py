"""Every registered method trains through the suite on the smallest data that still learns
(toy-grid, conftest.SMOKE_ARGS), beats chance, and has its accuracy and WSOL metrics in the
store. The smoke preset on the default dataset is gated against its baseline by `bench check` in CI."""
import json

import pytest

from bench.cli import main
from bench.registry import METHODS
from bench.store import Store

CHANCE = 100 / 9  # toy-grid has 9 classes


@pytest.fixture(scope="module")
def smoke_records(smoke_store):
    store = Store(smoke_store / "results.sqlite", create=False)
    records, runs = store.records(), store.runs()
    store.close()
    return records, runs


def test_every_method_ran(smoke_records):
    _, runs = smoke_records
    assert sorted(r["method"] for r in runs) == sorted(METHODS.names())
    assert all(r["status"] == "complete" for r in runs)


@pytest.mark.parametrize("method", METHODS.names())
def test_method_learns_and_localizes(smoke_records, method):
    records, _ = smoke_records
    mine = {r["metric"]: r for r in records if r["method"] == method}
    # every method beats chance clearly; the baseline learns well above it
    floor = 3 * CHANCE if method == "gap-fc" else 1.5 * CHANCE
    assert mine["top1"]["value"] > floor, f"{method}: top-1 {mine['top1']['value']:.1f} %"
    for metric in ("gt_known_loc", "top1_loc", "top5_loc", "maxboxacc_v2", "maxboxacc_30",
                   "maxboxacc_50", "maxboxacc_70", "maxboxacc_v1", "pxap"):
        assert mine[metric]["unit"] == "%" and 0 <= mine[metric]["value"] <= 100


def test_results_command_lists_every_method_and_task(smoke_store, capsys):
    assert main(["results", "--out", str(smoke_store), "--format", "json", "--per-seed"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {(r["method"], r["task"]) for r in listed} == {
        (m, t) for m in METHODS.names() for t in ("accuracy", "wsol")}
