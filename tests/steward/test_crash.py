"""Durability: a Steward killed with SIGKILL under load has logged every certificate it handed out."""

from __future__ import annotations

import http.client
import signal
import threading
import time
import traceback
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
ENOUGH = 200  # acknowledged issuances before the kill


def test_sigkill_under_load_loses_no_acknowledged_issuance(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    key_path, cert_path = write_ca(tmp_path / "ca", *new_ca("crash test CA", now=datetime.now(UTC)))
    (tmp_path / "policy.toml").write_text("allow_unattested = true\n")
    db = tmp_path / "steward.db"
    csrs = [certificate_request(NoEvidence()).csr for _ in range(CLIENTS)]
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    in_flight_at_kill = []
    failures: list[str] = []

    with serve_process(
        "--ca-key",
        str(key_path),
        "--ca-cert",
        str(cert_path),
        "--policy",
        str(tmp_path / "policy.toml"),
        "--log",
        str(db),
    ) as server:
        parts = urlsplit(server.url)
        busy = [0]

        def client(i: int) -> None:
            # An assertion here would only warn (it is not the test's thread): failures are
            # collected, and the test asserts on them once the clients are done.
            conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
            try:
                while not stop.is_set():
                    try:
                        with lock:
                            busy[0] += 1
                        conn.request("POST", "/", body=csrs[i], headers={"Content-Type": "application/pkcs10"})
                        resp = conn.getresponse()
                        body = resp.read()
                    except (OSError, http.client.HTTPException):
                        return  # the server is gone: whatever was in flight was never acknowledged
                    finally:
                        with lock:
                            busy[0] -= 1
                    if resp.status != 200:
                        failures.append(f"client {i}: HTTP {resp.status}: {body[:300]!r}")
                        return
                    serial = x509.load_der_x509_certificate(decode_chain(body)[1]).serial_number
                    with lock:
                        acknowledged.append(f"{serial:x}")
            except Exception:  # anything at all is a failure, reported by the test's thread
                failures.append(f"client {i}: {traceback.format_exc()}")
            finally:
                conn.close()

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < ENOUGH and time.monotonic() < deadline:
            time.sleep(0.01)
        with lock:
            in_flight_at_kill.append(busy[0])
        server.stop(signal.SIGKILL)
        stop.set()
        for t in threads:
            t.join(15)

    assert failures == [], "\n".join(failures)
    assert not any(t.is_alive() for t in threads), "a client did not stop"
    assert len(acknowledged) >= ENOUGH, "the load never reached the kill point"
    assert in_flight_at_kill[0] > 0, "no request was in flight when the Steward was killed"
    logged = {e["serial"] for e in read_events(db) if e["verdict"] == "issued"}
    missing = set(acknowledged) - logged
    assert not missing, f"{len(missing)} acknowledged certificates are not in the log"
