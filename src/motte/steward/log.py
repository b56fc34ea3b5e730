"""The Steward's audit log: every issuance and every refusal, durable before the answer leaves.

SQLite in WAL mode with ``synchronous=FULL`` (one Steward, or replicas on one machine, which its
locks let take turns), or PostgreSQL with synchronous commit (replicas anywhere sharing one log): a
transaction that has committed survives a crash or a ``kill -9`` of the Steward and a power cut of
the machine. The service appends an event and waits for its commit before it sends the response,
so no client ever holds a certificate the log does not know about. Each event names the replica
that decided it.

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
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from motte.outside.database import (
    Database,
    DatabaseError,
    DatabaseUrl,
    as_database_url,
    open_database,
)
from motte.shared.errors import MotteError

Location = Path | str | DatabaseUrl

SCHEMA_VERSION = 3
# One table either way; the engines differ only in how a row gets its id and how bytes are stored.
EVENTS_TABLE = """
CREATE TABLE IF NOT EXISTS events (
    id              {id},
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
    certificate     {bytes},            -- DER, issued certificates only
    peer            TEXT,
    workload_sha256 TEXT,               -- the digests the CSR's binding extensions carried (hex)
    launch_sha256   TEXT,
    replica         TEXT                -- which Steward process decided: hostname:pid
)"""
SCHEMA = {
    "sqlite": (EVENTS_TABLE.format(id="INTEGER PRIMARY KEY", bytes="BLOB"),
               "CREATE INDEX IF NOT EXISTS events_evidence ON events (evidence_sha256)"),
    # Replicas append concurrently: the id orders events by commit well enough for an audit trail.
    "postgresql": (EVENTS_TABLE.format(id="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", bytes="BYTEA"),
                   "CREATE INDEX IF NOT EXISTS events_evidence ON events (evidence_sha256)",
                   "CREATE TABLE IF NOT EXISTS steward_schema (version INTEGER NOT NULL)"),
}
# What each schema version adds to the one before (a Steward upgraded in place opens an old log).
MIGRATIONS = {
    2: ("ALTER TABLE events ADD COLUMN workload_sha256 TEXT", "ALTER TABLE events ADD COLUMN launch_sha256 TEXT"),
    3: ("ALTER TABLE events ADD COLUMN replica TEXT",),
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
    "replica",
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
    replica: str | None = None

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


def connect(location: Location) -> Database:
    """Open the log for writing, creating its table (or bringing an older one up to date)."""
    url = as_database_url(location)
    if url.path is not None:
        make_private(url.path)
    try:
        db = open_database(url)
    except DatabaseError as exc:
        raise LogError(f"cannot open the audit log {url}: {exc.message}") from exc
    try:
        with db.write():
            version = _schema_version(db)
            if version > SCHEMA_VERSION:
                raise LogError(f"audit log {url} has schema version {version}; this Steward writes {SCHEMA_VERSION}")
            if version == 0:  # a new log
                for statement in SCHEMA[db.engine]:
                    db.execute(statement)
                _set_schema_version(db)
            elif version < SCHEMA_VERSION:
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[step]:
                        db.execute(statement)
                _set_schema_version(db)
    except (DatabaseError, LogError) as exc:
        db.close()
        if isinstance(exc, LogError):
            raise
        raise LogError(f"cannot open the audit log {url}: {exc.message}") from exc
    return db


def _schema_version(db: Database) -> int:
    if db.engine == "sqlite":
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    if db.execute("SELECT to_regclass('steward_schema')").fetchone()[0] is None:
        return 0
    row = db.execute("SELECT version FROM steward_schema").fetchone()
    return 0 if row is None else int(row[0])


def _set_schema_version(db: Database) -> None:
    if db.engine == "sqlite":
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    else:
        db.execute("DELETE FROM steward_schema")
        db.execute("INSERT INTO steward_schema VALUES (?)", (SCHEMA_VERSION,))


class _SyncWaiter:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: LogError | None = None


_Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"] | _SyncWaiter


class AuditLog:
    """Append-only event log with a group-committing writer thread."""

    def __init__(self, location: Location) -> None:
        self.location = as_database_url(location)
        self._conn = connect(self.location)
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
                with self._conn.write() as db:
                    db.executemany(INSERT, [event.row() for event, _ in batch])
                self.commits += 1
                self.events += len(batch)
            except DatabaseError as exc:
                error = LogError(f"audit log write failed: {exc.message}")
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


def read_events(location: Location, *, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Events in order (the most recent ``limit`` when given), read-only; for tests and the CLI."""
    url = as_database_url(location)
    try:
        db = open_database(url, read_only=True)
    except DatabaseError as exc:
        raise LogError(f"cannot open the audit log {url}: {exc.message}") from exc
    try:
        # An older log (one no Steward of this version has opened yet) lacks some columns.
        if db.engine == "sqlite":
            present = {row[1] for row in db.execute("PRAGMA table_info(events)").fetchall()}
        else:
            present = {row[0] for row in db.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'events' "
                "AND table_schema = current_schema()").fetchall()}
        sql = "SELECT id, " + ", ".join(c if c in present else f"NULL AS {c}" for c in COLUMNS) + " FROM events"
        if limit is not None:
            sql = f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT {int(limit)}) AS recent ORDER BY id"
        else:
            sql += " ORDER BY id"
        names = ("id", *COLUMNS)
        for row in db.execute(sql).fetchall():
            item = dict(zip(names, row, strict=True))
            if item["claims"] is not None:
                item["claims"] = json.loads(item["claims"])
            if item["certificate"] is not None:
                item["certificate"] = bytes(item["certificate"])
            yield item
    except DatabaseError as exc:
        raise LogError(f"cannot read the audit log {url}: {exc.message}") from exc
    finally:
        db.close()
