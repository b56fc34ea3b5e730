"""The Steward over real HTTP: statuses, the [CA, issued] answer, bad input and slow clients, and
that every POST lands in the audit log (and the service keeps serving)."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography import x509

from motte.keep.csr import accept_response, certificate_request
from motte.keep.evidence import NoEvidence
from motte.shared.binding import KeepClaims
from motte.shared.steward_certs import read_attestation
from motte.shared.steward_protocol import decode_chain
from motte.steward.issuer import CertificateAuthority
from motte.steward.log import read_events
from motte.steward.policy import StewardPolicy, load_steward_policy
from tests.steward.conftest import StewardHandle

Start = Callable[..., StewardHandle]


def events(handle: StewardHandle) -> list[dict[str, object]]:
    return list(read_events(handle.log_path))


def raw_exchange(handle: StewardHandle, data: bytes, *, pause_after: float = 0.0, timeout: float = 10) -> bytes:
    """Send raw bytes (optionally then stall) and return everything the server answers."""
    with socket.create_connection((handle.host, handle.port), timeout=timeout) as sock:
        sock.sendall(data)
        if pause_after:
            time.sleep(pause_after)
        chunks = []
        while chunk := sock.recv(65536):  # the server closes after a 408 or 413
            chunks.append(chunk)
        return b"".join(chunks)


def test_health_and_issuance(steward: Start, ca: CertificateAuthority) -> None:
    handle = steward()
    status, body = handle.get()
    assert status == 200 and json.loads(body)["status"] == "ok"
    request = certificate_request(NoEvidence())
    status, headers, body = handle.post(request.csr)
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    ca_der, _ = decode_chain(body)
    assert ca_der == ca.cert_der
    chain = accept_response(request, status, body)
    assert read_attestation(chain.leaf).technology == "none"
    (event,) = events(handle)
    assert event["verdict"] == "issued" and event["status"] == 200
    assert event["serial"] == f"{chain.leaf.serial_number:x}"
    assert x509.load_der_x509_certificate(event["certificate"]) == chain.leaf  # type: ignore[arg-type]


def test_bad_requests_get_their_status_a_log_entry_and_the_service_keeps_serving(steward: Start) -> None:
    handle = steward(StewardPolicy())  # strict: unattested keeps refused
    csr = certificate_request(NoEvidence()).csr
    tampered = bytearray(csr)
    tampered[-10] ^= 1
    cases = [
        (b"\x30\x03garbage", "application/pkcs10", 400, "malformed_csr"),
        (bytes(tampered), "application/pkcs10", 400, "csr_signature"),
        (csr, "application/pkcs10", 401, "unattested_refused"),
        (csr, "application/octet-stream", 415, "content_type"),
        (b"\x30" * (70 * 1024), "application/pkcs10", 413, "body_too_large"),
    ]
    for body, content_type, status, reason in cases:
        got, headers, text = handle.post(body, content_type)
        assert (got, headers.get("motte-reason")) == (status, reason), text
        assert text.decode().startswith(f"{reason}: ")
    logged = events(handle)
    assert [(e["status"], e["reason"], e["verdict"]) for e in logged] == [
        (status, reason, "refused") for _, _, status, reason in cases
    ]
    assert logged[1]["key_sha256"] is not None  # the key of a refused CSR is known when readable
    assert handle.get()[0] == 200


def test_an_oversized_chunked_body_is_cut_off_at_the_limit(steward: Start) -> None:
    handle = steward(max_body=4096)
    chunk = b"\x30" * 1024
    body = b"".join(b"400\r\n" + chunk + b"\r\n" for _ in range(8)) + b"0\r\n\r\n"
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/pkcs10\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = raw_exchange(handle, head + body)
    assert answer.startswith(b"HTTP/1.1 413")
    assert events(handle)[-1]["reason"] == "body_too_large"


def test_a_slow_client_gets_408_and_does_not_block_others(steward: Start) -> None:
    handle = steward(request_timeout=0.5)
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/pkcs10\r\nContent-Length: 500\r\n\r\n"
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(raw_exchange, handle, head + b"\x30\x82", pause_after=0.1)
        status, _, _ = handle.post(certificate_request(NoEvidence()).csr)  # served meanwhile
        assert status == 200
        answer = slow.result(timeout=10)
    assert answer.startswith(b"HTTP/1.1 408")
    assert sorted(e["status"] for e in events(handle)) == [200, 408]


@pytest.mark.parametrize("sent", [b"", b"POST / HTTP/1.1\r\nHost: x\r\n"], ids=["nothing", "part-of-the-head"])
def test_a_client_that_does_not_send_a_whole_request_head_is_cut_off(steward: Start, sent: bytes) -> None:
    # Slowloris: connections that never finish a request must not pile up (each holds a file
    # descriptor). The head must come within the request timeout of connecting.
    handle = steward(request_timeout=0.5)
    started = time.monotonic()
    answer = raw_exchange(handle, sent, timeout=30)
    assert time.monotonic() - started < 10
    assert answer == b""  # closed without an answer: there was no request to answer
    status, _, _ = handle.post(certificate_request(NoEvidence()).csr)  # others are served as before
    assert status == 200


def test_concurrent_requests_are_all_logged_in_group_commits(steward: Start) -> None:
    handle = steward()
    csrs = [certificate_request(NoEvidence()).csr for _ in range(8)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: handle.post(csrs[i % 8]), range(64)))
    assert {status for status, _, _ in results} == {200}
    serials = {f"{x509.load_der_x509_certificate(decode_chain(body)[1]).serial_number:x}" for _, _, body in results}
    assert len(serials) == 64
    assert {e["serial"] for e in events(handle)} == serials


def test_no_certificate_leaves_without_a_log_entry(steward: Start, ca: CertificateAuthority) -> None:
    handle = steward()
    assert handle.post(certificate_request(NoEvidence()).csr)[0] == 200
    # Make the log unwritable underneath the running service: the next answer must not be a certificate.
    import sqlite3

    with sqlite3.connect(handle.log_path) as conn:
        conn.execute("CREATE TRIGGER deny BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
    status, headers, body = handle.post(certificate_request(NoEvidence()).csr)
    assert (status, headers["motte-reason"]) == (503, "log_unavailable") and b"disk on fire" in body
    assert b"BEGIN" not in body and ca.cert_der not in body


def test_worker_processes_issue_and_a_dead_worker_is_replaced(steward: Start) -> None:
    handle = steward(workers=1)
    assert handle.post(certificate_request(NoEvidence()).csr)[0] == 200
    pool = handle.service._pool
    assert pool is not None
    for pid in list(pool._processes):  # type: ignore[attr-defined]
        os.kill(pid, signal.SIGKILL)
    status, _, body = handle.post(certificate_request(NoEvidence()).csr)
    assert status == 200, body
    assert handle.service._pool is not pool
    assert [e["status"] for e in events(handle)] == [200, 200]


def test_the_log_records_the_workload_and_launch_of_each_issuance_and_refusal(steward: Start) -> None:
    claims_a = KeepClaims(b"\xaa" * 32, b"\x0a" * 32)
    claims_b = KeepClaims(b"\xbb" * 32, b"\x0b" * 32)
    policy = load_steward_policy(f'allow_unattested = true\nworkloads = ["{claims_a.workload_sha256.hex()}"]\n')
    handle = steward(policy, workers=1)  # the claims cross the worker process boundary and back
    request = certificate_request(NoEvidence(), claims=claims_a)
    status, _, body = handle.post(request.csr)
    assert status == 200 and read_attestation(accept_response(request, status, body).leaf).keep_claims == claims_a
    status, headers, body = handle.post(certificate_request(NoEvidence(), claims=claims_b).csr)
    assert (status, headers["motte-reason"]) == (400, "workload_not_allowed")
    expected = f"workload_not_allowed: workload digest {'bb' * 32} is not in this Steward's policy's workloads\n"
    assert body.decode() == expected
    assert handle.post(certificate_request(NoEvidence()).csr)[0] == 400  # no claims: nothing to log for them
    assert [(e["verdict"], e["workload_sha256"], e["launch_sha256"]) for e in events(handle)] == [
        ("issued", "aa" * 32, "0a" * 32),
        ("refused", "bb" * 32, "0b" * 32),
        ("refused", None, None),
    ]
