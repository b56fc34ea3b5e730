"""The Steward's audit log: every issuance and every refusal, durable before the answer leaves.

SQLite in WAL mode with ``synchronous=FULL``: a transaction that has committed survives a crash or
a ``kill -9`` of the Steward and a power cut of the machine. The service appends an event and waits
for its commit before it sends the response, so no client ever holds a certificate the log does
not know about.

One writer thread owns the connection and commits in groups: it takes every event queued while the
previous commit was in progress, writes them in one transaction and one fsync, then releases all
their waiters. Under load that turns N fsyncs into one without weakening the rule above.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from motte.shared.errors import MotteError

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id              INTEGER PRIMARY KEY,
    at              TEXT    NOT NULL,   -- ISO 8601, UTC: when the Steward decided
    verdict         TEXT    NOT NULL CHECK (verdict IN ('issued', 'refused')),
    status          INTEGER NOT NULL,   -- the HTTP status sent
    reason          TEXT,               -- stable refusal code (NULL when issued)
    message         TEXT,
    technology      TEXT,               -- snp | tdx | sgx | none (unattested) | NULL (not read)
    evidence_sha256 TEXT,
    csr_sha256      TEXT,
    key_sha256      TEXT,               -- SHA-256 of the CSR's SubjectPublicKeyInfo
    serial          TEXT UNIQUE,        -- hex, issued certificates only
    not_after       TEXT,
    claims          TEXT,               -- JSON: what the evidence said (verified or not)
    certificate     BLOB,               -- DER, issued certificates only
    peer            TEXT,
    workload_sha256 TEXT,               -- the digests the CSR's binding extensions carried (hex)
    launch_sha256   TEXT
);
CREATE INDEX IF NOT EXISTS events_evidence ON events (evidence_sha256);
"""
# What each schema version adds to the one before (a Steward upgraded in place opens an old log).
MIGRATIONS = {
    2: ("ALTER TABLE events ADD COLUMN workload_sha256 TEXT", "ALTER TABLE events ADD COLUMN launch_sha256 TEXT"),
}
COLUMNS = (
    "at",
    "verdict",
    "status",
    "reason",
    "message",
    "technology",
    "evidence_sha256",
    "csr_sha256",
    "key_sha256",
    "serial",
    "not_after",
    "claims",
    "certificate",
    "peer",
    "workload_sha256",
    "launch_sha256",
)
INSERT = f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
MAX_BATCH = 512


@dataclass
class Event:
    at: str
    verdict: str
    status: int
    reason: str | None = None
    message: str | None = None
    technology: str | None = None
    evidence_sha256: str | None = None
    csr_sha256: str | None = None
    key_sha256: str | None = None
    serial: str | None = None
    not_after: str | None = None
    claims: dict[str, Any] | None = field(default=None)
    certificate: bytes | None = None
    peer: str | None = None
    workload_sha256: str | None = None
    launch_sha256: str | None = None

    def row(self) -> tuple[Any, ...]:
        values = [getattr(self, name) for name in COLUMNS]
        values[COLUMNS.index("claims")] = None if self.claims is None else json.dumps(self.claims, sort_keys=True)
        return tuple(values)


class LogError(MotteError):
    """The audit log could not be opened or written."""


def make_private(path: Path) -> None:
    """Create the log (and its directory, if missing) readable by its owner only, and make an existing
    log so: it holds chip ids and client addresses. SQLite gives its ``-wal`` and ``-shm`` files the
    database file's mode, and those already there are fixed here too."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        for companion in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(companion, 0o600)
    except OSError as exc:
        raise LogError(f"cannot create the audit log {path}: {exc.strerror or exc}") from exc


def connect(path: Path) -> sqlite3.Connection:
    make_private(path)
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise LogError(f"audit log {path}: cannot use WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous=FULL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise LogError(f"audit log {path} has schema version {version}; this Steward writes {SCHEMA_VERSION}")
        if version == 0:  # a new log
            conn.executescript(SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        elif version < SCHEMA_VERSION:
            _migrate(conn, version)
    except sqlite3.Error as exc:
        raise LogError(f"cannot open the audit log {path}: {exc}") from exc
    return conn


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    """Bring a log of schema ``version`` to :data:`SCHEMA_VERSION`, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[step]:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except sqlite3.Error:
        conn.execute("ROLLBACK")
        raise


class _SyncWaiter:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: LogError | None = None


_Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"] | _SyncWaiter


class AuditLog:
    """Append-only event log with a group-committing writer thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = connect(path)
        self._queue: queue.SimpleQueue[tuple[Event, _Waiter] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="steward-log", daemon=True)
        self._closed = False
        self.commits = 0
        self.events = 0
        self._thread.start()

    async def append(self, event: Event) -> None:
        """Returns once the event is committed; raises LogError if it could not be."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._put(event, (loop, future))
        await future

    def append_sync(self, event: Event) -> None:
        waiter = _SyncWaiter()
        self._put(event, waiter)
        waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error

    def _put(self, event: Event, waiter: _Waiter) -> None:
        if self._closed:
            raise LogError("the audit log is closed")
        self._queue.put((event, waiter))

    def close(self) -> None:
        """Commit what is queued, then stop the writer."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()
            self._conn.close()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            error: LogError | None = None
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany(INSERT, [event.row() for event, _ in batch])
                self._conn.execute("COMMIT")
                self.commits += 1
                self.events += len(batch)
            except sqlite3.Error as exc:
                error = LogError(f"audit log write failed: {exc}")
                try:
                    self._conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            self._release([waiter for _, waiter in batch], error)
            if stop:
                return

    @staticmethod
    def _release(waiters: list[_Waiter], error: LogError | None) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for waiter in waiters:
            if isinstance(waiter, _SyncWaiter):
                waiter.error = error
                waiter.done.set()
            else:
                by_loop.setdefault(waiter[0], []).append(waiter[1])
        for loop, futures in by_loop.items():
            # One wake-up of the event loop per commit, not one per request.
            try:
                loop.call_soon_threadsafe(_settle, futures, error)
            except RuntimeError:
                pass  # the loop is gone (shutdown): nobody waits any more


def _settle(futures: list[asyncio.Future[None]], error: LogError | None) -> None:
    for future in futures:
        if not future.done():
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)


def read_events(path: Path, *, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Events in order (the most recent ``limit`` when given), read-only; for tests and the CLI."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise LogError(f"cannot open the audit log {path}: {exc}") from exc
    try:
        conn.row_factory = sqlite3.Row
        present = {row[1] for row in conn.execute("PRAGMA table_info(events)")}  # an older log lacks some
        sql = "SELECT id, " + ", ".join(c if c in present else f"NULL AS {c}" for c in COLUMNS) + " FROM events"
        if limit is not None:
            sql = f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT {int(limit)}) ORDER BY id"
        else:
            sql += " ORDER BY id"
        for row in conn.execute(sql):
            item = dict(row)
            if item["claims"] is not None:
                item["claims"] = json.loads(item["claims"])
            yield item
    except sqlite3.Error as exc:
        raise LogError(f"cannot read the audit log {path}: {exc}") from exc
    finally:
        conn.close()
