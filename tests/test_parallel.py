"""Parallel execution: ``--jobs 2`` (independent runs in two processes, one store) and torchrun
data parallelism over two gloo processes on the CPU."""
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import TINY_CLUTTER

from bench.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--preset", "smoke", "--tasks", "accuracy", "--no-progress"]  # 3 epochs
# conftest's toy-grid (registered in other processes by tests/toy_cli.py): 1 epoch of 32 steps
TOY = ["--preset", "smoke", "--dataset", "toy-grid", "--epochs", "1", "--batch-size", "8",
       "--tasks", "accuracy", "--no-progress"]


def counts(out: Path) -> tuple[int, list]:
    db = sqlite3.connect(out / "results.sqlite")
    runs = db.execute("SELECT COUNT(*) FROM runs WHERE status = 'complete'").fetchone()[0]
    dup = db.execute("SELECT run_id, task, name, COUNT(*) FROM metrics GROUP BY run_id, task, name "
                     "HAVING COUNT(*) > 1").fetchall()
    db.close()
    return runs, dup


@pytest.mark.slow
def test_jobs_store_every_result_exactly_once(tmp_path, capsys):
    args = ["run", "--methods", "gap-fc", "simam", "--seeds", "2", "--jobs", "2", "--out", str(tmp_path),
            *SMOKE, "--epochs", "1", "--dataset", TINY_CLUTTER]
    assert main(args) == 0
    runs, duplicates = counts(tmp_path)
    assert runs == 4 and duplicates == []
    db = sqlite3.connect(tmp_path / "results.sqlite")
    assert db.execute("SELECT COUNT(*) FROM metrics WHERE name = 'top1'").fetchone()[0] == 4
    ended = db.execute("SELECT ended FROM task_runs ORDER BY run_id").fetchall()
    assert main(args) == 0  # resumable: everything is skipped
    assert db.execute("SELECT ended FROM task_runs ORDER BY run_id").fetchall() == ended


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "toy_cli", "run", "--methods", "gap-fc", "--out", str(tmp_path), *TOY]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs, duplicates = counts(tmp_path)
    assert runs == 1 and duplicates == []
    db = sqlite3.connect(tmp_path / "results.sqlite")
    metrics = dict(db.execute("SELECT name, value FROM metrics").fetchall())
    assert {"top1", "top5", "test_loss", "train_time", "train_throughput"} <= set(metrics)
    # Learned, with the two ranks' gradients averaged: 9 classes (chance 11.1%), 3x chance at least.
    assert metrics["top1"] > 3 * 100 / 9
    assert proc.stdout.count("top-1") == 1  # only rank 0 reports


DRIVER = textwrap.dedent("""
    import os, time
    from bench.executors import Processes

    executor = Processes(1, 1)
    executor.submit(os.getpid)
    print(executor.next_done()[1], flush=True)  # the worker's pid
    executor.submit(time.sleep, 120)
    time.sleep(120)
""")


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_workers_end_with_their_driver():
    """A driver killed outright (kill -9: no cleanup runs) leaves no worker behind."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True,
                              env=env)
    worker = int(driver.stdout.readline())
    assert running(worker)
    driver.kill()
    driver.wait()
    deadline = time.monotonic() + 30
    while running(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not running(worker)
