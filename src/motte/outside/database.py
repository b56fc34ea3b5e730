"""Where a service keeps its state: a database URL, and one small interface over SQLite and PostgreSQL.

    sqlite:///var/lib/motte/steward.db      an embedded database file (the default; one machine)
    postgresql://user@host:5432/motte        a PostgreSQL server (replicas share it); any libpq
                                             URL, e.g. ``postgresql:///motte?host=/run/postgresql``

A bare path means SQLite, so the services' path options keep working. Each service keeps its SQL
in one module and runs it through :class:`Database`: ``?`` placeholders, standard SQL both engines
take, and a schema per engine where their types differ. A write happens in :meth:`Database.write`,
which admits one writer at a time across every replica (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a
transaction-scoped advisory lock), so a read-then-write inside it sees every earlier commit and no
later one can slip between. Commits are durable before they return: SQLite in WAL mode with
``synchronous=FULL``; PostgreSQL with ``synchronous_commit`` forced on for the session.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from motte.shared.errors import MotteError

# The advisory lock every PostgreSQL writer takes (one per database: the services use separate ones).
WRITE_LOCK = 0x6D6F747465  # "motte"
Params = Sequence[Any]


class DatabaseError(MotteError):
    """The database could not be reached, read or written."""


@dataclass(frozen=True)
class DatabaseUrl:
    """A parsed database URL: ``engine`` is ``sqlite`` (with ``path``) or ``postgresql`` (with ``dsn``)."""

    engine: str
    path: Path | None = None
    dsn: str = ""

    def __str__(self) -> str:
        return f"sqlite://{self.path}" if self.path is not None else redact(self.dsn)


def parse_database_url(text: str) -> DatabaseUrl:
    """``sqlite:///PATH``, ``postgresql://...`` (or ``postgres://``), or a bare path (SQLite)."""
    if "://" not in text:
        if not text:
            raise DatabaseError("an empty database location", hint="a path, sqlite:///PATH or postgresql://...")
        return DatabaseUrl("sqlite", path=Path(text))
    scheme = text.split("://", 1)[0].lower()
    if scheme == "sqlite":
        parts = urlsplit(text)
        if parts.netloc or not parts.path or parts.query:
            raise DatabaseError(f"bad SQLite URL {text!r}", hint="sqlite:///absolute/path or sqlite:///./relative")
        path = parts.path[1:] if parts.path.startswith("/./") else parts.path
        return DatabaseUrl("sqlite", path=Path(path))
    if scheme in ("postgresql", "postgres"):
        return DatabaseUrl("postgresql", dsn=text)
    raise DatabaseError(f"unknown database URL scheme {scheme!r}", hint="sqlite:///PATH or postgresql://...")


def as_database_url(location: Path | str | DatabaseUrl) -> DatabaseUrl:
    """A URL as given, or a path (a SQLite file) made one."""
    if isinstance(location, DatabaseUrl):
        return location
    if isinstance(location, Path):
        return DatabaseUrl("sqlite", path=location)
    return parse_database_url(location)


def redact(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Database(Protocol):
    """What a service's SQL runs on. Placeholders are ``?``."""

    engine: str

    def execute(self, sql: str, params: Params = ()) -> Cursor: ...
    def executemany(self, sql: str, rows: Sequence[Params]) -> None: ...
    def write(self) -> contextlib.AbstractContextManager[Database]:
        """A transaction as the one writer: committed on exit, rolled back on an exception."""
        ...
    def close(self) -> None: ...


class SqliteDatabase:
    engine = "sqlite"

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        try:
            if read_only:
                self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            else:
                self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
                mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode != "wal":
                    raise DatabaseError(f"database {path}: cannot use WAL mode (got {mode!r})")
                self._conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot open the database {path}: {exc}") from exc

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        try:
            return self._conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise DatabaseError(f"database {self.path}: {exc}") from exc

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        try:
            self._conn.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise DatabaseError(f"database {self.path}: {exc}") from exc

    def write(self) -> contextlib.AbstractContextManager[Database]:
        return _transaction(self, "BEGIN IMMEDIATE")

    def close(self) -> None:
        self._conn.close()


class PostgresDatabase:
    """One psycopg connection, used by one thread at a time (psycopg serialises calls on it)."""

    engine = "postgresql"

    def __init__(self, dsn: str, *, connect_timeout: float = 10.0) -> None:
        import psycopg

        self._psycopg = psycopg
        self.where = redact(dsn)
        self._lock = threading.RLock()
        try:
            self._conn = psycopg.connect(dsn, autocommit=True, connect_timeout=max(1, int(connect_timeout)))
            self._conn.execute("SET synchronous_commit = on")
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot connect to the database {self.where}: {_first_line(exc)}",
                                hint="check the DSN and that the server is up") from None

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("%", "%%").replace("?", "%s")

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        try:
            with self._lock:
                if not params:  # (no placeholders to convert, and psycopg would not unescape %%)
                    return self._conn.execute(sql.encode())
                return self._conn.execute(self._sql(sql), params)
        except self._psycopg.Error as exc:
            raise DatabaseError(f"database {self.where}: {_first_line(exc)}") from exc

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        try:
            with self._lock, self._conn.cursor() as cursor:
                cursor.executemany(self._sql(sql), rows)
        except self._psycopg.Error as exc:
            raise DatabaseError(f"database {self.where}: {_first_line(exc)}") from exc

    @contextlib.contextmanager
    def write(self) -> Iterator[Database]:
        with self._lock, _transaction(self, "BEGIN") as db:  # (no other thread's statement joins it)
            db.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK,))
            yield db

    def close(self) -> None:
        self._conn.close()


@contextlib.contextmanager
def _transaction(db: Database, begin: str) -> Iterator[Database]:
    db.execute(begin)
    try:
        yield db
    except BaseException:
        with contextlib.suppress(DatabaseError):
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def open_database(url: DatabaseUrl, *, read_only: bool = False) -> Database:
    """Connect; a SQLite file must exist already when ``read_only``."""
    if url.path is not None:
        return SqliteDatabase(url.path, read_only=read_only)
    return PostgresDatabase(url.dsn)
