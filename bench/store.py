"""The results store: one SQLite file. A run is one (method, backbone, dataset, recipe, seed)
configuration, keyed by the hash of that configuration; each task's metrics and curves are written
in one transaction together with the task's status, so an interrupted suite loses at most the task
in progress and the file is never left half-written.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
import sqlite3
import stat
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from bench.errors import BenchError
from bench.metrics import TaskResult

SCHEMA_VERSION = 5  # 2: runs.owner and train_seconds, task_runs.seconds; 3: studies and trials;
# 4: failure kinds (runs, task_runs) and claim heartbeats (runs, trials); 5: runs.plugins
HEARTBEAT_SECONDS = 30.0  # how often the driver refreshes the heartbeat of the claims it holds
STALE_AFTER_SECONDS = 600.0  # a claim whose heartbeat is older than this is taken over
RUN, INFRASTRUCTURE = "run", "infrastructure"  # kinds of failure: final, or retried by a rerun
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
    status TEXT NOT NULL,          -- pending | running | complete | failed
    reason TEXT,
    failure TEXT,                  -- of a failed run: run (final) | infrastructure (retried)
    owner TEXT,                    -- host:pid:start of the process working on it (a claim)
    heartbeat TEXT,                -- when that process last showed it still works on it
    train_seconds REAL,            -- wall time of training (NULL: loaded from a checkpoint)
    started TEXT NOT NULL,
    ended TEXT,
    torch_version TEXT NOT NULL,
    device TEXT NOT NULL,
    git_commit TEXT NOT NULL,
    plugins TEXT                   -- JSON: [{module, distribution, version}] of the code outside
                                   -- bench that registered the run's entries (plugins)
);
CREATE TABLE IF NOT EXISTS task_runs (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    task TEXT NOT NULL,
    status TEXT NOT NULL,          -- complete | failed | skipped
    reason TEXT,
    failure TEXT,                  -- of a failed task: run (final) | infrastructure (retried)
    ended TEXT NOT NULL,
    artifacts TEXT,                -- JSON: name -> path of files the task wrote
    seconds REAL,                  -- wall time of the task
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
CREATE TABLE IF NOT EXISTS studies (
    id INTEGER PRIMARY KEY,
    study_hash TEXT NOT NULL UNIQUE,
    method TEXT NOT NULL,          -- the method spec tuned
    config TEXT NOT NULL,          -- JSON: dataset, backbone, base recipe, space, sampler, budget
    started TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS trials (
    study_id INTEGER NOT NULL REFERENCES studies(id),
    number INTEGER NOT NULL,
    params TEXT NOT NULL,          -- JSON: the sampled values
    state TEXT NOT NULL,           -- running | complete | pruned | failed | interrupted
    value REAL,                    -- the holdout score it was selected by
    curve TEXT,                    -- JSON: the holdout score after each epoch (pruning)
    epochs INTEGER,                -- epochs trained (the budget it spent)
    seconds REAL,                  -- wall time
    threads INTEGER,
    device TEXT,
    owner TEXT,
    heartbeat TEXT,
    reason TEXT,
    ended TEXT,
    PRIMARY KEY (study_id, number)
);
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


def _start_time(pid: int) -> Optional[str]:
    """The start time of process ``pid`` (Linux /proc), telling a reused pid from the original."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner_token() -> str:
    """This process as a claim holder: host, pid and process start time."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or '?'}"


def _process_gone(host: str, pid_text: str, start: str) -> bool:
    """Whether the process of a claim made on this host has ended (its pid gone, or reused by a
    process started at another time)."""
    if not pid_text.isdigit():
        return True
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return start not in ("?", "") and _start_time(pid) != start


def heartbeat_age(heartbeat: Optional[str]) -> Optional[float]:
    """Seconds since a stored heartbeat (None when none is recorded)."""
    if not heartbeat:
        return None
    return (datetime.now(timezone.utc) - datetime.fromisoformat(heartbeat)).total_seconds()


def stale_claim(token: Optional[str], heartbeat: Optional[str] = None) -> Optional[str]:
    """Why a claim may be taken over, or None while its holder still works on it. A claim is
    stale when its heartbeat is older than ``STALE_AFTER_SECONDS`` (whichever host made it),
    when it was made on this host by a process that has ended, or when it was made on another
    host and records no heartbeat (written before heartbeats were kept)."""
    if not token:
        return "no process holds it"
    host, _, rest = token.partition(":")
    pid_text, _, start = rest.partition(":")
    age = heartbeat_age(heartbeat)
    if age is not None and age > STALE_AFTER_SECONDS:
        return f"its last heartbeat is {age:.0f} s old (limit {STALE_AFTER_SECONDS:.0f} s)"
    if host == socket.gethostname():
        return "its process has ended" if _process_gone(host, pid_text, start) else None
    return "it records no heartbeat" if age is None else None


def owner_alive(token: str, heartbeat: Optional[str] = None) -> bool:
    """Whether the holder of a claim still works on it (see ``stale_claim``)."""
    return stale_claim(token, heartbeat) is None


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


@functools.lru_cache(maxsize=1)
def expected_columns() -> dict[str, set[str]]:
    """Every table of the current schema with its columns, read from ``_SCHEMA`` itself."""
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(_SCHEMA)
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {table: _columns(db, table) for table in tables}
    finally:
        db.close()


def check_file(path: Path, must_exist: bool) -> bytes:
    """The first 100 bytes of ``path`` (empty for an absent or empty file, a new store), after
    refusing, before SQLite opens it, a file that cannot be a sound SQLite database: another
    format, a header alone, a truncated file. ``must_exist``: an absent or empty file is refused."""
    where = f"choose another --out or move {path} away"
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        if must_exist:
            state = "is empty" if path.exists() else "does not exist"
            raise BenchError(f"no results store at {path} (the file {state}); run `python -m bench "
                             f"run --out {path.parent}` first")
        return b""
    if not path.is_file():
        raise BenchError(f"{path} is not a file; {where}")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except OSError as e:
        raise BenchError(f"{path} cannot be read ({e.strerror or e}); {where}") from None
    if header[:16] != SQLITE_MAGIC:
        raise BenchError(f"{path} exists but is not an SQLite results store; {where}")
    page_size = int.from_bytes(header[16:18], "big") if len(header) == 100 else 0
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        raise BenchError(f"{path} is a damaged SQLite file (invalid header); {where}")
    if size % page_size:
        raise BenchError(f"{path} is a truncated or damaged SQLite file ({size} bytes, not a whole "
                         f"number of {page_size}-byte pages); {where}")
    pages, changes, valid_for = (int.from_bytes(header[i:i + 4], "big") for i in (28, 24, 92))
    if changes == valid_for and pages * page_size > size:
        raise BenchError(f"{path} is a truncated SQLite file ({size} of {pages * page_size} "
                         f"bytes); {where}")
    return header


def migrate(db: sqlite3.Connection, version: int, path: Path) -> None:
    """Upgrade ``db`` from schema ``version`` to ``SCHEMA_VERSION`` by the ``MIGRATIONS`` steps and
    record the new version; a BenchError, before any step runs, when a step is missing."""
    missing = [v for v in range(version, SCHEMA_VERSION) if v not in MIGRATIONS]
    if missing:
        raise BenchError(f"{path} has store schema version {version}, older than this bench's "
                         f"{SCHEMA_VERSION}, and no migration from version {missing[0]} exists; "
                         f"use the bench that wrote it, or another --out")
    for v in range(version, SCHEMA_VERSION):
        MIGRATIONS[v](db)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))


def schema_version(db: sqlite3.Connection, path: Path) -> int:
    """The schema version of the bench store open in ``db``; a BenchError (nothing written) for a
    damaged file, a database that is not a bench store, or a version newer than this code's."""
    problems = [row[0] for row in db.execute("PRAGMA quick_check")]
    if problems != ["ok"]:
        raise BenchError(f"{path} is a damaged SQLite file ({problems[0]}); choose another --out "
                         f"or restore it from a copy")
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    row = None
    if "meta" in tables and expected_columns()["meta"] <= _columns(db, "meta"):
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    version = str(row[0]) if row else ""
    if not version.isdigit():
        found = f"tables: {', '.join(sorted(tables))}" if tables else "no tables"
        raise BenchError(f"{path} is an SQLite database but not a bench results store (no "
                         f"schema_version in a meta table; {found}); it is left untouched: choose "
                         f"another --out")
    if int(version) > SCHEMA_VERSION:
        raise BenchError(f"{path} has store schema version {version}, newer than this bench's "
                         f"{SCHEMA_VERSION}: it was written by a newer bench; upgrade bench, or "
                         f"choose another --out")
    return int(version)


def check_tables(db: sqlite3.Connection, path: Path) -> None:
    """A BenchError unless every table of the current schema exists with all its columns."""
    for table, columns in expected_columns().items():
        missing = columns - _columns(db, table)
        if missing:
            what = "missing" if missing == columns else f"lacks column(s) {', '.join(sorted(missing))}"
            raise BenchError(f"{path} is not a bench results store of schema version "
                             f"{SCHEMA_VERSION}: table {table} {what}; choose another --out")


def _add_columns(*columns: tuple[str, str, str]) -> Callable[[sqlite3.Connection], None]:
    """A migration step adding (table, column, type) columns; new tables come from ``_SCHEMA``."""
    def step(db: sqlite3.Connection) -> None:
        for table, column, kind in columns:
            if column not in _columns(db, table):
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        for statement in _SCHEMA.split(";"):  # CREATE ... IF NOT EXISTS: the tables added
            if statement.strip():
                db.execute(statement)
    return step


# Reasons older stores gave the failures of a worker process rather than of the run itself.
_INFRASTRUCTURE_REASONS = ("a worker process died", "Ray worker lost%")


def _classify_failures(db: sqlite3.Connection) -> None:
    """Mark the failures stored before kinds were kept: a dead worker's as infrastructure (a
    rerun retries them), every other as the run's own (final)."""
    match = " OR ".join("reason LIKE ?" for _ in _INFRASTRUCTURE_REASONS)
    for table in ("runs", "task_runs"):
        db.execute(f"UPDATE {table} SET failure = CASE WHEN {match} THEN ? ELSE ? END "
                   f"WHERE status = 'failed'", (*_INFRASTRUCTURE_REASONS, INFRASTRUCTURE, RUN))


# MIGRATIONS[v] upgrades a store from schema version v to v + 1, run in order by ``migrate``.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _add_columns(("runs", "owner", "TEXT"), ("runs", "train_seconds", "REAL"),
                    ("task_runs", "seconds", "REAL")),
    2: _add_columns(),  # the studies and trials tables
    3: lambda db: (_add_columns(("runs", "failure", "TEXT"), ("runs", "heartbeat", "TEXT"),
                                ("task_runs", "failure", "TEXT"),
                                ("trials", "heartbeat", "TEXT"))(db), _classify_failures(db)),
    4: _add_columns(("runs", "plugins", "TEXT")),
}


WORKER_ENV = "BENCH_WORKER"  # set in worker processes, which must never open the store


def check_writable(path: Path) -> None:
    """A BenchError, before SQLite opens the store for writing, when this process may not write
    the file or the folder SQLite keeps its ``-wal`` and ``-shm`` files in."""
    for target, what in ((path, "the store"), (path.parent, "its folder")):
        if target.exists() and not os.access(target, os.W_OK):
            mode = stat.filemode(target.stat().st_mode)
            raise BenchError(f"{path} cannot be written: {what} {target} is read-only for this "
                             f"user (permission denied, mode {mode}); `bench results`, `report` "
                             f"and `check` can still read it; choose another --out to run")


@dataclass
class Claim:
    """The outcome of claiming a run: the live process that holds it instead (None: claimed
    here), and a notice when a stale claim was taken over."""

    holder: Optional[str] = None
    notice: Optional[str] = None


class Heartbeat:
    """A thread refreshing, every ``HEARTBEAT_SECONDS``, the heartbeat of every run and trial
    that ``owner`` holds in the store at ``path`` (its own connection), so that others can tell
    its claims from stale ones."""

    def __init__(self, path: Path, owner: str) -> None:
        self.path, self.owner = path, owner
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="bench-heartbeat", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        db = sqlite3.connect(self.path.resolve().as_uri(), uri=True, timeout=60.0,
                             isolation_level=None, check_same_thread=False)
        try:
            while not self.stopped.wait(HEARTBEAT_SECONDS):
                try:
                    stamp = now()
                    db.execute("UPDATE runs SET heartbeat = ? WHERE owner = ? AND status = "
                               "'running'", (stamp, self.owner))
                    db.execute("UPDATE trials SET heartbeat = ? WHERE owner = ? AND state = "
                               "'running'", (stamp, self.owner))
                except sqlite3.Error:  # the store busy beyond the timeout: the next beat
                    continue
        finally:
            db.close()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()


class Store:
    """The SQLite results store at ``path``, checked before anything is written to it.

    ``create=True`` (the suite, the store's only writer) opens it for writing: an absent or empty
    file becomes a new store; an existing file must be a bench store (a ``meta`` table with a
    ``schema_version`` not newer than ``SCHEMA_VERSION``, and every table with its columns); an
    older one is migrated in place (``MIGRATIONS``) in the same transaction; only then is the
    store put in WAL mode. ``create=False`` opens an existing store read-only (``mode=ro``
    connections, for ``results``, ``report`` and ``check``); an older one is migrated in a
    private in-memory copy. A file that is not a bench store, a damaged one, or one of a newer
    version is a BenchError and stays byte-identical, with no file left beside it. Only the
    driver process opens it; a worker process (``BENCH_WORKER`` set) that tries is a bug and
    fails loudly.
    """

    def __init__(self, path: Path, create: bool = True) -> None:
        if os.environ.get(WORKER_ENV):
            raise RuntimeError(f"a worker process opened the results store {path}: only the "
                               "driver writes it")
        self.path = Path(path)
        self.read_only = not create
        self.heartbeat: Optional[Heartbeat] = None
        header = check_file(self.path, must_exist=self.read_only)
        if create:
            check_writable(self.path)
        try:
            if self.read_only:
                self.db = self._open_read_only(header)
            else:
                self.db = self._connect(self.path.resolve().as_uri())
                try:
                    self._prepare_for_writing()
                except BaseException:
                    self.db.close()
                    raise
        except sqlite3.DatabaseError as e:
            raise BenchError(f"{self.path} is not a usable results store ({e}); choose another "
                             f"--out") from None
        if create:
            self.heartbeat = Heartbeat(self.path, owner_token())

    @staticmethod
    def _connect(uri: str) -> sqlite3.Connection:
        db = sqlite3.connect(uri, timeout=60.0, isolation_level=None, uri=True)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout = 60000")
        return db

    def _open_read_only(self, header: bytes) -> sqlite3.Connection:
        """A read-only connection to the checked store. A WAL-mode file without a ``-wal`` file
        beside it (no writer: the main file holds everything) is checked through an immutable
        connection, since a plain one would leave ``-wal`` and ``-shm`` files beside a file that
        may not be a bench store; a store that passes is then read through a plain one, which
        sees a writer that starts meanwhile."""
        uri = self.path.resolve().as_uri() + "?mode=ro"
        idle_wal = header[18] == 2 and not Path(f"{self.path}-wal").exists()
        db = self._connect(uri + ("&immutable=1" if idle_wal else ""))
        try:
            version = schema_version(db, self.path)
            if version < SCHEMA_VERSION:  # migrated in a private copy: the file stays as it is
                copy = sqlite3.connect(":memory:", isolation_level=None)
                copy.row_factory = sqlite3.Row
                db.backup(copy)
                db.close()
                db = copy
                migrate(db, version, self.path)
            check_tables(db, self.path)
            if idle_wal and version == SCHEMA_VERSION:
                db.close()
                db = self._connect(uri)
        except BaseException:
            db.close()
            raise
        return db

    def _prepare_for_writing(self) -> None:
        """Create a new store, or check (and migrate) an existing one, in one transaction; then
        WAL mode (readers never wait for the writer, and still read after it is killed)."""
        with self.transaction() as db:
            tables = db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
            if tables == 0 and self.path.stat().st_size == 0:  # a new store (locked: no one else)
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            else:
                version = schema_version(db, self.path)
                if version < SCHEMA_VERSION:
                    migrate(db, version, self.path)
            check_tables(db, self.path)
        self.db.execute("PRAGMA journal_mode = WAL")

    def close(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
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
                  device: str, torch_version: str,
                  plugins: Optional[list[dict[str, Any]]] = None) -> int:
        """The id of the run with this configuration, created if new (status ``pending``);
        ``plugins``: the plugins whose entries it uses (``bench.plugins.provenance``)."""
        digest = config_hash(config)
        with self.transaction() as db:
            row = db.execute("SELECT id FROM runs WHERE config_hash = ?", (digest,)).fetchone()
            if row:
                return int(row["id"])
            cur = db.execute(
                "INSERT INTO runs (config_hash, method, method_name, options, backbone, dataset, "
                "seed, preset, config, status, started, torch_version, device, git_commit, "
                "plugins) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?)",
                (digest, method, method_name, json.dumps(options, sort_keys=True, default=str),
                 backbone, dataset, seed, preset, json.dumps(config, sort_keys=True, default=str),
                 now(), torch_version, device, git_commit(), json.dumps(plugins or [])))
            return int(cur.lastrowid)

    def claim(self, run_id: int, owner: str, device: str,
              plugins: Optional[list[dict[str, Any]]] = None) -> Claim:
        """Mark the run ``running`` by ``owner``, unless another process holds it and still
        works on it (``stale_claim``): then that holder is returned. A stale claim is taken
        over, with a notice saying whose it was and why it was stale. The code that computes it
        now (git commit, ``plugins``) replaces what was recorded before."""
        with self.transaction() as db:
            row = db.execute("SELECT status, owner, heartbeat FROM runs WHERE id = ?",
                             (run_id,)).fetchone()
            holder, notice = row["owner"], None
            if row["status"] == "running" and holder and holder != owner:
                why = stale_claim(holder, row["heartbeat"])
                if why is None:
                    return Claim(holder)
                notice = f"took over run {run_id} from the stale claim of {holder}: {why}"
            db.execute("UPDATE runs SET status = 'running', reason = NULL, failure = NULL, "
                       "owner = ?, heartbeat = ?, device = ?, git_commit = ?, plugins = ? "
                       "WHERE id = ?",
                       (owner, now(), device, git_commit(), json.dumps(plugins or []), run_id))
            return Claim(None, notice)

    def release_claims(self, owner: str, reason: str) -> int:
        """Mark every run and trial ``owner`` still holds as failed by the infrastructure
        (interrupted): a plain rerun retries them. Returns how many runs."""
        with self.transaction() as db:
            count = db.execute("UPDATE runs SET status = 'failed', failure = ?, reason = ?, "
                               "ended = ? WHERE owner = ? AND status = 'running'",
                               (INFRASTRUCTURE, reason, now(), owner)).rowcount
            db.execute("UPDATE trials SET state = 'interrupted', reason = ?, ended = ? "
                       "WHERE owner = ? AND state = 'running'", (reason, now(), owner))
            return count

    def run_hash(self, run_id: int) -> str:
        return self.db.execute("SELECT config_hash FROM runs WHERE id = ?", (run_id,)).fetchone()[0]

    def end_run(self, run_id: int, status: str, reason: Optional[str] = None,
                train_seconds: Optional[float] = None, failure: Optional[str] = None,
                changed_only: bool = False) -> None:
        """Record the run's final status (and its training time when it trained now);
        ``changed_only``: only where status, reason or failure differ from what is stored (a
        run with nothing to do keeps the time it ended)."""
        query = ("UPDATE runs SET status = ?, reason = ?, failure = ?, ended = ?, "
                 "train_seconds = COALESCE(?, train_seconds) WHERE id = ?")
        args: tuple = (status, reason, failure, now(), train_seconds, run_id)
        if changed_only:
            query += " AND (status IS NOT ? OR reason IS NOT ? OR failure IS NOT ?)"
            args += (status, reason, failure)
        with self.transaction() as db:
            db.execute(query, args)

    def task_status(self, run_id: int, task: str) -> Optional[str]:
        row = self.db.execute("SELECT status FROM task_runs WHERE run_id = ? AND task = ?",
                              (run_id, task)).fetchone()
        return row["status"] if row else None

    def task_failure(self, run_id: int, task: str) -> Optional[str]:
        """The kind of a failed task's failure (``RUN`` for failures stored without one)."""
        row = self.db.execute("SELECT status, failure FROM task_runs WHERE run_id = ? AND "
                              "task = ?", (run_id, task)).fetchone()
        return (row["failure"] or RUN) if row and row["status"] == "failed" else None

    # -- tuning -------------------------------------------------------------------------------
    def start_study(self, config: dict[str, Any], method: str) -> int:
        """The id of the study with this configuration, created if new."""
        digest = config_hash(config)
        with self.transaction() as db:
            row = db.execute("SELECT id FROM studies WHERE study_hash = ?", (digest,)).fetchone()
            if row:
                return int(row["id"])
            return int(db.execute(
                "INSERT INTO studies (study_hash, method, config, started) VALUES (?, ?, ?, ?)",
                (digest, method, json.dumps(config, sort_keys=True, default=str), now())).lastrowid)

    def trials(self, study_id: Optional[int] = None) -> list[dict[str, Any]]:
        """Trials (of one study, or all) with their study's method and configuration."""
        query = ("SELECT t.*, s.method, s.config AS study_config, s.study_hash FROM trials t "
                 "JOIN studies s ON s.id = t.study_id")
        args: tuple = ()
        if study_id is not None:
            query, args = query + " WHERE t.study_id = ?", (study_id,)
        rows = self.db.execute(query + " ORDER BY t.study_id, t.number", args).fetchall()
        return [dict(r, params=json.loads(r["params"]), curve=json.loads(r["curve"] or "[]"),
                     study_config=json.loads(r["study_config"])) for r in rows]

    def claim_trial(self, study_id: int, number: int, params: dict[str, Any], owner: str,
                    device: str, threads: int) -> bool:
        """Record trial ``number`` as running by ``owner``; False when it is finished, or running
        in another process that still works on it. An interrupted trial is claimed again."""
        with self.transaction() as db:
            row = db.execute("SELECT state, owner, heartbeat FROM trials WHERE study_id = ? AND "
                             "number = ?", (study_id, number)).fetchone()
            if row is not None and row["state"] != "interrupted" and (
                    row["state"] != "running" or (row["owner"] != owner and owner_alive(
                        row["owner"], row["heartbeat"]))):
                return False
            db.execute("INSERT OR REPLACE INTO trials (study_id, number, params, state, owner, "
                       "heartbeat, device, threads) VALUES (?, ?, ?, 'running', ?, ?, ?, ?)",
                       (study_id, number, json.dumps(params, sort_keys=True), owner, now(),
                        device, threads))
            return True

    def interrupt_trial(self, study_id: int, number: int, reason: str) -> None:
        """Mark a trial whose worker died ``interrupted``: it spends no budget, and a rerun
        runs it again."""
        with self.transaction() as db:
            db.execute("UPDATE trials SET state = 'interrupted', reason = ?, ended = ? "
                       "WHERE study_id = ? AND number = ?", (reason, now(), study_id, number))

    def finish_trial(self, study_id: int, number: int, state: str, value: Optional[float],
                     curve: list[float], epochs: int, seconds: float,
                     reason: Optional[str] = None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE trials SET state = ?, value = ?, curve = ?, epochs = ?, "
                       "seconds = ?, reason = ?, ended = ? WHERE study_id = ? AND number = ?",
                       (state, value, json.dumps(curve), epochs, seconds, reason, now(),
                        study_id, number))

    def task_reason(self, run_id: int, task: str) -> Optional[str]:
        row = self.db.execute("SELECT reason FROM task_runs WHERE run_id = ? AND task = ?",
                              (run_id, task)).fetchone()
        return row["reason"] if row else None

    def run_failure(self, run_id: int) -> tuple[Optional[str], Optional[str]]:
        """The stored reason and failure kind of a run."""
        row = self.db.execute("SELECT reason, failure FROM runs WHERE id = ?", (run_id,)).fetchone()
        return (row["reason"], row["failure"]) if row else (None, None)

    def record_task(self, run_id: int, task: str, result: TaskResult, status: str = "complete",
                    reason: Optional[str] = None, seconds: Optional[float] = None,
                    failure: Optional[str] = None) -> None:
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
            db.execute("INSERT OR REPLACE INTO task_runs (run_id, task, status, reason, failure, "
                       "ended, artifacts, seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (run_id, task, status, reason, (failure or RUN) if status == "failed" else None,
                        now(), json.dumps(result.artifacts, default=str), seconds))

    # -- reading ------------------------------------------------------------------------------
    def records(self) -> list[dict[str, Any]]:
        """Every stored metric as a flat record (method and its option values, dataset,
        backbone, seed, task, metric, value, unit, ...), in run order."""
        rows = self.db.execute(
            "SELECT r.id AS run_id, r.method, r.method_name, r.options AS method_options, "
            "r.dataset, r.backbone, r.seed, r.preset, r.status AS run_status, m.task, "
            "m.name AS metric, m.value, m.unit, m.extra "
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
