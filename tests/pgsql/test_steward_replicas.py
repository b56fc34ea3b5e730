"""Two Steward replicas (two processes) share one audit log on PostgreSQL: clients alternate
between them, one is killed with SIGKILL under load, its clients move to the other, and every
certificate either replica acknowledged is in the log."""

from __future__ import annotations

import http.client
import signal
import threading
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

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


def test_two_replicas_lose_no_acknowledged_issuance_when_one_is_killed(
    tmp_path: Path, postgres_dsn: Callable[[], str]
) -> None:
    dsn = postgres_dsn()
    key_path, cert_path = write_ca(tmp_path / "ca", *new_ca("replica test CA", now=datetime.now(UTC)))
    (tmp_path / "policy.toml").write_text("allow_unattested = true\n")
    args = ("--ca-key", str(key_path), "--ca-cert", str(cert_path), "--policy", str(tmp_path / "policy.toml"),
            "--workers", "0", "--log", dsn)
    csrs = [certificate_request(NoEvidence()).csr for _ in range(CLIENTS)]
    acknowledged: list[tuple[int, str]] = []  # (replica, serial)
    lock = threading.Lock()
    stop = threading.Event()
    busy = [0, 0]
    failures: list[str] = []

    with serve_process(*args) as first, serve_process(*args) as second:
        replicas = [urlsplit(first.url), urlsplit(second.url)]

        def client(i: int) -> None:
            replica = i % 2
            conn = http.client.HTTPConnection(replicas[replica].hostname or "", replicas[replica].port, timeout=10)
            try:
                while not stop.is_set():
                    try:
                        with lock:
                            busy[replica] += 1
                        conn.request("POST", "/", body=csrs[i], headers={"Content-Type": "application/pkcs10"})
                        resp = conn.getresponse()
                        body = resp.read()
                    except (OSError, http.client.HTTPException):
                        # The replica is gone: what was in flight was never acknowledged. Go to the other.
                        conn.close()
                        if replica == 1:
                            failures.append(f"client {i}: the surviving replica failed")
                            return
                        replica = 1
                        conn = http.client.HTTPConnection(replicas[1].hostname or "", replicas[1].port, timeout=10)
                        continue
                    finally:
                        with lock:
                            busy[replica] -= 1
                    if resp.status != 200:
                        failures.append(f"client {i}: HTTP {resp.status}: {body[:300]!r}")
                        return
                    serial = x509.load_der_x509_certificate(decode_chain(body)[1]).serial_number
                    with lock:
                        acknowledged.append((replica, f"{serial:x}"))
            except Exception:  # anything at all is a failure, reported by the test's thread
                failures.append(f"client {i}: {traceback.format_exc()}")
            finally:
                conn.close()

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 90
        while len(acknowledged) < BEFORE_KILL and time.monotonic() < deadline:
            time.sleep(0.01)
        with lock:
            in_flight_at_kill = busy[0]
            acknowledged_at_kill = len(acknowledged)
        first.stop(signal.SIGKILL)
        while len(acknowledged) < acknowledged_at_kill + AFTER_KILL and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        for t in threads:
            t.join(15)
        assert second.proc.poll() is None, "the surviving replica stopped"

    assert failures == [], "\n".join(failures)
    assert not any(t.is_alive() for t in threads), "a client did not stop"
    by_replica = [sum(1 for r, _ in acknowledged[:acknowledged_at_kill] if r == n) for n in (0, 1)]
    assert min(by_replica) > 0, f"both replicas must issue concurrently before the kill: {by_replica}"
    assert acknowledged_at_kill >= BEFORE_KILL, "the load never reached the kill point"
    assert len(acknowledged) >= acknowledged_at_kill + AFTER_KILL, "the survivor did not carry on"
    assert in_flight_at_kill > 0, "no request was in flight at the replica that was killed"
    logged = [e["serial"] for e in read_events(dsn) if e["verdict"] == "issued"]
    assert len(logged) == len(set(logged))
    missing = {serial for _, serial in acknowledged} - set(logged)
    assert not missing, f"{len(missing)} acknowledged certificates are not in the shared log"
