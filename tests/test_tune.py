"""Equal-budget tuning: N trials per method scored on the holdout only (garbage in the test split
changes nothing), the same budget for every method, resumable after a kill to exactly N trials,
tuned runs in the store and the report, a rerun that does nothing new, and bad input."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import quadrant_split, refused

import bench
import bench.suite
from bench.cli import main
from bench.executors import InProcess
from bench.data.base import DataBundle
from bench.registry import DATASETS
from bench.store import Store

TESTS = Path(__file__).resolve().parent
TOY = dict(dataset="toy-quadrants", backbone="resnet8", epochs=2, batch_size=128, progress=False,
           threads=1, tasks=["accuracy"])

if "toy-garbage-test" not in DATASETS:
    @DATASETS.register("toy-garbage-test", "test-only: toy-quadrants whose test split is noise")
    def load_garbage(data_root, download=False):
        test = quadrant_split(64, 1)
        g = torch.Generator().manual_seed(99)
        test.images = torch.randint(0, 256, test.images.shape, generator=g, dtype=torch.uint8)
        test.labels = torch.randint(0, 4, test.labels.shape, generator=g)
        return DataBundle("toy-quadrants", 4, 1, 16, quadrant_split(256, 0), test,
                          quadrant_split(64, 2), ["tl", "tr", "bl", "br"])


def trials(out: Path) -> list[tuple]:
    db = sqlite3.connect(out / "results.sqlite")
    rows = db.execute("SELECT s.method, t.number, t.params, t.state, t.value, t.epochs FROM trials t "
                      "JOIN studies s ON s.id = t.study_id ORDER BY s.method, t.number").fetchall()
    db.close()
    return rows


def test_tune_selects_on_the_holdout_and_retrains_the_best(tmp_path, capsys):
    code = main(["tune", "--methods", "gap-fc", "se", "--trials", "4", "--seeds", "2",
                 "--dataset", "toy-quadrants", "--backbone", "resnet8", "--epochs", "2",
                 "--tasks", "accuracy", "--threads", "1", "--no-progress", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    rows = trials(tmp_path)
    by_method = {m: [r for r in rows if r[0] == m] for m in ("gap-fc", "se")}
    assert [r[1] for r in by_method["gap-fc"]] == [0, 1, 2, 3]  # the same budget for each method
    assert [r[1] for r in by_method["se"]] == [0, 1, 2, 3]
    assert all(r[3] == "complete" and r[5] == 2 for r in rows)
    assert set(json.loads(by_method["se"][0][2])) == {"lr", "weight_decay", "r"}
    # the same sampler seed gives every method the same recipe values for the shared parameters
    # while TPE is still sampling at random (its first trials)
    assert json.loads(by_method["se"][0][2])["lr"] == json.loads(by_method["gap-fc"][0][2])["lr"]
    best = max(by_method["se"], key=lambda r: (r[4], -r[1]))
    assert f"best trial {best[1]} ({best[4]:.2f} on the holdout)" in out
    db = sqlite3.connect(tmp_path / "results.sqlite")
    tuned = db.execute("SELECT method, seed, config FROM runs ORDER BY method, seed").fetchall()
    assert [(m.split("[")[0], s) for m, s, _ in tuned] == [("gap-fc", 0), ("gap-fc", 1),
                                                           ("se", 0), ("se", 1)]
    se_config = json.loads(tuned[2][2])
    chosen = json.loads(best[2])
    assert se_config["tuning"]["trial"] == best[1] and se_config["tuning"]["trials"] == 4
    assert se_config["recipe"]["lr"] == pytest.approx(chosen["lr"])
    assert se_config["method_options"]["r"] == chosen["r"]
    report = (tmp_path / "report.md").read_text()
    tuning = report.split("## Tuning", 1)[1]
    assert "sampler tpe seed 0, select accuracy; 4 trials per method" in tuning
    assert "| se | 4 (4 complete) | 8 |" in tuning  # trials and epochs spent
    assert "Best holdout score against the number of trials" in tuning
    before = trials(tmp_path)
    ended = db.execute("SELECT ended FROM task_runs ORDER BY run_id").fetchall()
    assert main(["tune", "--methods", "gap-fc", "se", "--trials", "4", "--seeds", "2",
                 "--dataset", "toy-quadrants", "--backbone", "resnet8", "--epochs", "2",
                 "--tasks", "accuracy", "--threads", "1", "--no-progress",
                 "--out", str(tmp_path)]) == 0
    assert trials(tmp_path) == before  # a rerun does nothing new
    assert db.execute("SELECT ended FROM task_runs ORDER BY run_id").fetchall() == ended


def test_the_test_split_is_never_read_while_choosing(tmp_path):
    clean = bench.tune(["se"], trials=3, out=tmp_path / "clean", seeds=1, report=False, **TOY)
    garbage = bench.tune(["se"], trials=3, out=tmp_path / "garbage", seeds=1, report=False,
                         **(TOY | {"dataset": "toy-garbage-test"}))
    assert [r[1:] for r in trials(tmp_path / "clean")] == [r[1:] for r in trials(tmp_path / "garbage")]
    assert clean.studies[0].best["params"] == garbage.studies[0].best["params"]
    loss = {name: [r["value"] for r in result.suite.records if r["metric"] == "test_loss"]
            for name, result in (("clean", clean), ("garbage", garbage))}
    assert loss["clean"] != loss["garbage"]  # the final test differs: only it reads test


def test_pruning_stops_trials_from_their_holdout_curve(tmp_path):
    result = bench.tune(["gap-fc"], trials=6, prune=True, sampler="random", out=tmp_path, seeds=1,
                        report=False, **(TOY | {"epochs": 4}))
    states = [t["state"] for t in result.studies[0].trials]
    assert len(states) == 6 and set(states) <= {"complete", "pruned", "failed"}
    assert "pruned" in states and "complete" in states
    for t in result.studies[0].trials:
        assert len(t["curve"]) == t["epochs"]  # one holdout score per epoch trained
        if t["state"] == "pruned":
            assert t["epochs"] < 4


def test_an_interrupted_tune_resumes_to_exactly_n_trials(tmp_path):
    """Killed (SIGKILL) after its first trials, rerun: exactly 4 trials per method, each once."""
    args = ["tune", "--methods", "gap-fc", "se", "--trials", "4", "--seeds", "1", "--dataset",
            "toy-quadrants", "--backbone", "resnet8", "--epochs", "3", "--tasks", "accuracy",
            "--threads", "1", "--no-progress", "--out", str(tmp_path)]
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import conftest; "
            f"from bench.cli import main; sys.exit(main({args!r}))")
    env = dict(os.environ, PYTHONPATH=str(TESTS.parent), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if (tmp_path / "results.sqlite").exists():
            try:
                done = [r for r in trials(tmp_path) if r[3] == "complete"]
            except sqlite3.OperationalError:
                done = []
            if len(done) >= 2:
                break
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    assert 2 <= len([r for r in trials(tmp_path) if r[3] == "complete"]) < 8
    finished = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stderr[-2000:]
    rows = trials(tmp_path)
    assert sorted((r[0], r[1]) for r in rows) == [(m, n) for m in ("gap-fc", "se")
                                                  for n in range(4)]
    assert all(r[3] == "complete" for r in rows)


@pytest.mark.parametrize("args, message", [
    (["--trials", "0"], "--trials must be a positive integer, got 0"),
    (["--trials", "2", "--sampler", "grid"], "--sampler 'grid' is not a sampler; valid: tpe, random"),
    (["--trials", "2", "--select", "pxap"], "--select 'pxap' is not a selection criterion"),
    (["--trials", "2", "--space", "momentum_x=0:1"], "space 'momentum_x' is not a searched parameter"),
    (["--trials", "2", "--space", "lr=0.5:0.1"], "space lr=0.5:0.1: low must not exceed high"),
    (["--trials", "2", "--space", "lr"], "write NAME=LOW:HIGH"),
])
def test_bad_tune_input_is_one_line_and_changes_nothing(tmp_path, capsys, args, message):
    store = tmp_path / "results.sqlite"
    Store(store).close()
    assert message in refused(capsys, ["tune", "--methods", "gap-fc", "se", "--dataset",
                                       "toy-quadrants", "--out", str(tmp_path), "--no-progress",
                                       *args], store)


def test_a_diverging_trial_is_failed_and_counts(tmp_path):
    result = bench.tune(["gap-fc"], trials=2, space=["lr=1e6:1e7"], out=tmp_path, seeds=1,
                        report=False, **TOY)
    trials_ = result.studies[0].trials
    assert [t["state"] for t in trials_] == ["failed", "failed"]
    assert all("loss" in t["reason"] for t in trials_)
    assert result.studies[0].best is None and result.suite.outcomes == []


class DiesOnce(InProcess):
    """Runs each piece in this process, except the first: that one comes back as a piece whose
    worker died (after the executor's retries)."""

    died = False

    def next_done(self):
        if not self.died:
            self.died = True
            handle, _, _ = self.queue.popleft()
            return handle, None, "worker killed by signal 9 (SIGKILL; out of memory?), once"
        return super().next_done()


def test_a_trial_whose_worker_died_spends_no_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(bench.suite, "make_executor", lambda cfg: DiesOnce())
    result = bench.tune(["gap-fc"], trials=3, out=tmp_path, seeds=1, report=False, **TOY)
    study = result.studies[0]
    assert [(t["number"], t["state"]) for t in study.trials] == [(1, "complete"), (2, "complete")]
    assert study.interrupted == ["gap-fc trial 0: worker killed by signal 9 (SIGKILL; out of "
                                 "memory?), once"]
    assert [(r[1], r[3]) for r in trials(tmp_path)] == [(0, "interrupted"), (1, "complete"),
                                                        (2, "complete")]
    monkeypatch.undo()
    again = bench.tune(["gap-fc"], trials=3, out=tmp_path, seeds=1, report=False, **TOY)
    assert [(t["number"], t["state"]) for t in again.studies[0].trials] == [
        (0, "complete"), (1, "complete"), (2, "complete")]  # the budget, exactly
    assert again.studies[0].interrupted == []
