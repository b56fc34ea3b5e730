"""The audit log: WAL + synchronous=FULL, group commits, waiters released only after commit."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from motte.steward.log import SCHEMA_VERSION, AuditLog, Event, LogError, connect, read_events


def event(i: int, verdict: str = "issued") -> Event:
    return Event(
        at=f"2025-01-01T00:00:{i % 60:02d}+00:00",
        verdict=verdict,
        status=200 if verdict == "issued" else 400,
        serial=f"{i:x}" if verdict == "issued" else None,
        claims={"n": i},
        technology="none",
    )


def test_the_log_is_wal_with_full_sync(tmp_path: Path) -> None:
    conn = connect(tmp_path / "log.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    conn.close()


def test_append_then_read_back(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "log.db")
    log.append_sync(event(1))
    log.append_sync(event(2, "refused"))
    log.close()
    rows = list(read_events(tmp_path / "log.db"))
    assert [(r["verdict"], r["serial"], r["claims"]) for r in rows] == [
        ("issued", "1", {"n": 1}),
        ("refused", None, {"n": 2}),
    ]
    assert [r["serial"] for r in read_events(tmp_path / "log.db", limit=1)] == [None]


def test_concurrent_appends_share_commits_and_each_returns_after_its_commit(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "log.db")
    committed_before_return: list[bool] = []
    reader = sqlite3.connect(tmp_path / "log.db", check_same_thread=False)
    lock = threading.Lock()

    async def one(i: int) -> None:
        await log.append(event(i))
        with lock:  # visible to another connection the moment append returns: committed
            row = reader.execute("SELECT 1 FROM events WHERE serial = ?", (f"{i:x}",)).fetchone()
        committed_before_return.append(row is not None)

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(300)))

    asyncio.run(main())
    log.close()
    reader.close()
    assert committed_before_return == [True] * 300
    assert log.events == 300 and log.commits < 300  # grouped


def test_a_failed_commit_fails_its_waiters_and_a_closed_log_refuses(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "log.db")
    log.append_sync(event(1))
    with pytest.raises(LogError, match="UNIQUE"):
        log.append_sync(event(1))  # the same serial twice
    log.close()
    with pytest.raises(LogError, match="closed"):
        log.append_sync(event(3))
    assert len(list(read_events(tmp_path / "log.db"))) == 1


def test_a_log_of_another_schema_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "log.db") as conn:
        conn.execute("PRAGMA user_version=7")
    with pytest.raises(LogError, match="schema version 7"):
        connect(tmp_path / "log.db")


V1_SCHEMA = """
CREATE TABLE events (
    id INTEGER PRIMARY KEY, at TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('issued', 'refused')), status INTEGER NOT NULL,
    reason TEXT, message TEXT, technology TEXT, evidence_sha256 TEXT, csr_sha256 TEXT, key_sha256 TEXT,
    serial TEXT UNIQUE, not_after TEXT, claims TEXT, certificate BLOB, peer TEXT
);
CREATE INDEX events_evidence ON events (evidence_sha256);
INSERT INTO events (at, verdict, status, serial, technology)
    VALUES ('2024-01-01T00:00:00+00:00', 'issued', 200, '1', 'snp');
PRAGMA user_version=1;
"""


def test_the_log_records_the_workload_and_launch_digests(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "log.db")
    log.append_sync(Event(at="2025-01-01T00:00:00+00:00", verdict="refused", status=400,
                          workload_sha256="aa" * 32, launch_sha256="bb" * 32))
    log.close()
    (row,) = read_events(tmp_path / "log.db")
    assert (row["workload_sha256"], row["launch_sha256"]) == ("aa" * 32, "bb" * 32)


def test_a_steward_upgraded_in_place_opens_and_extends_an_old_log(tmp_path: Path) -> None:
    path = tmp_path / "steward.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(V1_SCHEMA)
    (old,) = read_events(path)  # read before any upgrade: the new columns read as NULL
    assert (old["serial"], old["workload_sha256"], old["launch_sha256"], old["replica"]) == ("1", None, None, None)
    log = AuditLog(path)
    log.append_sync(Event(at="2025-01-01T00:00:00+00:00", verdict="issued", status=200, serial="2",
                          workload_sha256="aa" * 32, launch_sha256="bb" * 32))
    log.close()
    assert [(e["serial"], e["workload_sha256"]) for e in read_events(path)] == [("1", None), ("2", "aa" * 32)]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    AuditLog(path).close()  # and opens again, already current
