"""One failure stays one failure: a dead local worker costs only its own run (retried, or stored
as a failure of the infrastructure that a plain rerun retries), the other run's numbers are
bit-identical to an undisturbed run's, and a store the user cannot write is refused in one line
before SQLite writes anything beside it."""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import TINY_CLUTTER, stored

import bench
from bench.cli import main
from bench.api import suite_config
from bench.executors import Processes
from bench.store import Store, owner_token
from bench.suite import run_config
from bench.tasks.base import TaskResult

ROOT = Path(__file__).resolve().parents[1]
# Runs of a few seconds (4 epochs of the tiny digits-clutter), so that a worker is killed mid-run.
SMALL = dict(preset="smoke", dataset=TINY_CLUTTER, epochs=4, tasks=["accuracy"], threads=1,
             progress=False)
SMALL_ARGS = ["--preset", "smoke", "--dataset", TINY_CLUTTER, "--epochs", "4", "--tasks",
              "accuracy", "--threads", "1", "--no-progress"]


def die_once(marker: str) -> int:
    """Kill this worker the first time (leaving ``marker``); afterwards return its pid."""
    if not Path(marker).exists():
        Path(marker).write_text("died")
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


def always_die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def sleep_then_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@pytest.mark.slow
def test_a_dead_local_worker_costs_only_its_own_piece(tmp_path):
    executor = Processes(2, 1, max_retries=1)
    try:
        steady = executor.submit(sleep_then_pid, 3.0)
        flaky = executor.submit(die_once, str(tmp_path / "died"))
        done = {}
        for _ in range(2):
            handle, value, error = executor.next_done()
            done[handle] = (value, error)
        assert (tmp_path / "died").exists()  # its first worker was killed ...
        assert done[flaky][1] is None  # ... and the retry in a new worker succeeded
        steady_pid, error = done[steady]
        assert error is None
        assert steady_pid in {w.process.pid for w in executor.workers}  # never replaced
        doomed = executor.submit(always_die)
        handle, value, error = executor.next_done()
        assert handle is doomed and value is None
        assert error == "worker killed by signal 9 (SIGKILL; out of memory?), in each of 2 attempts"
        executor.submit(os.getpid)  # the executor still works
        assert executor.next_done()[2] is None
    finally:
        executor.close()
    assert all(not w.process.is_alive() for w in executor.workers)


def worker_pids() -> list[int]:
    """This process's children that are spawned multiprocessing workers."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if parent == os.getpid() and b"spawn_main" in command:
            pids.append(int(entry.name))
    return pids


def kill_a_worker_mid_run(scratch: Path, stop: threading.Event, killed: list) -> None:
    """SIGKILL one worker once both runs are in flight (each worker makes its scratch folder
    when it starts a run)."""
    while not stop.is_set():
        if len(list(scratch.glob("bench-run-*"))) >= 2:
            time.sleep(1.0)
            pids = worker_pids()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            return
        time.sleep(0.05)


@pytest.mark.slow
def test_jobs_2_a_worker_killed_mid_run(tmp_path, capsys, monkeypatch):
    """With --max-retries 0 the killed run is stored as a failure of the infrastructure (exit 1,
    a FAILED line), the other run completes bit-identical to an undisturbed run, and a plain
    rerun retries the failed one, again bit-identical."""
    methods = ["gap-fc", "simam"]
    undisturbed = bench.run(methods, out=tmp_path / "undisturbed", report=False, jobs=1, **SMALL)
    assert [o.status for o in undisturbed.outcomes] == ["complete"] * 2
    expected = stored(tmp_path / "undisturbed")
    assert len(expected) == 2 * 3  # top1, top5, test_loss per run

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # the workers' scratch folders, watched
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=kill_a_worker_mid_run, args=(scratch, stop, killed))
    killer.start()
    out = tmp_path / "killed"
    try:
        code = main(["run", "--methods", *methods, "--jobs", "2", "--max-retries", "0",
                     "--out", str(out), *SMALL_ARGS])
    finally:
        stop.set()
        killer.join()
    printed = capsys.readouterr().out
    assert killed, "no worker was seen running"
    assert code == 1  # a failure of the infrastructure is left for a rerun
    db = sqlite3.connect(out / "results.sqlite")
    runs = db.execute("SELECT method, status, failure, reason FROM runs ORDER BY id").fetchall()
    failed = [r for r in runs if r[1] == "failed"]
    assert len(failed) == 1 and failed[0][2] == "infrastructure"
    assert failed[0][3] == "worker killed by signal 9 (SIGKILL; out of memory?), once"
    assert f"FAILED {failed[0][0]} seed 0: {failed[0][3]} (infrastructure: a plain rerun " \
           "retries it)" in printed
    survivor = next(r[0] for r in runs if r[1] == "complete")
    assert {k: v for k, v in stored(out).items() if k[0] == survivor} == \
        {k: v for k, v in expected.items() if k[0] == survivor}

    code = main(["run", "--methods", *methods, "--jobs", "2", "--out", str(out), *SMALL_ARGS])
    assert code == 0
    assert stored(out) == expected  # the retried run: bit-identical too
    assert db.execute("SELECT COUNT(*) FROM runs WHERE status = 'complete'").fetchone()[0] == 2
    assert db.execute("SELECT COUNT(*) FROM metrics GROUP BY run_id, task, name "
                      "HAVING COUNT(*) > 1").fetchall() == []
    db.close()


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@functools.cache
def nobody_can_import() -> bool:
    """Whether the user nobody can read this environment (a venv in a private folder is not)."""
    probe = subprocess.run([*NOBODY, sys.executable, "-c", "import numpy, torch"],
                           capture_output=True, cwd="/", timeout=120,
                           env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)})
    return probe.returncode == 0


def as_nobody(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m bench ARGS`` run as the user nobody (tests run as root, whom file modes do
    not stop), or a skip where this machine cannot switch users or nobody cannot read the
    environment."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a command as another user")
    home = cwd.parent / "home"
    home.mkdir(exist_ok=True)
    os.chown(home, 65534, 65534)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "HOME": str(home),
           "OMP_NUM_THREADS": "1"}
    if not nobody_can_import():
        pytest.skip(f"the user nobody cannot import this environment's packages ({sys.prefix} is "
                    "not readable by other users)")
    return subprocess.run([*NOBODY, sys.executable, "-m", "bench", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


@pytest.fixture
def shared_dir():
    """A folder outside pytest's private (0700) tree, so that the user nobody can reach it."""
    path = Path(tempfile.mkdtemp(prefix="bench-ro-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_a_store_the_user_cannot_write(shared_dir, capsys):
    """A store owned by root (mode 0644), used by the user nobody: ``run`` is one error line
    naming the file and the permission, before SQLite opens it (nothing new beside it); results,
    report and check still work (the folder is nobody's, the file root's)."""
    out = shared_dir / "out"
    ran = bench.run(["gap-fc"], out=out, report=False, **(SMALL | {"epochs": 1}))
    assert [o.status for o in ran.outcomes] == ["complete"]
    store = out / "results.sqlite"
    assert main(["check", "--out", str(out), "--baseline", str(out / "baseline.json"),
                 "--update"]) == 0
    os.chown(out, 65534, 65534)  # nobody may write the folder, not the store (root's, 0644)
    store.chmod(0o644)
    before, beside = store.read_bytes(), sorted(p.name for p in out.iterdir())
    refused = as_nobody("run", "--methods", "gap-fc", "--out", str(out), "--seeds", "2",
                        "--preset", "smoke", "--tasks", "accuracy", "--no-progress", cwd=out)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr == (f"error: {store} cannot be written: the store {store} is read-only "
                              f"for this user (permission denied, mode -rw-r--r--); `bench "
                              f"results`, `report` and `check` can still read it; choose another "
                              f"--out to run\n")
    assert store.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == beside  # nothing new beside the store
    results = as_nobody("results", "--out", str(out), cwd=out)
    assert results.returncode == 0 and "gap-fc" in results.stdout, results.stderr
    check = as_nobody("check", "--out", str(out), "--baseline", str(out / "baseline.json"), cwd=out)
    assert check.returncode == 0 and check.stdout.startswith("check passed"), check.stderr
    report = as_nobody("report", "--out", str(out), cwd=out)
    assert report.returncode == 0, report.stderr
    assert store.read_bytes() == before


TOY = dict(dataset="toy-quadrants", backbone="resnet8", epochs=1, seeds=1, progress=False,
           threads=1, tasks=["accuracy"])
TOY_ARGS = ["--dataset", "toy-quadrants", "--backbone", "resnet8", "--epochs", "1", "--seeds", "1",
            "--tasks", "accuracy", "--threads", "1", "--jobs", "1", "--no-progress"]


def strict_loads(text: str):
    def refuse(name: str):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def test_failed_runs_are_data_for_every_command(tmp_path, capsys):
    """A store with a NaN-diverged run (a group of failed runs only), a failed task beside a
    complete one, and a group whose only run was interrupted before any task: every command
    reads it, shows the failures with their reasons, and exits 0."""
    good = bench.run(["gap-fc"], out=tmp_path, report=False, **(TOY | {"tasks": ["accuracy",
                                                                                "cost"]}))
    nan = bench.run(["simam"], out=tmp_path, report=False, **(TOY | {"lr": 1e6}))
    assert nan.outcomes[0].status == "failed" and nan.outcomes[0].failure == "run"
    diverged = nan.outcomes[0].reason
    assert diverged.startswith(("loss became nan", "loss diverged"))
    store = Store(tmp_path / "results.sqlite")
    store.record_task(good.outcomes[0].run_id, "cost", TaskResult(), "failed",
                      "RuntimeError: profiler crashed (at profile.py:1)")
    store.end_run(good.outcomes[0].run_id, "failed", "RuntimeError: profiler crashed "
                  "(at profile.py:1)", failure="run")
    cfg = suite_config(["gap-fc"], out=tmp_path, **(TOY | {"epochs": 4}))
    empty = store.start_run(run_config(cfg, cfg.methods[0], 0), method="gap-fc",
                            method_name="gap-fc", options={}, backbone="resnet8",
                            dataset="toy-quadrants", seed=0, preset="quick", device="cpu",
                            torch_version="x")
    assert store.claim(empty, owner_token(), "cpu").holder is None
    assert store.release_claims(owner_token(), "interrupted (Ctrl-C) before it finished") == 1
    store.close()

    assert main(["results", "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert f"simam seed 0: {diverged} (run failure)" in table
    assert "gap-fc seed 0: interrupted (Ctrl-C) before it finished (infrastructure failure)" in table
    assert main(["results", "--out", str(tmp_path), "--format", "csv"]) == 0
    assert "simam" not in capsys.readouterr().out  # no metrics: no rows
    assert main(["results", "--out", str(tmp_path), "--format", "json"]) == 0
    summary = strict_loads(capsys.readouterr().out)
    assert sorted((f["method"], f["failure"]) for f in summary["failed_runs"]) == [
        ("gap-fc", "infrastructure"), ("gap-fc", "run"), ("simam", "run")]
    assert {r["metric"] for r in summary["summary"]} >= {"top1", "top5", "test_loss"}
    assert main(["results", "--out", str(tmp_path), "--format", "json", "--per-seed"]) == 0
    assert len(strict_loads(capsys.readouterr().out)) == 5  # gap-fc's accuracy metrics

    assert main(["report", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    markdown = (tmp_path / "report.md").read_text()
    assert markdown.count("### Failed runs") == 3  # one per group
    assert f"| simam | 0 | (run) | failed | {diverged} | the run's own" in markdown
    assert "| gap-fc | 0 | cost | failed | RuntimeError: profiler crashed (at profile.py:1) |" \
        in markdown
    assert ("| gap-fc | 0 | (run) | failed | interrupted (Ctrl-C) before it finished | "
            "infrastructure (a plain rerun retries it) |") in markdown

    baseline = tmp_path / "baseline.json"
    assert main(["check", "--out", str(tmp_path), "--baseline", str(baseline), "--update"]) == 0
    assert main(["check", "--out", str(tmp_path), "--baseline", str(baseline)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("check passed: ")

    ended = sqlite3.connect(tmp_path / "results.sqlite").execute(
        "SELECT id, ended FROM runs ORDER BY id").fetchall()
    assert main(["run", "--methods", "simam", "--lr", "1e6", "--out", str(tmp_path),
                 *TOY_ARGS]) == 0  # the run's own failure, stored: final, and not the command's
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == (f"FAILED simam seed 0 (stored earlier): {diverged} (the run's "
                                    "own failure: --retry-failed reruns it)")
    assert "nothing to do: all 1 runs are already in the store" in out
    assert "| simam    | 0 (1 failed) |" in out
    assert sqlite3.connect(tmp_path / "results.sqlite").execute(
        "SELECT id, ended FROM runs ORDER BY id").fetchall() == ended  # nothing rewritten
