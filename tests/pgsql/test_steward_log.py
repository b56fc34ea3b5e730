"""The Steward's audit log on PostgreSQL: the same contract as on SQLite, shared by replicas."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from motte.steward.log import AuditLog, Event, LogError, read_events


def event(i: int) -> Event:
    return Event(at="2025-01-01T00:00:00+00:00", verdict="issued", status=200, serial=f"{i:x}",
                 claims={"n": i}, certificate=b"\x30\x00" + bytes([i % 256]), technology="none")


def test_append_then_read_back(postgres_dsn: Callable[[], str]) -> None:
    dsn = postgres_dsn()
    log = AuditLog(dsn)
    log.append_sync(event(1))
    log.append_sync(Event(at="2025-01-01T00:00:01+00:00", verdict="refused", status=403, reason="policy"))
    log.close()
    rows = list(read_events(dsn))
    assert [(r["verdict"], r["serial"], r["claims"], r["certificate"]) for r in rows] == [
        ("issued", "1", {"n": 1}, b"\x30\x00\x01"),
        ("refused", None, None, None),
    ]
    assert [r["reason"] for r in read_events(dsn, limit=1)] == ["policy"]


def test_two_writers_share_one_log_and_a_serial_stays_unique(postgres_dsn: Callable[[], str]) -> None:
    dsn = postgres_dsn()
    logs = [AuditLog(dsn), AuditLog(dsn)]  # two replicas: two connections, two writer threads

    def write(log: AuditLog, start: int) -> None:
        for i in range(start, start + 200):
            log.append_sync(event(i))

    threads = [threading.Thread(target=write, args=(log, n * 1000)) for n, log in enumerate(logs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    with pytest.raises(LogError, match="unique"):
        logs[1].append_sync(event(5))  # written by the first replica already
    for log in logs:
        log.close()
    serials = [r["serial"] for r in read_events(dsn)]
    assert sorted(serials) == sorted(f"{i:x}" for n in (0, 1000) for i in range(n, n + 200))


def test_an_unreachable_server_is_one_clear_error(postgres_dsn: Callable[[], str]) -> None:
    with pytest.raises(LogError, match=r"cannot open the audit log postgresql://.*no-such-dir"):
        AuditLog("postgresql:///x?host=/no-such-dir&user=motte")


def test_a_steward_upgraded_in_place_extends_an_older_shared_log(postgres_dsn: Callable[[], str]) -> None:
    import psycopg

    dsn = postgres_dsn()
    log = AuditLog(dsn)
    log.close()
    with psycopg.connect(dsn, autocommit=True) as conn:  # the log as a Steward of schema version 2 left it
        conn.execute("ALTER TABLE events DROP COLUMN replica")
        conn.execute("UPDATE steward_schema SET version = 2")
        conn.execute("INSERT INTO events (at, verdict, status, serial) VALUES ('2024-01-01T00:00:00+00:00', "
                     "'issued', 200, '1')")
    (old,) = read_events(dsn)  # read before any upgrade: the new column reads as NULL
    assert (old["serial"], old["replica"]) == ("1", None)
    log = AuditLog(dsn)
    log.append_sync(Event(at="2025-01-01T00:00:00+00:00", verdict="issued", status=200, serial="2",
                          replica="steward-0:7"))
    log.close()
    assert [(e["serial"], e["replica"]) for e in read_events(dsn)] == [("1", None), ("2", "steward-0:7")]
