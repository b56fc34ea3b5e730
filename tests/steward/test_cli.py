"""``motte steward``: the one-command development Steward, a TLS Steward, the log and CA commands,
and the mistakes that must be refused before anything listens."""

from __future__ import annotations

import http.client
import ipaddress
import json
import signal
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from motte.keep.csr import accept_response, certificate_request
from motte.keep.evidence import NoEvidence
from motte.steward.issuer import new_ca, write_ca
from tests.conftest import motte
from tests.steward.serve_process import serve_process


def post(url: str, body: bytes, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn: http.client.HTTPConnection = (
        http.client.HTTPSConnection(parts.hostname or "", parts.port, context=context, timeout=30)
        if parts.scheme == "https"
        else http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    )
    try:
        conn.request("POST", "/", body=body, headers={"Content-Type": "application/pkcs10"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_dev_steward_is_one_command_and_says_loudly_what_it_is(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with serve_process("--dev", "--state-dir", str(state)) as server:
        request = certificate_request(NoEvidence())
        status, body = post(server.url, request.csr)
        assert status == 200
        chain = accept_response(request, status, body)
        assert "DEVELOPMENT" in chain.ca.subject.rfc4514_string()
        assert server.stop() == 0
    err = b"".join(server.stderr).decode()
    assert "!! DEVELOPMENT STEWARD !!" in err and "proves nothing" in err and "created development CA" in err
    assert "stopped" in err
    assert (state / "steward-ca.key").stat().st_mode & 0o777 == 0o600

    shown = motte("steward", "log", "--log", str(state / "steward.db"), "--json")
    (event,) = [json.loads(line) for line in shown.stdout.decode().splitlines()]
    assert shown.returncode == 0 and event["verdict"] == "issued" and event["technology"] == "none"

    with serve_process("--dev", "--state-dir", str(state)) as again:  # the same CA, reused
        assert again.stop() == 0
    assert "using development CA" in b"".join(again.stderr).decode()


def server_certificate(tmp_path: Path) -> tuple[Path, Path, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "steward.test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "tls.pem", tmp_path / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path, cert


def test_steward_over_tls_with_a_ca_and_a_policy(tmp_path: Path) -> None:
    ca_key, ca_cert = write_ca(tmp_path / "ca", *new_ca("prod CA", now=datetime.now(UTC)))
    policy = tmp_path / "policy.toml"
    policy.write_text("allow_unattested = true\nlifetime_days = 2\n")
    tls_cert, tls_key, _ = server_certificate(tmp_path)
    args = ["--ca-key", str(ca_key), "--ca-cert", str(ca_cert), "--policy", str(policy)]
    args += ["--tls-cert", str(tls_cert), "--tls-key", str(tls_key), "--log", str(tmp_path / "log.db")]
    with serve_process(*args) as server:
        assert server.url.startswith("https://127.0.0.1:")
        request = certificate_request(NoEvidence())
        status, body = post(server.url, request.csr, ssl.create_default_context(cafile=str(tls_cert)))
        chain = accept_response(request, status, body)
        assert chain.leaf.not_valid_after_utc - chain.leaf.not_valid_before_utc <= timedelta(days=2, minutes=5)
        assert server.stop(signal.SIGINT) == 0
    assert "allows UNATTESTED keeps" in b"".join(server.stderr).decode()


def test_mistakes_are_refused_before_listening(tmp_path: Path) -> None:
    ca_key, ca_cert = write_ca(tmp_path / "ca", *new_ca("CA", now=datetime.now(UTC)))
    policy = tmp_path / "policy.toml"
    policy.write_text("")
    good = ["--ca-key", str(ca_key), "--ca-cert", str(ca_cert), "--policy", str(policy)]
    cases = [
        ([], "--ca-key, --ca-cert and --policy are required"),
        ([*good, "--addr", "0.0.0.0", "--port", "0"], "refusing to serve plain HTTP on 0.0.0.0"),
        (["--dev", "--addr", "0.0.0.0"], "loopback only"),
        (["--dev", *good], "--dev makes its own CA"),
        ([*good, "--tls-cert", str(ca_cert)], "both --tls-cert and --tls-key"),
        (["--ca-key", str(ca_cert), "--ca-cert", str(ca_cert), "--policy", str(policy)], "not an unencrypted PEM"),
        (["--ca-key", str(ca_key), "--ca-cert", str(ca_cert), "--policy", str(tmp_path / "no.toml")], "not found"),
    ]
    for args, message in cases:
        result = motte("steward", "serve", *args, env={"MOTTE_STATE_DIR": str(tmp_path / "state")}, timeout=60)
        err = result.stderr.decode()
        assert result.returncode == 125 and message in err, (args, err)
        assert len(err.strip().splitlines()) == 1, err


def test_new_ca_never_overwrites_a_key(tmp_path: Path) -> None:
    first = motte("steward", "new-ca", "--out", str(tmp_path / "ca"))
    assert first.returncode == 0 and b"keep it secret" in first.stdout
    again = motte("steward", "new-ca", "--out", str(tmp_path / "ca"))
    assert again.returncode == 125 and b"not overwriting" in again.stderr
