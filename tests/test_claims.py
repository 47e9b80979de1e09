"""Run claims: a run being worked on by another live process is left to it (not trained twice);
the claim of a process that is gone, or whose heartbeat is older than the stated limit (from
whichever host), is taken over with a notice; the claim names host, pid and start time, and its
holder refreshes its heartbeat."""
from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

import bench
import bench.store
from bench.cli import main
from bench.store import STALE_AFTER_SECONDS, Store, _start_time, now, owner_alive, owner_token

TOY = dict(dataset="toy-quadrants", backbone="resnet8", epochs=1, seeds=1, tasks=["accuracy"],
           progress=False, report=False, threads=1)


@pytest.fixture
def other_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def token(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def ago(seconds: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds)).isoformat(timespec="seconds")


def test_owner_tokens_tell_live_from_gone(other_process):
    assert owner_alive(owner_token(), now())
    assert owner_alive(token(other_process.pid), now())
    assert not owner_alive(f"{socket.gethostname()}:{other_process.pid}:1", now())  # reused pid
    # another host's process cannot be checked from here: its heartbeat decides
    assert owner_alive("another-host:1:1", ago(STALE_AFTER_SECONDS - 60))
    assert not owner_alive("another-host:1:1", ago(STALE_AFTER_SECONDS + 60))
    assert not owner_alive("another-host:1:1", None)  # claimed before heartbeats were kept
    assert not owner_alive(token(other_process.pid), ago(STALE_AFTER_SECONDS + 60))  # hung
    other_process.kill()
    other_process.wait()
    assert not owner_alive(token(other_process.pid), now())


def test_a_run_claimed_by_a_live_process_is_left_to_it(tmp_path, other_process):
    first = bench.run(["gap-fc"], out=tmp_path, **TOY)
    assert [o.status for o in first.outcomes] == ["complete"]
    run_id = first.outcomes[0].run_id
    store = Store(tmp_path / "results.sqlite")
    store.db.execute("DELETE FROM task_runs")  # the task is pending again ...
    assert store.claim(run_id, token(other_process.pid), "cpu").holder is None  # ... and claimed
    store.close()
    second = bench.run(["gap-fc"], out=tmp_path, **TOY)
    outcome = second.outcomes[0]
    assert outcome.status == "skipped" and outcome.reason == f"claimed by {token(other_process.pid)}"
    store = Store(tmp_path / "results.sqlite")
    assert store.task_status(run_id, "accuracy") is None  # not computed a second time
    store.close()
    other_process.kill()
    other_process.wait()
    third = bench.run(["gap-fc"], out=tmp_path, **TOY)  # the holder is gone: taken over
    assert [o.status for o in third.outcomes] == ["complete"]
    store = Store(tmp_path / "results.sqlite")
    row = store.db.execute("SELECT status, owner FROM runs WHERE id = ?", (run_id,)).fetchone()
    store.close()
    assert row["status"] == "complete" and row["owner"] == owner_token()


TOY_ARGS = ["--dataset", "toy-quadrants", "--backbone", "resnet8", "--epochs", "1", "--seeds", "1",
            "--tasks", "accuracy", "--threads", "1", "--jobs", "1", "--no-progress"]


def test_a_stale_claim_from_another_host_is_taken_over(tmp_path, capsys):
    """A driver killed mid-run on a machine that is gone (a restarted container, a new VM):
    its claim with an old heartbeat is taken over by a rerun on this host, with a notice; a
    claim of another host whose heartbeat is fresh is left to it."""
    first = bench.run(["gap-fc"], out=tmp_path, **TOY)
    run_id = first.outcomes[0].run_id
    metrics = dict(sqlite3.connect(tmp_path / "results.sqlite").execute(
        "SELECT name, value FROM metrics WHERE name != 'train_time' AND name != "
        "'train_throughput'").fetchall())

    def claimed_elsewhere(heartbeat: str) -> None:
        store = Store(tmp_path / "results.sqlite")
        store.db.execute("DELETE FROM task_runs")
        store.db.execute("DELETE FROM metrics")
        store.db.execute("UPDATE runs SET status = 'running', owner = 'old-vm:4242:777', "
                         "heartbeat = ? WHERE id = ?", (heartbeat, run_id))
        store.close()

    claimed_elsewhere(ago(60))  # fresh: that host still works on it
    second = bench.run(["gap-fc"], out=tmp_path, **TOY)
    assert [(o.status, o.reason) for o in second.outcomes] == [("skipped",
                                                                "claimed by old-vm:4242:777")]
    stale = ago(STALE_AFTER_SECONDS + 3600)
    claimed_elsewhere(stale)
    assert main(["run", "--methods", "gap-fc", "--out", str(tmp_path), *TOY_ARGS]) == 0
    err = capsys.readouterr().err
    age = err.split("its last heartbeat is ")[1].split(" s old")[0]
    assert 3600 + STALE_AFTER_SECONDS <= int(age) < 3600 + STALE_AFTER_SECONDS + 120
    assert (f"notice: took over run {run_id} from the stale claim of old-vm:4242:777: its last "
            f"heartbeat is {age} s old (limit {STALE_AFTER_SECONDS:.0f} s)\n") in err
    db = sqlite3.connect(tmp_path / "results.sqlite")
    row = db.execute("SELECT status, owner FROM runs WHERE id = ?", (run_id,)).fetchone()
    assert row == ("complete", owner_token())
    again = dict(db.execute("SELECT name, value FROM metrics WHERE name != 'train_time' AND "
                            "name != 'train_throughput'").fetchall())
    assert again == metrics  # resumed: the same numbers


def test_the_driver_refreshes_the_heartbeat_of_its_claims(tmp_path, monkeypatch):
    monkeypatch.setattr(bench.store, "HEARTBEAT_SECONDS", 0.05)
    first = bench.run(["gap-fc"], out=tmp_path, **TOY)
    run_id = first.outcomes[0].run_id
    store = Store(tmp_path / "results.sqlite")
    try:
        old = ago(3600)
        store.db.execute("UPDATE runs SET status = 'running', owner = ?, heartbeat = ?",
                         (owner_token(), old))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            beat = store.db.execute("SELECT heartbeat FROM runs WHERE id = ?",
                                    (run_id,)).fetchone()[0]
            if beat != old:
                break
            time.sleep(0.05)
        assert beat != old and abs((datetime.now(timezone.utc)
                                    - datetime.fromisoformat(beat)).total_seconds()) < 5
    finally:
        store.close()
