"""The Ray executor on a simulated two-node cluster on this machine (ray.cluster_utils.Cluster,
loopback only): the same stored numbers as the local executor, a worker killed mid-run survived
with every run stored exactly once, the store written by the driver only, and bad input as one
line with exit code 2."""
from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import torch

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is imported: loopback only
ray = pytest.importorskip("ray")  # the [ray] extra, part of [test]
from conftest import TINY_CLUTTER, stored  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

import bench  # noqa: E402
from bench.cli import main  # noqa: E402
from bench.store import WORKER_ENV, Store  # noqa: E402
from bench.api import suite_config  # noqa: E402
from bench.suite import run_config  # noqa: E402

SMOKE = dict(preset="smoke", dataset=TINY_CLUTTER, epochs=1, tasks=["accuracy", "wsol"],
             progress=False, threads=1, report=False)


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False, logging_level="error")
    try:
        nodes = [n for n in ray.nodes() if n["Alive"]]
        assert len(nodes) == 2
        assert {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}  # nothing leaves loopback
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
def test_ray_stores_what_the_local_executor_stores(cluster, tmp_path):
    methods = ["gap-fc", "siou"]  # siou: a double backward inside the loss
    local = bench.run(methods, out=tmp_path / "local", jobs=1, **SMOKE)  # in this process
    remote = bench.run(methods, out=tmp_path / "ray", executor="ray",
                       ray_address=cluster.address, **SMOKE)
    assert [o.status for o in remote.outcomes] == ["complete"] * 2
    assert stored(tmp_path / "ray") == stored(tmp_path / "local")  # bit-identical, CPU, 1 thread
    assert len(stored(tmp_path / "ray")) == 2 * 12  # 3 accuracy and 9 WSOL metrics per run
    # the driver saved what the workers made: checkpoints and the WSOL galleries
    assert len(list((tmp_path / "ray" / "checkpoints").glob("*.pt"))) == 2
    assert len(list((tmp_path / "ray" / "figures").glob("gallery-run*.png"))) == 2
    again = bench.run(methods, out=tmp_path / "ray", executor="ray",
                      ray_address=cluster.address, **SMOKE)
    assert [o.status for o in again.outcomes] == ["skipped"] * 2  # a rerun skips what is stored
    assert local.outcomes[0].status == "complete"


def kill_a_worker_once(stop: threading.Event, killed: list) -> None:
    """Kill -9 the first worker process found running a run (Ray names it after the task)."""
    while not stop.is_set() and not killed:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    title = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                if b"ray::remote_run" in title:
                    time.sleep(1.0)  # mid-run
                    os.kill(int(entry.name), signal.SIGKILL)
                    killed.append(int(entry.name))
                    return
        time.sleep(0.2)


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_nothing_is_lost_or_duplicated(cluster, tmp_path):
    """SIGKILL one worker mid-run: both runs complete, with the numbers of an undisturbed
    (local) run, bit for bit, each stored once."""
    settings = SMOKE | {"tasks": ["accuracy"], "epochs": 4}  # runs of a few seconds: killable
    undisturbed = bench.run(["gap-fc", "simam"], out=tmp_path / "local", jobs=1, **settings)
    assert [o.status for o in undisturbed.outcomes] == ["complete", "complete"]
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=kill_a_worker_once, args=(stop, killed), daemon=True)
    killer.start()
    try:
        result = bench.run(["gap-fc", "simam"], out=tmp_path, executor="ray",
                           ray_address=cluster.address, max_retries=2, **settings)
    finally:
        stop.set()
        killer.join()
    assert killed, "no worker was seen running"
    assert [o.status for o in result.outcomes] == ["complete", "complete"]
    assert stored(tmp_path) == stored(tmp_path / "local")
    assert len(stored(tmp_path)) == 2 * 3
    db = sqlite3.connect(tmp_path / "results.sqlite")
    assert db.execute("SELECT COUNT(*) FROM runs WHERE status = 'complete'").fetchone()[0] == 2
    duplicates = db.execute("SELECT run_id, task, name, COUNT(*) FROM metrics "
                            "GROUP BY run_id, task, name HAVING COUNT(*) > 1").fetchall()
    assert duplicates == []
    assert db.execute("SELECT COUNT(*) FROM task_runs WHERE status = 'complete'").fetchone()[0] == 2


@pytest.mark.parametrize("methods, seeds", [(["gap-fc", "se"], 3), (["gap-fc"], 1)])
def test_both_executors_default_to_the_same_thread_count(tmp_path, methods, seeds):
    """The CLI's defaults (jobs left to bench, no --threads): the same runs, so the same
    configuration hashes, with either executor; a rerun with the other skips what is stored."""
    local = suite_config(methods, out=tmp_path, device="cpu", jobs=None, seeds=seeds)
    remote = suite_config(methods, out=tmp_path, device="cpu", executor="ray",
                                seeds=seeds)
    assert remote.threads == local.threads == (1 if len(methods) * seeds > 1 and
                                               (os.cpu_count() or 1) > 1
                                               else torch.get_num_threads())
    assert [run_config(remote, m, 0) for m in remote.methods] == \
        [run_config(local, m, 0) for m in local.methods]


def test_workers_cannot_open_the_store(tmp_path, monkeypatch):
    monkeypatch.setenv(WORKER_ENV, "1")
    with pytest.raises(RuntimeError, match="only the driver writes it"):
        Store(tmp_path / "results.sqlite")


@pytest.mark.parametrize("args, message", [
    (["--executor", "spark"], "--executor 'spark' is not an executor; valid: local, ray"),
    (["--executor", "ray", "--max-retries", "-1"], "--max-retries must be an integer >= 0"),
    (["--executor", "ray", "--ray-address", "127.0.0.1:9"], "--ray-address '127.0.0.1:9': "
                                                            "cannot connect to a Ray cluster"),
    (["--executor", "ray", "--jobs", "2"], "--jobs applies to the local executor"),
])
def test_bad_executor_input_is_one_line(tmp_path, capsys, args, message):
    code = main(["run", "--methods", "gap-fc", "--preset", "smoke", "--no-progress",
                 "--out", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err and "Traceback" not in err


@pytest.mark.slow
def test_a_run_no_node_can_hold_is_refused(cluster, tmp_path, capsys):
    Store(tmp_path / "results.sqlite").close()
    before = (tmp_path / "results.sqlite").read_bytes()
    code = main(["run", "--methods", "gap-fc", "--preset", "smoke", "--no-progress",
                 "--out", str(tmp_path), "--executor", "ray", "--ray-address", cluster.address,
                 "--ray-cpus", "4"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "no node of the cluster" in err and "4 CPU" in err
    assert (tmp_path / "results.sqlite").read_bytes() == before
