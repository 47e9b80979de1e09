"""Run claims: a run being worked on by another live process is left to it (not trained twice);
the claim of a process that is gone is taken over; the claim names host, pid and start time."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

import bench
from bench.store import Store, _start_time, owner_alive, owner_token

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


def test_owner_tokens_tell_live_from_gone(other_process):
    assert owner_alive(owner_token())
    assert owner_alive(token(other_process.pid))
    assert not owner_alive(f"{socket.gethostname()}:{other_process.pid}:1")  # a reused pid
    assert owner_alive("another-host:1:1")  # cannot be checked from here: respected
    other_process.kill()
    other_process.wait()
    assert not owner_alive(token(other_process.pid))


def test_a_run_claimed_by_a_live_process_is_left_to_it(tmp_path, other_process):
    first = bench.run(["gap-fc"], out=tmp_path, **TOY)
    assert [o.status for o in first.outcomes] == ["complete"]
    run_id = first.outcomes[0].run_id
    store = Store(tmp_path / "results.sqlite")
    store.db.execute("DELETE FROM task_runs")  # the task is pending again ...
    assert store.claim(run_id, token(other_process.pid), "cpu") is None  # ... and claimed
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
