"""The regression gate `bench check`: an --update'd baseline passes; changed parameters or FLOPs,
accuracy or localization drops beyond tolerance, and missing records fail (exit 1), each named on
one line; a malformed baseline is one error line (exit 2)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.cli import main
from bench.report.check import MAX_WIDENING, MIN_NOISE_SEEDS, bounded_tolerance
from bench.store import Store
from bench.tasks.base import Metric, TaskResult

TOP1 = {"gap-fc": [70.0, 72.0], "se": [74.0, 75.0]}


def make_store(out: Path, params_by_seed: tuple[float, float] = (78000.0, 78000.0),
               recipes: tuple[int, int] = (2, 2)) -> None:
    """gap-fc and se, 2 seeds each: accuracy, a WSOL metric and cost (cost on both seeds here)."""
    store = Store(out / "results.sqlite")
    for k, method in enumerate(TOP1):
        for seed, top1 in enumerate(TOP1[method]):
            run = store.start_run({"method": method, "seed": seed, "recipe": {"epochs": recipes[seed]}},
                                  method=method, method_name=method, options={}, backbone="resnet8",
                                  dataset="toy", seed=seed, preset="smoke", device="cpu",
                                  torch_version="2.x")
            store.record_task(run, "accuracy", TaskResult([
                Metric("top1", top1, "%"), Metric("test_loss", 0.5 + seed / 10, "nats"),
                Metric("train_time", 10.0 + seed, "s")]))
            store.record_task(run, "wsol", TaskResult([Metric("maxboxacc_v2", 50.0 + k + seed, "%")]))
            store.record_task(run, "cost", TaskResult([
                Metric("params", params_by_seed[seed] + 1000 * k, "count"),
                Metric("gmacs", 0.0123456789 + k / 1000, "GMac"),
                Metric("latency_ms", 1.0 + seed, "ms")]))
            store.end_run(run, "complete")
    store.close()


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def gated(tmp_path, capsys):
    """A store and a baseline written from it with --update."""
    make_store(tmp_path)
    baseline = tmp_path / "baseline.json"
    code, out, _ = cli(capsys, "check", "--out", str(tmp_path), "--baseline", str(baseline), "--update")
    assert code == 0 and "baseline written" in out
    return tmp_path, baseline


def edit(baseline: Path, change) -> None:
    data = json.loads(baseline.read_text())
    change(data)
    baseline.write_text(json.dumps(data, indent=2))


def record(data: dict, method: str, metric: str) -> dict:
    return next(r for r in data["records"] if r["method"] == method and r["metric"] == metric)


def test_update_writes_means_and_check_passes(gated, capsys):
    out_dir, baseline = gated
    data = json.loads(baseline.read_text())
    assert data["default_tolerance"] == {"accuracy": 2.0, "wsol": 5.0}
    values = {(r["method"], r["metric"]): r["value"] for r in data["records"]}
    assert values == {("gap-fc", "top1"): 71.0, ("se", "top1"): 74.5,
                      ("gap-fc", "maxboxacc_v2"): 50.5, ("se", "maxboxacc_v2"): 51.5,
                      ("gap-fc", "params"): 78000.0, ("se", "params"): 79000.0,
                      ("gap-fc", "gmacs"): 0.0123456789, ("se", "gmacs"): 0.0123456789 + 1 / 1000}
    # timing is never gated; test_loss (nats) has no tolerance: a task's default covers % only
    code, out, _ = cli(capsys, "check", "--out", str(out_dir), "--baseline", str(baseline))
    assert code == 0 and "check passed: 8 baseline records within tolerance" in out


@pytest.mark.parametrize("metric, delta", [("params", 1.0), ("gmacs", 1e-10)])
def test_changed_params_or_flops_fail(gated, capsys, metric, delta):
    out_dir, baseline = gated
    edit(baseline, lambda d: record(d, "se", metric).update(value=record(d, "se", metric)["value"] + delta))
    code, out, _ = cli(capsys, "check", "--out", str(out_dir), "--baseline", str(baseline))
    assert code == 1
    failures = [line for line in out.splitlines() if line.startswith("REGRESSION")]
    assert len(failures) == 1
    assert f"se toy/resnet8 cost/{metric}" in failures[0] and "tolerance exact" in failures[0]
    current = {"params": "79000", "gmacs": "0.0133456789"}[metric]
    assert f"current {current}," in failures[0]


def without_std(data: dict) -> None:
    """Records without their seeds' std fall back to the default tolerances."""
    for r in data["records"]:
        r.pop("std", None)


def test_accuracy_drop_beyond_tolerance_fails_rise_passes(gated, capsys):
    out_dir, baseline = gated
    edit(baseline, without_std)
    edit(baseline, lambda d: record(d, "se", "top1").update(value=74.5 + 2.5))  # now 2.5 below
    edit(baseline, lambda d: record(d, "gap-fc", "top1").update(value=71.0 + 1.9))  # within 2.0
    edit(baseline, lambda d: record(d, "se", "maxboxacc_v2").update(value=51.5 - 8.0))  # a rise
    code, out, _ = cli(capsys, "check", "--out", str(out_dir), "--baseline", str(baseline))
    assert code == 1
    lines = out.splitlines()
    assert ("REGRESSION se toy/resnet8 accuracy/top1: baseline 77.0000, current 74.5000 "
            "(mean of 2 seeds), tolerance 2") in lines
    assert not any("gap-fc toy/resnet8 accuracy/top1" in line for line in lines)
    assert any(line.startswith("IMPROVED se toy/resnet8 wsol/maxboxacc_v2") for line in lines)
    assert lines[-1] == "check failed: 1 of 8 baseline records regressed or missing"


def test_record_tolerance_and_lower_is_better(gated, capsys):
    out_dir, baseline = gated

    def change(data):
        record(data, "se", "top1").update(value=74.5 + 2.5, tolerance=3.0)  # its own tolerance
        data["default_tolerance"]["test_loss"] = 0.01
        data["records"].append({"method": "gap-fc", "dataset": "toy", "backbone": "resnet8",
                                "task": "accuracy", "metric": "test_loss", "value": 0.5})
    edit(baseline, change)
    code, out, _ = cli(capsys, "check", "--out", str(out_dir), "--baseline", str(baseline))
    assert code == 1  # gap-fc's loss is 0.55 on average: a rise of 0.05 > 0.01
    failures = [line for line in out.splitlines() if line.startswith(("REGRESSION", "MISSING"))]
    assert failures == ["REGRESSION gap-fc toy/resnet8 accuracy/test_loss: baseline 0.5000, current "
                        "0.5500 (mean of 2 seeds), tolerance 0.01"]
    # --update keeps the per-record and default tolerances
    cli(capsys, "check", "--out", str(out_dir), "--baseline", str(baseline), "--update")
    data = json.loads(baseline.read_text())
    assert data["default_tolerance"]["test_loss"] == 0.01
    assert record(data, "se", "top1")["tolerance"] == 3.0 and record(data, "se", "top1")["value"] == 74.5
    assert record(data, "gap-fc", "test_loss")["value"] == pytest.approx(0.55)


def test_missing_records_and_every_regression_named(gated, capsys):
    out_dir, baseline = gated
    edit(baseline, without_std)

    def change(data):
        data["records"].append(dict(record(data, "se", "top1"), method="cbam"))
        record(data, "gap-fc", "params").update(value=1.0)
        record(data, "gap-fc", "maxboxacc_v2").update(value=60.0)
    edit(baseline, change)
    code, out, _ = cli(capsys, "check", "--out", str(out_dir), "--baseline", str(baseline),
                       "--methods", "gap-fc", "se", "cbam")
    assert code == 1
    named = [line.split(":")[0] for line in out.splitlines() if line.startswith(("REGRESSION", "MISSING"))]
    assert sorted(named) == ["MISSING cbam toy/resnet8 accuracy/top1",
                             "REGRESSION gap-fc toy/resnet8 cost/params",
                             "REGRESSION gap-fc toy/resnet8 wsol/maxboxacc_v2"]


def test_update_records_the_seed_spread(gated):
    _, baseline = gated
    top1 = record(json.loads(baseline.read_text()), "gap-fc", "top1")
    assert top1["seeds"] == 2 and top1["std"] == pytest.approx(2 ** 0.5)  # seeds 70 and 72


T975_DF2 = 4.30265273  # Student's t(0.975, 2), from tables


@pytest.mark.parametrize("shift, fails", [(3.8, False), (4.1, True)])
def test_noise_margin_from_the_baselines_seeds(gated, capsys, shift, fails):
    """Baseline of m = 3 seeds with std 1; current mean of n = 2 seeds (71.0): the allowed drop
    is t(0.975, 2) * 1 * sqrt(1/2 + 1/3) = 4.30265 * 0.91287 = 3.928 percentage points, inside
    the bounds [2, 2 x 2] of the fixed tolerance 2."""
    out_dir, baseline = gated
    edit(baseline, lambda d: record(d, "gap-fc", "top1").update(value=71.0 + shift, seeds=3, std=1.0))
    code, out, _ = cli(capsys, "check", "--out", str(out_dir), "--baseline", str(baseline))
    assert code == (1 if fails else 0)
    margin = T975_DF2 * math.sqrt(1 / 2 + 1 / 3)
    if fails:
        assert (f"tolerance {margin:.4g} (fixed 2, 95% prediction margin {margin:.4g} of the "
                "baseline's 3 seeds with std 1, bounded to [2, 2 x 2])") in out


def check_top1(gated, capsys, shift: float, seeds: int, std: float) -> tuple[int, str]:
    """``bench check`` against a baseline whose gap-fc top-1 is the stored 71.0 + ``shift`` over
    ``seeds`` seeds with ``std``: its exit code and output."""
    out_dir, baseline = gated
    edit(baseline, lambda d: record(d, "gap-fc", "top1").update(value=71.0 + shift, seeds=seeds,
                                                                  std=std))
    code, out, _ = cli(capsys, "check", "--out", str(out_dir), "--baseline", str(baseline))
    return code, out


@pytest.mark.parametrize("shift, fails", [(3.9, False), (4.1, True)])
def test_noise_margin_widens_at_most_by_the_stated_factor(gated, capsys, shift, fails):
    """std 5 over 3 seeds: the margin, 4.30265 * 5 * 0.91287 = 19.6 pp, is capped at
    MAX_WIDENING x the fixed 2 pp = 4 pp, so a 4.1 pp drop fails."""
    code, out = check_top1(gated, capsys, shift, seeds=3, std=5.0)
    assert MAX_WIDENING == 2.0
    assert code == (1 if fails else 0)
    if fails:
        margin = T975_DF2 * 5 * math.sqrt(1 / 2 + 1 / 3)
        assert f"tolerance 4 (fixed 2, 95% prediction margin {margin:.4g}" in out


@pytest.mark.parametrize("shift, fails", [(1.9, False), (2.1, True)])
def test_noise_margin_never_narrows_the_fixed_tolerance(gated, capsys, shift, fails):
    """std 0 (e.g. 100% on every seed): the margin is 0, the fixed 2 pp still applies."""
    code, out = check_top1(gated, capsys, shift, seeds=5, std=0.0)
    assert code == (1 if fails else 0)
    if fails:
        assert "tolerance 2 (fixed 2, 95% prediction margin 0 " in out


@pytest.mark.parametrize("shift, fails", [(1.9, False), (2.1, True)])
def test_two_baseline_seeds_get_the_fixed_tolerance(gated, capsys, shift, fails):
    """m = 2, std 2: the prediction margin would be t(0.975, 1) * 2 * sqrt(1/2 + 1/2) = 25.4 pp;
    below MIN_NOISE_SEEDS baseline seeds the fixed 2 pp applies instead."""
    code, out = check_top1(gated, capsys, shift, seeds=2, std=2.0)
    assert MIN_NOISE_SEEDS == 3
    assert code == (1 if fails else 0)
    if fails:
        assert ("REGRESSION gap-fc toy/resnet8 accuracy/top1: baseline 73.1000, current 71.0000 "
                "(mean of 2 seeds), tolerance 2") in out


def test_bounded_tolerance_edges():
    assert bounded_tolerance(2.0, None) == 2.0
    assert bounded_tolerance(2.0, 0.0) == 2.0
    assert bounded_tolerance(2.0, 3.0) == 3.0
    assert bounded_tolerance(2.0, 25.0) == 2.0 * MAX_WIDENING
    assert bounded_tolerance(0.0, 1.0) == 0.0  # a zero tolerance stays zero


def test_check_limits_itself_to_the_methods_in_the_store(gated, capsys):
    out_dir, baseline = gated
    edit(baseline, lambda d: d["records"].append(dict(record(d, "se", "top1"), method="cbam")))
    code, out, _ = cli(capsys, "check", "--out", str(out_dir), "--baseline", str(baseline))
    assert code == 0 and "(1 records of other methods not checked)" in out  # cbam: not run here
    code, out, _ = cli(capsys, "check", "--out", str(out_dir), "--baseline", str(baseline),
                       "--methods", "gap-fc")
    assert code == 0 and "check passed: 4 baseline records" in out
    code, out, _ = cli(capsys, "check", "--out", str(out_dir), "--baseline", str(baseline),
                       "--methods", "gap-fc", "cbam")
    assert code == 1 and "MISSING cbam toy/resnet8 accuracy/top1" in out


def test_exact_metric_differing_between_seeds_fails(tmp_path, capsys):
    make_store(tmp_path, params_by_seed=(78000.0, 78001.0))
    baseline = tmp_path / "b.json"
    cli(capsys, "check", "--out", str(tmp_path), "--baseline", str(baseline), "--update")
    code, out, _ = cli(capsys, "check", "--out", str(tmp_path), "--baseline", str(baseline))
    assert code == 1 and "differs between seeds (78000, 78001)" in out


def test_store_mixing_recipes_is_refused(tmp_path, capsys):
    make_store(tmp_path, recipes=(2, 3))
    code, _, err = cli(capsys, "check", "--out", str(tmp_path), "--baseline", str(tmp_path / "b.json"),
                       "--update")
    assert code == 2 and "several training recipes for toy/resnet8" in err


@pytest.mark.parametrize("text, message", [
    ('{"records": [\n  {"method": "gap-fc",\n', "b.json:3: not valid JSON"),
    ('[1, 2]', 'expected an object with a "records" list'),
    ('{"records": [], "tolerance": 1}', "unknown key(s) tolerance"),
    ('{"default_tolerance": {"accuracy": "two"}, "records": []}', "default_tolerance must map"),
    ('{"records": [\n\n {"method": "gap-fc", "dataset": "toy"}]}', "b.json:3: record 0: missing backbone"),
    ('{"records": [{"method": "gap-fc", "dataset": "toy", "backbone": "resnet8", "task": "accuracy", '
     '"metric": "top1", "value": "high"}]}', "value must be a finite number"),
    ('{"records": [{"method": "gap-fc", "dataset": "toy", "backbone": "resnet8", "task": "cost", '
     '"metric": "latency_ms", "value": 1.0}]}', "latency_ms is not gated (a timing: too noisy)"),
    ('{"records": [{"method": "gap-fc", "dataset": "toy", "backbone": "resnet8", "task": "cost", '
     '"metric": "gmacs", "value": 1.0, "tolerance": 0.1}]}', "gmacs is compared exactly"),
    ('{"records": [{"method": "gap-fc", "dataset": "toy", "backbone": "resnet8", "task": "accuracy", '
     '"metric": "top1", "value": 1.0, "tolerence": 0.1}]}', "unknown key(s) tolerence"),
    ('{"records": [{"method": "gap-fc", "dataset": "toy", "backbone": "resnet8", "task": "accuracy", '
     '"metric": "test_loss", "value": 0.5}]}', 'no tolerance applies; give the record a "tolerance"'),
])
def test_malformed_baseline_is_one_line_exit_2(tmp_path, capsys, text, message):
    make_store(tmp_path)
    baseline = tmp_path / "b.json"
    baseline.write_text(text)
    for extra in ([], ["--update"]):
        code, out, err = cli(capsys, "check", "--out", str(tmp_path), "--baseline", str(baseline), *extra)
        if extra and "no tolerance applies" in message:
            assert code == 0  # --update rewrites a well-formed baseline whatever its values
            continue
        assert code == 2 and out == ""
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
        assert baseline.read_text() == text  # never overwritten


def test_missing_baseline_file(tmp_path, capsys):
    make_store(tmp_path)
    code, _, err = cli(capsys, "check", "--out", str(tmp_path), "--baseline", str(tmp_path / "none.json"))
    assert code == 2 and "cannot read baseline" in err and "--update" in err


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
def test_undecodable_baseline_is_one_line_exit_2(tmp_path, capsys, encoding):
    make_store(tmp_path)
    baseline = tmp_path / "b.json"
    baseline.write_text('{"records": []}', encoding=encoding)
    before = baseline.read_bytes()
    for extra in ([], ["--update"]):
        code, out, err = cli(capsys, "check", "--out", str(tmp_path), "--baseline", str(baseline), *extra)
        assert code == 2 and out == "" and err.count("\n") == 1
        assert err.startswith(f"error: {baseline}: not UTF-8 text") and "Traceback" not in err
        assert baseline.read_bytes() == before


def test_update_where_the_baseline_folder_is_a_file(tmp_path, capsys):
    make_store(tmp_path)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("precious")
    for target in (blocker / "baseline.json", blocker / "sub" / "baseline.json"):
        code, out, err = cli(capsys, "check", "--out", str(tmp_path), "--baseline", str(target),
                             "--update")
        assert code == 2 and out == "" and err.count("\n") == 1
        assert err.startswith(f"error: cannot write baseline {target} (") and "Traceback" not in err
    assert blocker.read_text() == "precious"


@pytest.mark.parametrize("change, methods, message", [
    (lambda d: d.update(records=[]), [], "has no records: nothing to check"),
    (lambda d: d.update(records=[dict(r, method="cbam") for r in d["records"]]), [],
     "no record of baseline {baseline} is of a method checked (the store's: gap-fc, se; the "
     "baseline has cbam): nothing to check"),
    (None, ["--methods", "nope"], "--methods nope: in neither the store (methods: gap-fc, se) nor "
                                  "the baseline (gap-fc, se); nothing to check for them"),
    (None, ["--methods", "gap-fc", "eca"], "--methods eca: in neither the store"),
])
def test_a_check_of_nothing_is_refused(gated, capsys, change, methods, message):
    """A gate that would compare nothing never passes: one error line, exit 2."""
    out_dir, baseline = gated
    if change is not None:
        edit(baseline, change)
    code, out, err = cli(capsys, "check", "--out", str(out_dir), "--baseline", str(baseline),
                         *methods)
    assert code == 2 and out == "" and "passed" not in err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message.format(baseline=baseline) in err
