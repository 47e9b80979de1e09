"""The results store: one SQLite file. A run is one (method, backbone, dataset, recipe, seed)
configuration, keyed by the hash of that configuration; each task's metrics and curves are written
in one transaction together with the task's status, so an interrupted suite loses at most the task
in progress and the file is never left half-written.
"""
from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
import subprocess
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

from bench.errors import BenchError
from bench.tasks.base import TaskResult

SCHEMA_VERSION = 1
SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    config_hash TEXT NOT NULL UNIQUE,
    method TEXT NOT NULL,          -- canonical spec, e.g. se[r=8]
    method_name TEXT NOT NULL,     -- registered name, e.g. se
    options TEXT NOT NULL,         -- JSON: every option value of the method (auto ones resolved)
    backbone TEXT NOT NULL,
    dataset TEXT NOT NULL,
    seed INTEGER NOT NULL,
    preset TEXT NOT NULL,
    config TEXT NOT NULL,          -- JSON: the full configuration that was hashed
    status TEXT NOT NULL,          -- running | complete | failed
    reason TEXT,
    started TEXT NOT NULL,
    ended TEXT,
    torch_version TEXT NOT NULL,
    device TEXT NOT NULL,
    git_commit TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS task_runs (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    task TEXT NOT NULL,
    status TEXT NOT NULL,          -- complete | failed | skipped
    reason TEXT,
    ended TEXT NOT NULL,
    artifacts TEXT,                -- JSON: name -> path of files the task wrote
    PRIMARY KEY (run_id, task)
);
CREATE TABLE IF NOT EXISTS metrics (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    task TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    unit TEXT NOT NULL,
    extra TEXT                     -- JSON: how the value was obtained (tool, sizes, settings)
);
CREATE TABLE IF NOT EXISTS curves (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    task TEXT NOT NULL,
    name TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, task, name, epoch)
);
CREATE INDEX IF NOT EXISTS metrics_run ON metrics (run_id, task);
"""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def config_hash(config: dict[str, Any]) -> str:
    """A stable hash of a JSON-serialisable configuration (key order does not matter)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the checkout bench runs from, or "unknown" outside a git checkout (asked
    once per process)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def check_sqlite_file(path: Path) -> None:
    """Refuse (without touching it) a file that exists but is not an SQLite database."""
    if path.exists() and path.stat().st_size > 0:
        with open(path, "rb") as f:
            if f.read(16) != SQLITE_MAGIC:
                raise BenchError(f"{path} exists but is not an SQLite results store; "
                                 f"move it away or choose another --out")


class Store:
    """The SQLite results store at ``path`` (created on first use)."""

    def __init__(self, path: Path, create: bool = True) -> None:
        self.path = Path(path)
        check_sqlite_file(self.path)
        if not create and not self.path.exists():
            raise BenchError(f"no results store at {self.path}; run `python -m bench run --out "
                             f"{self.path.parent}` first")
        try:
            self.db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA busy_timeout = 60000")
            if create:
                self.db.execute("PRAGMA journal_mode = WAL")
                with self.transaction():
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            self.db.execute(statement)
                    self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                                    (str(SCHEMA_VERSION),))
        except sqlite3.DatabaseError as e:
            raise BenchError(f"{self.path} is not a usable SQLite results store ({e})") from None

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error; retried while another writer holds
        the lock (parallel ``--jobs`` processes share one store)."""
        for attempt in range(100):
            try:
                self.db.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or attempt == 99:
                    raise
                time.sleep(0.05 * (attempt + 1))
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- runs ---------------------------------------------------------------------------------
    def start_run(self, config: dict[str, Any], *, method: str, method_name: str,
                  options: dict[str, Any], backbone: str, dataset: str, seed: int, preset: str,
                  device: str, torch_version: str) -> int:
        """The id of the run with this configuration, created if new (status ``running``)."""
        digest = config_hash(config)
        with self.transaction() as db:
            row = db.execute("SELECT id FROM runs WHERE config_hash = ?", (digest,)).fetchone()
            if row:
                db.execute("UPDATE runs SET status = 'running', reason = NULL, device = ?, "
                           "git_commit = ? WHERE id = ? AND status != 'complete'",
                           (device, git_commit(), row["id"]))
                return int(row["id"])
            cur = db.execute(
                "INSERT INTO runs (config_hash, method, method_name, options, backbone, dataset, "
                "seed, preset, config, status, started, torch_version, device, git_commit) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)",
                (digest, method, method_name, json.dumps(options, sort_keys=True, default=str),
                 backbone, dataset, seed, preset, json.dumps(config, sort_keys=True, default=str),
                 now(), torch_version, device, git_commit()))
            return int(cur.lastrowid)

    def run_hash(self, run_id: int) -> str:
        return self.db.execute("SELECT config_hash FROM runs WHERE id = ?", (run_id,)).fetchone()[0]

    def end_run(self, run_id: int, status: str, reason: Optional[str] = None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE runs SET status = ?, reason = ?, ended = ? WHERE id = ?",
                       (status, reason, now(), run_id))

    def task_status(self, run_id: int, task: str) -> Optional[str]:
        row = self.db.execute("SELECT status FROM task_runs WHERE run_id = ? AND task = ?",
                              (run_id, task)).fetchone()
        return row["status"] if row else None

    def task_reason(self, run_id: int, task: str) -> Optional[str]:
        row = self.db.execute("SELECT reason FROM task_runs WHERE run_id = ? AND task = ?",
                              (run_id, task)).fetchone()
        return row["reason"] if row else None

    def run_reason(self, run_id: int) -> Optional[str]:
        row = self.db.execute("SELECT reason FROM runs WHERE id = ?", (run_id,)).fetchone()
        return row["reason"] if row else None

    def record_task(self, run_id: int, task: str, result: TaskResult, status: str = "complete",
                    reason: Optional[str] = None) -> None:
        """Replace the task's metrics and curves and mark it, all in one transaction."""
        with self.transaction() as db:
            db.execute("DELETE FROM metrics WHERE run_id = ? AND task = ?", (run_id, task))
            db.execute("DELETE FROM curves WHERE run_id = ? AND task = ?", (run_id, task))
            db.executemany(
                "INSERT INTO metrics (run_id, task, name, value, unit, extra) VALUES (?, ?, ?, ?, ?, ?)",
                [(run_id, task, m.name, m.value, m.unit, json.dumps(m.extra, sort_keys=True, default=str))
                 for m in result.metrics])
            db.executemany(
                "INSERT INTO curves (run_id, task, name, epoch, value) VALUES (?, ?, ?, ?, ?)",
                [(run_id, task, name, epoch + 1, value)
                 for name, values in result.curves.items() for epoch, value in enumerate(values)])
            db.execute("INSERT OR REPLACE INTO task_runs (run_id, task, status, reason, ended, artifacts) "
                       "VALUES (?, ?, ?, ?, ?, ?)",
                       (run_id, task, status, reason, now(),
                        json.dumps(result.artifacts, default=str)))

    # -- reading ------------------------------------------------------------------------------
    def records(self) -> list[dict[str, Any]]:
        """Every stored metric as a flat record (method, dataset, backbone, seed, task, metric,
        value, unit, ..., and the run's resolved ``method_options``), in run order."""
        rows = self.db.execute(
            "SELECT r.id AS run_id, r.method, r.method_name, r.dataset, r.backbone, r.seed, r.preset, "
            "r.status AS run_status, r.options AS method_options, m.task, m.name AS metric, "
            "m.value, m.unit, m.extra "
            "FROM metrics m JOIN runs r ON r.id = m.run_id ORDER BY r.id, m.id").fetchall()
        return [dict(row, extra=json.loads(row["extra"] or "{}"),
                     method_options=json.loads(row["method_options"] or "{}")) for row in rows]

    def runs(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute("SELECT * FROM runs ORDER BY id").fetchall()]

    def curves(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT r.id AS run_id, r.method, r.dataset, r.backbone, r.seed, c.task, c.name, c.epoch, "
            "c.value FROM curves c JOIN runs r ON r.id = c.run_id ORDER BY r.id, c.name, c.epoch")
        return [dict(r) for r in rows.fetchall()]

    def task_runs(self) -> list[dict[str, Any]]:
        return [dict(r, artifacts=json.loads(r["artifacts"] or "{}")) for r in
                self.db.execute("SELECT * FROM task_runs ORDER BY run_id, task").fetchall()]
