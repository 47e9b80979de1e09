"""The results store refuses what it cannot trust before writing anything: every bench command on an
empty file, a header alone, a truncated file, another program's SQLite database or a store of a
newer schema version gives one line and exit code 2, and leaves the file byte-identical with no
file beside it. Reading commands connect read-only; an older schema goes through the migration
hook; a writer killed mid-transaction loses only that transaction."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bench import store as store_module
from bench.cli import main
from bench.errors import BenchError
from bench.store import SCHEMA_VERSION, Store
from bench.tasks.base import Metric, TaskResult

RUN = ["--methods", "gap-fc", "--dataset", "toy-quadrants", "--backbone", "resnet8", "--epochs", "1", "--seeds", "1", "--jobs", "1",
       "--tasks", "accuracy", "--no-progress", "--threads", "1"]


def bench_store(path: Path, runs: int = 30) -> None:
    """A store of many pages (so that a cut at half of it falls inside the data)."""
    store = Store(path)
    for i in range(runs):
        run = store.start_run({"i": i}, method="gap-fc", method_name="gap-fc", options={},
                              backbone="resnet8", dataset="toy", seed=0, preset="smoke",
                              device="cpu", torch_version="2.x")
        store.record_task(run, "accuracy", TaskResult(
            [Metric(f"m{j}", float(j), "%", {"note": "x" * 100}) for j in range(20)]))
        store.end_run(run, "complete")
    store.close()


def sql(path: Path, *statements: str, wal: bool = False) -> None:
    db = sqlite3.connect(path)
    if wal:
        db.execute("PRAGMA journal_mode = WAL")
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()


def truncated(path: Path, keep) -> None:
    bench_store(path)
    data = path.read_bytes()
    path.write_bytes(data[:keep(len(data))])


def foreign(path: Path, wal: bool = False) -> None:
    sql(path, "CREATE TABLE notes (x TEXT)", "INSERT INTO notes VALUES ('precious')", wal=wal)


BAD = {
    "empty": (lambda p: p.write_bytes(b""), "no results store at"),
    "header": (lambda p: (foreign(p), p.write_bytes(p.read_bytes()[:100])),
               "not a whole number of 4096-byte pages"),
    "truncated-mid-page": (lambda p: truncated(p, lambda n: n // 2 + 100), "truncated or damaged"),
    "truncated-at-a-page": (lambda p: truncated(p, lambda n: n // 2 // 4096 * 4096),
                            "is a truncated SQLite file"),
    "not-sqlite": (lambda p: p.write_bytes(b"precious data, not a database"),
                   "is not an SQLite results store"),
    "foreign": (foreign, "an SQLite database but not a bench results store (no schema_version in "
                         "a meta table; tables: notes)"),
    "foreign-wal": (lambda p: foreign(p, wal=True), "not a bench results store"),
    "newer": (lambda p: (bench_store(p, 3), sql(p, "UPDATE meta SET value = '7'")),
              f"schema version 7, newer than this bench's {SCHEMA_VERSION}"),
    "older": (lambda p: (bench_store(p, 3), sql(p, "UPDATE meta SET value = '0'")),
              f"schema version 0, older than this bench's {SCHEMA_VERSION}, and no migration from "
              "version 0"),
    "missing-column": (lambda p: (bench_store(p, 3), sql(p, "ALTER TABLE runs DROP COLUMN seed")),
                       "table runs lacks column(s) seed"),
}
WRITE_REFUSES = set(BAD) - {"empty"}  # an empty file is a new store to `bench run`


def make(tmp_path: Path, kind: str) -> Path:
    out = tmp_path / kind
    out.mkdir()
    BAD[kind][0](out / "results.sqlite")
    return out


def beside(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name != "results.sqlite")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("baseline") / "baseline.json"
    path.write_text('{"records": []}\n')
    return path


@pytest.mark.parametrize("kind", sorted(BAD))
def test_reading_commands_refuse_with_one_line(tmp_path, capsys, baseline, kind):
    out = make(tmp_path, kind)
    before = (out / "results.sqlite").read_bytes()
    for command in (["results"], ["report"], ["check", "--baseline", str(baseline)],
                    ["check", "--update", "--baseline", str(tmp_path / "new.json")]):
        code = main([*command, "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2, command
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert BAD[kind][1] in err and "Traceback" not in err
        assert (out / "results.sqlite").read_bytes() == before
        assert beside(out) == []  # no -wal, -shm or -journal file, no report written
    assert not (tmp_path / "new.json").exists()


@pytest.mark.parametrize("kind", sorted(WRITE_REFUSES))
def test_run_refuses_before_writing(tmp_path, capsys, kind):
    out = make(tmp_path, kind)
    before = (out / "results.sqlite").read_bytes()
    code = main(["run", "--out", str(out), *RUN])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and BAD[kind][1] in err
    assert (out / "results.sqlite").read_bytes() == before
    assert beside(out) == []
    if kind.startswith("foreign"):
        db = sqlite3.connect(f"file:{out / 'results.sqlite'}?mode=ro", uri=True)
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("notes",)]
        db.close()


def test_empty_file_becomes_a_new_store(tmp_path):
    path = tmp_path / "results.sqlite"
    path.write_bytes(b"")
    Store(path).close()
    assert beside(tmp_path) == []
    store = Store(path, create=False)
    assert store.db.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION)
    assert store.runs() == []
    store.close()


def test_reading_connection_is_read_only(tmp_path):
    path = tmp_path / "results.sqlite"
    bench_store(path, 2)
    before = path.read_bytes()
    store = Store(path, create=False)
    assert len(store.runs()) == 2
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        store.db.execute("DELETE FROM runs")
    store.close()
    assert path.read_bytes() == before


KILLED_WRITER = """
import os, signal, sys
from bench.store import Store
from bench.tasks.base import Metric, TaskResult
store = Store(sys.argv[1])
run = store.start_run({"a": 1}, method="gap-fc", method_name="gap-fc", options={}, backbone="b",
                      dataset="d", seed=0, preset="p", device="cpu", torch_version="t")
store.record_task(run, "accuracy", TaskResult([Metric("top1", 50.0, "%")]))
store.db.execute("BEGIN IMMEDIATE")
store.db.executemany("INSERT INTO metrics (run_id, task, name, value, unit) VALUES (?, ?, ?, ?, ?)",
                     [(run, "accuracy", f"m{i}", 1.0, "%") for i in range(5000)])
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_store_reads_after_its_writer_is_killed_mid_transaction(tmp_path):
    path = tmp_path / "results.sqlite"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    store = Store(path, create=False)  # the committed task, not the interrupted transaction
    assert [(r["metric"], r["value"]) for r in store.records()] == [("top1", 50.0)]
    store.close()


def test_older_schema_goes_through_the_migration_hook(tmp_path, monkeypatch):
    path = tmp_path / "results.sqlite"
    bench_store(path, 2)
    sql(path, "DROP TABLE curves", "UPDATE meta SET value = '0'")  # "version 0": no curves table
    with pytest.raises(BenchError, match="no migration from version 0 exists"):
        Store(path, create=False)
    curves = next(s for s in store_module._SCHEMA.split(";") if "TABLE IF NOT EXISTS curves" in s)
    monkeypatch.setitem(store_module.MIGRATIONS, 0, lambda db: db.execute(curves))
    before = path.read_bytes()
    store = Store(path, create=False)  # migrated in memory: the file is untouched
    assert store.curves() == [] and len(store.runs()) == 2
    store.close()
    assert path.read_bytes() == before
    Store(path).close()  # migrated in place
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION)
    assert "curves" in {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    db.close()


V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (id INTEGER PRIMARY KEY, config_hash TEXT NOT NULL UNIQUE, method TEXT NOT NULL,
    method_name TEXT NOT NULL, options TEXT NOT NULL, backbone TEXT NOT NULL, dataset TEXT NOT NULL,
    seed INTEGER NOT NULL, preset TEXT NOT NULL, config TEXT NOT NULL, status TEXT NOT NULL,
    reason TEXT, started TEXT NOT NULL, ended TEXT, torch_version TEXT NOT NULL,
    device TEXT NOT NULL, git_commit TEXT NOT NULL);
CREATE TABLE task_runs (run_id INTEGER NOT NULL, task TEXT NOT NULL, status TEXT NOT NULL,
    reason TEXT, ended TEXT NOT NULL, artifacts TEXT, PRIMARY KEY (run_id, task));
CREATE TABLE metrics (id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL, task TEXT NOT NULL,
    name TEXT NOT NULL, value REAL, unit TEXT NOT NULL, extra TEXT);
CREATE TABLE curves (run_id INTEGER NOT NULL, task TEXT NOT NULL, name TEXT NOT NULL,
    epoch INTEGER NOT NULL, value REAL, PRIMARY KEY (run_id, task, name, epoch));
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO runs VALUES (1, 'h', 'gap-fc', 'gap-fc', '{}', 'resnet8', 'toy', 0, 'quick', '{}',
    'complete', NULL, '2026-01-01', NULL, '2.14', 'cpu', 'abc');
INSERT INTO task_runs VALUES (1, 'accuracy', 'complete', NULL, '2026-01-01', '{}');
INSERT INTO metrics VALUES (1, 1, 'accuracy', 'top1', 71.5, '%', '{}');
"""


def test_a_version_1_store_is_read_and_migrated(tmp_path):
    """A store written by the first release (schema 1) is read as it is (migrated in memory),
    and migrated in place by a writing command: its runs gain owner and training time, its
    tasks their time, and the tuning tables appear; nothing stored is lost."""
    path = tmp_path / "results.sqlite"
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    db.close()
    before = path.read_bytes()
    store = Store(path, create=False)
    assert [(r["metric"], r["value"]) for r in store.records()] == [("top1", 71.5)]
    assert store.trials() == [] and store.task_runs()[0]["seconds"] is None
    store.close()
    assert path.read_bytes() == before
    store = Store(path)
    assert store.runs()[0]["owner"] is None and store.task_status(1, "accuracy") == "complete"
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION)
    assert {"studies", "trials"} <= {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    db.close()


def test_newer_schema_message_names_both_versions(tmp_path):
    out = make(tmp_path, "newer")
    with pytest.raises(BenchError) as error:
        Store(out / "results.sqlite")
    assert "version 7" in str(error.value) and f"this bench's {SCHEMA_VERSION}" in str(error.value)
