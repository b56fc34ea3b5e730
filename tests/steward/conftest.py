"""Steward test fixtures: a CA, and a real Steward service on 127.0.0.1:<free port> in a thread,
always stopped at the end of the test."""

from __future__ import annotations

import http.client
import ipaddress
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from motte.steward.app import StewardConfig, StewardService, serve
from motte.steward.issuer import CertificateAuthority, new_ca
from motte.steward.log import AuditLog
from motte.steward.policy import StewardPolicy, load_steward_policy
from motte.tenant.attest.amd_roots import AmdTrust
from tests.serving import serving

ALLOW_KVM = load_steward_policy("allow_unattested = true\n")


@pytest.fixture(scope="session")
def ca() -> CertificateAuthority:
    key, cert = new_ca("test Steward CA", now=datetime.now(UTC))
    return CertificateAuthority(key, cert)


def steward_tls_identity(folder: Path) -> tuple[Path, ssl.SSLContext]:
    """The Steward's own TLS identity: a server certificate for 127.0.0.1 from a test CA, and the
    path of that CA's PEM (what the keep's ``steward_ca`` names)."""
    now = datetime.now(UTC)
    ca_key, ca_cert = new_ca("test Steward TLS CA", now=now)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "steward on loopback")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "steward-tls-ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "server.pem", folder / "server.key")
    return folder / "steward-tls-ca.pem", context


@contextmanager
def running(service: StewardService, *, ssl_context: ssl.SSLContext | None = None) -> Iterator[str]:
    """Serve ``service`` in a background thread; yields its URL."""
    with serving(lambda stop, on_ready: serve(service, host="127.0.0.1", port=0, ssl_context=ssl_context,
                                              on_ready=on_ready, stop=stop), "Steward") as url:
        yield url


StewardFactory = Callable[..., "StewardHandle"]


class StewardHandle:
    def __init__(self, url: str, log_path: Path, service: StewardService) -> None:
        self.url = url
        self.log_path = log_path
        self.service = service
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "", parts.port or 80

    def post(self, body: bytes, content_type: str = "application/pkcs10") -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request("POST", "/", body=body, headers={"Content-Type": content_type})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def get(self) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


@pytest.fixture
def steward(ca: CertificateAuthority, tmp_path: Path) -> Iterator[Callable[..., StewardHandle]]:
    """``steward(policy, amd_trust=..., **service_options)`` starts a Steward for this test."""
    stack: list[Any] = []

    def start(policy: StewardPolicy = ALLOW_KVM, *, amd_trust: AmdTrust | None = None, **options: Any) -> StewardHandle:
        log_path = tmp_path / f"steward-{len(stack)}.db"
        log = AuditLog(log_path)
        service = StewardService(StewardConfig.build(ca, policy, amd_trust=amd_trust), log, **options)
        context = running(service)
        url = context.__enter__()
        stack.append((context, log))
        return StewardHandle(url, log_path, service)

    try:
        yield start
    finally:
        for context, log in reversed(stack):
            context.__exit__(None, None, None)
            log.close()
