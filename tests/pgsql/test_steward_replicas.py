"""Two Steward replicas (two processes) behind one address: both listen on the same port with
SO_REUSEPORT and share one audit log, on PostgreSQL (as replicas anywhere do) or in one SQLite file
(replicas on one machine may). The kernel spreads the clients' connections over both, and the log
(which records the replica that decided) shows both issuing. One is killed with SIGKILL under
load; the clients it held connect again to the same address, reach the survivor, and carry on;
every certificate either replica acknowledged is in the log."""

from __future__ import annotations

import http.client
import itertools
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography import x509

from motte.keep.csr import certificate_request
from motte.keep.evidence import NoEvidence
from motte.shared.steward_protocol import decode_chain
from motte.steward.issuer import new_ca, write_ca
from motte.steward.log import read_events
from tests.steward.serve_process import serve_process

CLIENTS = 16
BEFORE_KILL = 200  # acknowledged issuances before the kill
AFTER_KILL = 100  # ... and after it, all by the survivor
RETRY_PAUSE = 0.01  # seconds a client waits before it connects again


@dataclass
class Load:
    """What the clients saw. A connection is numbered when opened; each acknowledgment names the
    connection it came on, so the log's replica for its serial says where that connection went."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acknowledged: list[tuple[int, int, str, float]] = field(default_factory=list)  # client, connection, serial, when
    opened: dict[int, float] = field(default_factory=dict)  # connection -> when it was opened
    broken: dict[int, str] = field(default_factory=dict)  # connection -> the error it failed with
    in_flight: dict[int, int] = field(default_factory=dict)  # client -> the connection its request is on
    failures: list[str] = field(default_factory=list)
    ids: itertools.count[int] = field(default_factory=itertools.count)

    def acknowledged_after(self, moment: float) -> list[tuple[int, int, str, float]]:
        with self.lock:
            return [ack for ack in self.acknowledged if ack[3] > moment]


def run_client(i: int, port: int, csr: bytes, load: Load, stop: threading.Event) -> None:
    """POST the CSR over and over on a keep-alive connection to the one address; when the
    connection fails (its replica was killed), connect again, as a real client would."""
    conn: http.client.HTTPConnection | None = None
    number = -1
    try:
        while not stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                with load.lock:
                    number = next(load.ids)
                    load.opened[number] = time.monotonic()
            try:
                with load.lock:
                    load.in_flight[i] = number
                conn.request("POST", "/", body=csr, headers={"Content-Type": "application/pkcs10"})
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                # Refused, reset or cut short: what was in flight was never acknowledged.
                conn.close()
                conn = None
                with load.lock:
                    load.broken[number] = repr(exc)
                time.sleep(RETRY_PAUSE)
                continue
            finally:
                with load.lock:
                    load.in_flight.pop(i, None)
            if resp.status != 200:
                load.failures.append(f"client {i}: HTTP {resp.status}: {body[:300]!r}")
                return
            serial = x509.load_der_x509_certificate(decode_chain(body)[1]).serial_number
            with load.lock:
                load.acknowledged.append((i, number, f"{serial:x}", time.monotonic()))
    except Exception:  # anything at all is a failure, reported by the test's thread
        load.failures.append(f"client {i}: {traceback.format_exc()}")
    finally:
        if conn is not None:
            conn.close()


def wait_for(condition: Callable[[], bool], deadline: float) -> None:
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.mark.parametrize("engine", ["postgresql", "sqlite"])
def test_two_replicas_behind_one_address_lose_no_acknowledged_issuance_when_one_is_killed(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    dsn = request.getfixturevalue("postgres_dsn")() if engine == "postgresql" else str(tmp_path / "steward.db")
    key_path, cert_path = write_ca(tmp_path / "ca", *new_ca("replica test CA", now=datetime.now(UTC)))
    (tmp_path / "policy.toml").write_text("allow_unattested = true\n")
    args = ("--ca-key", str(key_path), "--ca-cert", str(cert_path), "--policy", str(tmp_path / "policy.toml"),
            "--workers", "0", "--log", dsn, "--reuse-port")
    csrs = [certificate_request(NoEvidence()).csr for _ in range(CLIENTS)]
    load, stop = Load(), threading.Event()

    with serve_process(*args) as first:
        port = urlsplit(first.url).port
        assert port is not None
        with serve_process(*args, "--port", str(port)) as second:
            assert urlsplit(second.url).port == port, "the second replica listens on the first one's port"
            threads = [threading.Thread(target=run_client, args=(i, port, csrs[i], load, stop), daemon=True)
                       for i in range(CLIENTS)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 90
            wait_for(lambda: len(load.acknowledged) >= BEFORE_KILL, deadline)
            with load.lock:
                in_flight_at_kill = set(load.in_flight.values())
                acknowledged_at_kill = len(load.acknowledged)
            first.stop(signal.SIGKILL)
            reaped = time.monotonic()  # from here on only the survivor listens on the port

            def carried_on() -> bool:
                after = load.acknowledged_after(reaped)
                return len(after) >= AFTER_KILL and {client for client, *_ in after} == set(range(CLIENTS))

            wait_for(carried_on, deadline)
            stop.set()
            for t in threads:
                t.join(15)
            assert second.proc.poll() is None, "the surviving replica stopped"

    assert load.failures == [], "\n".join(load.failures)
    assert not any(t.is_alive() for t in threads), "a client did not stop"
    assert acknowledged_at_kill >= BEFORE_KILL, "the load never reached the kill point"
    assert carried_on(), "every client carries on through the same address, served by the survivor"

    # The guarantee: every acknowledged certificate is in the shared log, once.
    issued = {e["serial"]: e["replica"] for e in read_events(dsn) if e["verdict"] == "issued"}
    assert len(issued) == sum(1 for e in read_events(dsn) if e["verdict"] == "issued"), "a serial logged twice"
    missing = {serial for _, _, serial, _ in load.acknowledged} - set(issued)
    assert not missing, f"{len(missing)} acknowledged certificates are not in the shared log"

    # Which replica each connection reached, by the log's record of who issued what came on it.
    pid_of = {replica: int(replica.rsplit(":", 1)[1]) for replica in set(issued.values())}
    assert set(pid_of.values()) == {first.proc.pid, second.proc.pid}, pid_of
    served_by: dict[int, set[int]] = {}
    for _, number, serial, _ in load.acknowledged:
        served_by.setdefault(number, set()).add(pid_of[issued[serial]])
    assert all(len(pids) == 1 for pids in served_by.values()), "a connection reaches one replica"
    reached = {number: pids.pop() for number, pids in served_by.items()}

    before = [reached[number] for _, number, _, _ in load.acknowledged[:acknowledged_at_kill]]
    counts = {pid: before.count(pid) for pid in (first.proc.pid, second.proc.pid)}
    assert min(counts.values()) > 0, f"both replicas issue, through the one address, before the kill: {counts}"
    assert any(reached.get(number) == first.proc.pid for number in in_flight_at_kill), \
        "no request was in flight at the replica that was killed"
    assert {reached[number] for _, number, _, _ in load.acknowledged_after(reaped)} == {second.proc.pid}
    for number, error in load.broken.items():
        # Only connections to the killed replica fail: those it held, and those made while it died.
        assert reached.get(number, first.proc.pid) == first.proc.pid, f"the survivor failed: {error}"
        assert number in reached or load.opened[number] < reaped, f"the survivor refused a connection: {error}"
    assert any(reached.get(number) == first.proc.pid for number in load.broken), "the kill broke no connection"

