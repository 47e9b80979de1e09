import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from conftest import refused
from bench.store import Store
from bench.tasks.base import Metric, TaskResult

TOY = ["--dataset", "toy-quadrants", "--backbone", "resnet8", "--epochs", "1", "--seeds", "1", "--jobs", "1", "--no-progress",
       "--tasks", "accuracy"]


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_stores_results_and_resume_skips(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "run", "--methods", "gap-fc", "--out", str(tmp_path), *TOY)
    assert code == 0
    assert "gap-fc" in out and "top-1 (%)" in out
    db = sqlite3.connect(tmp_path / "results.sqlite")
    run = db.execute("SELECT status, seed, preset, git_commit, torch_version FROM runs").fetchall()
    assert len(run) == 1 and run[0][0] == "complete"
    ended_before = db.execute("SELECT ended FROM task_runs").fetchall()
    curves = db.execute("SELECT name, COUNT(*) FROM curves GROUP BY name").fetchall()
    assert dict(curves) == {"train_loss": 1, "train_top1": 1, "test_top1": 1, "lr": 1,
                            "holdout_top1": 2}  # before training and after the epoch
    assert "nothing to do" not in out
    code, out, _ = run_cli(capsys, "run", "--methods", "gap_fc", "--out", str(tmp_path), *TOY)
    assert code == 0
    assert "nothing to do: all 1 runs are already in the store\n" in out
    assert db.execute("SELECT ended FROM task_runs").fetchall() == ended_before  # not rerun
    assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1


def test_results_json_records(tmp_path, capsys):
    run_cli(capsys, "run", "--methods", "gap-fc", "--out", str(tmp_path), *TOY)
    code, out, _ = run_cli(capsys, "results", "--out", str(tmp_path), "--format", "json",
                           "--per-seed")
    assert code == 0
    records = json.loads(out)
    top1 = [r for r in records if r["metric"] == "top1"]
    assert len(top1) == 1
    assert {"method", "dataset", "backbone", "seed", "task", "metric", "value", "unit",
            "method_options"} <= set(top1[0])
    assert top1[0]["unit"] == "%" and 0 <= top1[0]["value"] <= 100
    code, out, _ = run_cli(capsys, "results", "--out", str(tmp_path), "--format", "csv",
                           "--per-seed")
    assert out.splitlines()[0].startswith("method,dataset,backbone,seed,task,metric,value,unit")
    code, out, _ = run_cli(capsys, "results", "--out", str(tmp_path), "--format", "json")
    summary = {r["metric"]: r for r in json.loads(out)["summary"]}
    assert summary["top1"]["mean"] == top1[0]["value"] and summary["top1"]["n"] == 1
    assert summary["top1"]["ci_low"] is None  # one seed: no interval, never a zero-width one
    code, out, _ = run_cli(capsys, "results", "--out", str(tmp_path))
    assert "(n=1, no interval)" in out and "mean ± 95% CI" in out  # Student t: symmetric
    code, out, _ = run_cli(capsys, "results", "--out", str(tmp_path), "--interval", "bootstrap")
    assert "mean [95% CI]" in out


@pytest.mark.parametrize("flag, value", [("--interval", "jackknife"), ("--aggregate", "trimmed")])
def test_results_refuses_unknown_statistics(tmp_path, capsys, flag, value):
    Store(tmp_path / "results.sqlite").close()
    code, _, err = run_cli(capsys, "results", "--out", str(tmp_path), flag, value)
    assert code == 2 and err.count("\n") == 1 and f"{flag} {value!r}" in err and "valid: " in err


@pytest.mark.parametrize("command", ["results", "report"])
@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2", "high"])
def test_power_outside_0_1_is_refused(tmp_path, capsys, command, value):
    store = tmp_path / "results.sqlite"
    Store(store).close()
    err = refused(capsys, [command, "--out", str(tmp_path), "--power", value], store)
    assert "--power" in err and ("strictly between 0 and 1" in err or "in (0, 1)" in err)


def test_report_refuses_an_unknown_interval(tmp_path, capsys):
    store = tmp_path / "results.sqlite"
    Store(store).close()
    err = refused(capsys, ["report", "--out", str(tmp_path), "--interval", "jackknife"], store)
    assert "--interval 'jackknife'" in err and "valid: t, bootstrap" in err


def test_maps_images_help_states_the_tasks_default():
    from bench.cli import build_parser
    from bench.plugins import load_all
    from bench.registry import TASKS

    load_all()
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    help_text = run._option_string_actions["--maps-images"].help
    assert f"default {TASKS.get('maps').defaults['images']})" in help_text


def test_list_shows_every_registry(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    for word in ("methods:", "gap-fc", "backbones:", "resnet50", "datasets:", "presets:", "smoke",
                 "tasks:", "accuracy"):
        assert word in out


@pytest.mark.parametrize("args, message", [
    (["run", "--methods", "nope"], "unknown method 'nope'; valid: gap-fc, "),
    (["run", "--methods", "gap-fc[r=3]"], "unknown option 'r' for method 'gap-fc'"),
    (["run", "--methods", "gap-fc[r"], "malformed method 'gap-fc[r'"),
    (["run", "--backbone", "resnet21"], "unknown backbone 'resnet21'; valid:"),
    (["run", "--dataset", "mnist"], "unknown dataset 'mnist'; valid:"),
    (["run", "--preset", "huge"], "unknown preset 'huge'; valid: smoke, quick"),
    (["run", "--tasks", "speed"], "unknown task 'speed'; valid:"),
    (["run", "--epochs", "0"], "expected a positive integer, got 0"),
    (["run", "--seeds", "-1"], "expected a positive integer, got -1"),
    (["run", "--device", "tpu"], "--device 'tpu' is not a device; valid: auto, cpu"),
    (["run", "--lr", "nan"], "--lr must be a finite number, got nan"),
    (["run", "--weight-decay", "-1"], "--weight-decay must be >= 0, got -1.0"),
    (["run", "--methods", ""], "--methods: an empty name; valid: gap-fc"),
    (["run", "--methods", ","], "--methods: an empty name; valid: gap-fc"),
    (["run", "--tasks", "wsol[classic_box_rule=none]"], "classic_box_rule='none'; valid: all, largest"),
    (["run", "--tasks", "accuracy", "--cam-curve-interval", "0.1"],
     "--cam-curve-interval applies to the wsol task"),
    (["run", "--cam-curve-interval", "7"], "cam_curve_interval must lie in (0, 1), got 7"),
    (["run", "--methods", "se[r=0]"], "option r (reduction ratio) must be >= 1"),
    (["run", "--backbone", "resnet8[shortcut=C]"], "shortcut must be A (zero-pad) or B"),
    (["run", "--methods", "se[r=4,r=8]"], "option 'r' given twice in 'se[r=4,r=8]'"),
    (["run", "--methods", "simam[lambda=inf]"], "option lambda='inf' of method 'simam': expected a "
                                                "finite number"),
    (["run", "--methods", "simam[lambda=nan]"], "expected a finite number"),
    (["run", "--backbone", "resnet8[width=0]"], "CIFAR ResNet width must be a positive integer"),
    (["run", "--backbone", "resnet8[width=-2]"], "got -2"),
    (["run", "--out", ""], "argument --out: an empty path"),
    (["run", "--out", " "], "argument --out: an empty path"),
    (["results", "--out", ""], "argument --out: an empty path"),
    (["run", "--amp", "fp16", "--device", "cpu"], "--amp fp16 is not offered on the CPU"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, message):
    store = tmp_path / "results.sqlite"
    Store(store).close()
    before = store.read_bytes()
    extra = ["--out", str(tmp_path)] if args[0] == "run" and "--out" not in args else []
    if args[0] == "run" and "--dataset" not in args:
        extra += ["--dataset", "toy-quadrants"]
    code, out, err = run_cli(capsys, *args, *extra)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert "Traceback" not in err
    assert store.read_bytes() == before


def test_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, "run", "--out", str(blocker / "sub"), *TOY)
    assert code == 2 and "is not a writable directory" in err and err.count("\n") == 1


def test_store_that_is_not_sqlite_is_untouched(tmp_path, capsys):
    (tmp_path / "results.sqlite").write_bytes(b"precious data, not a database")
    for args in (["run", "--out", str(tmp_path), *TOY], ["results", "--out", str(tmp_path)]):
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and "is not an SQLite results store" in err
    assert (tmp_path / "results.sqlite").read_bytes() == b"precious data, not a database"
    assert not (tmp_path / "results.sqlite-wal").exists()


def test_missing_store_for_results(tmp_path, capsys):
    code, _, err = run_cli(capsys, "results", "--out", str(tmp_path / "none"))
    assert code == 2 and "no results store" in err


def test_failed_transaction_leaves_store_unchanged(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    run = store.start_run({"a": 1}, method="gap-fc", method_name="gap-fc", options={}, backbone="b",
                          dataset="d", seed=0, preset="p", device="cpu", torch_version="t")
    store.record_task(run, "accuracy", TaskResult([Metric("top1", 50.0, "%")]))
    bad = TaskResult([Metric("top1", 60.0, "%"), Metric("broken", object(), "%")])
    with pytest.raises(sqlite3.Error):
        store.record_task(run, "accuracy", bad)
    assert [(r["metric"], r["value"]) for r in store.records()] == [("top1", 50.0)]


def test_module_entry_point(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--methods", "bogus"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --methods: unknown method 'bogus'")


def test_two_recipes_are_never_pooled_as_seeds(tmp_path, capsys):
    """A 2-epoch and a 3-epoch gap-fc run: two groups in the run's table, `bench results` and
    the report, each with n=1; the gate refuses to pool them."""
    base = ["run", "--methods", "gap-fc", "--out", str(tmp_path), "--dataset", "toy-quadrants",
            "--backbone", "resnet8", "--no-progress", "--tasks", "accuracy", "--seeds", "1"]
    run_cli(capsys, *base, "--epochs", "2")
    code, out, _ = run_cli(capsys, *base, "--epochs", "3")
    assert code == 0 and "toy-quadrants / resnet8 (epochs=3)" in out
    assert "(epochs=2)" not in out  # the run's table shows the recipe it ran, labelled
    code, out, _ = run_cli(capsys, "results", "--out", str(tmp_path), "--format", "json")
    top1 = [r for r in json.loads(out)["summary"] if r["metric"] == "top1"]
    assert sorted(r["group"] for r in top1) == ["toy-quadrants / resnet8 (epochs=2)",
                                                "toy-quadrants / resnet8 (epochs=3)"]
    assert all(r["n"] == 1 for r in top1)
    report = (tmp_path / "report.md").read_text()
    assert "## toy-quadrants / resnet8 (epochs=2)" in report
    assert "## toy-quadrants / resnet8 (epochs=3)" in report
    code, _, err = run_cli(capsys, "check", "--out", str(tmp_path), "--baseline",
                           str(tmp_path / "b.json"), "--update")
    assert code == 2 and "several training recipes" in err


def test_time_line_shares_add_up_in_process_and_in_parallel():
    from bench.cli import time_line

    assert time_line({"training": 60.0, "wsol": 20.0, "total": 100.0}) == (
        "time: training 60 s (60%), wsol 20 s (20%), other (data, store, planning) 20 s (20%); "
        "total 100 s wall")
    # two runs at once: 200 s of phases in 100 s of wall time; shares are of the 200 s
    assert time_line({"training": 150.0, "wsol": 50.0, "total": 100.0}) == (
        "time: training 150 s (75%), wsol 50 s (25%); total 100 s wall (phases summed over "
        "parallel runs: 200 s)")
