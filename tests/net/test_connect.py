"""Outbound connections: the keep asks, the host connects, TLS is verified inside the keep."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.net.conftest import Served, connect_toml, free_port

pytestmark = pytest.mark.timeout(120)

RESPONSE = b"HTTP/1.0 200 OK\r\nContent-Length: 12\r\n\r\nfrom afar!\r\n"


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey],
                 ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return builder.sign(issuer[1], hashes.SHA256())


class Upstream:
    """A one-request HTTPS (or HTTP) server on loopback; records what it was sent."""

    def __init__(self, tmp_path: Path, tls: bool):
        ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        ca = _certificate("motte test CA", ca_key, ("motte test CA", ca_key), ca=True)
        leaf = _certificate("localhost", key, ("motte test CA", ca_key), ca=False)
        self.ca_path = tmp_path / "certs" / "ca.pem"
        self.ca_path.parent.mkdir()
        self.ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        chain = tmp_path / "chain.pem"
        chain.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        self.context: ssl.SSLContext | None = None
        if tls:
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(chain)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(30)
        self.port = self.listener.getsockname()[1]
        self.requests: list[bytes] = []
        self.versions: list[str | None] = []
        self.failures: list[BaseException] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
            if self.context is not None:
                conn = self.context.wrap_socket(conn, server_side=True)
                self.versions.append(conn.version())  # type: ignore[attr-defined]
            request = b""
            while b"\r\n\r\n" not in request:
                data = conn.recv(4096)
                if not data:
                    break
                request += data
            self.requests.append(request)
            conn.sendall(RESPONSE)
            conn.close()
        except (OSError, ssl.SSLError) as exc:
            self.failures.append(exc)

    def close(self) -> None:
        self.listener.close()
        self._thread.join(5)


@pytest.fixture
def https(tmp_path: Path) -> Iterator[Upstream]:
    upstream = Upstream(tmp_path, tls=True)
    yield upstream
    upstream.close()


def test_tls_connect_verified_against_the_configured_ca(serve, https: Upstream) -> None:
    # ca is relative to the Enarx.toml's folder; the host reads it and sends it with the launch.
    toml = connect_toml("localhost", https.port, ca="certs/ca.pem")
    server: Served = serve("connect_get", toml, "/data", "localhost")
    assert server.wait() == 0, server.stderr
    assert "\n".join(server.lines_so_far()).encode() + b"\n" == RESPONSE
    assert https.requests == [b"GET /data HTTP/1.0\r\nHost: localhost\r\n\r\n"]
    assert https.versions == ["TLSv1.3"]


def test_tls_connect_without_the_ca_fails_verification_inside_the_keep(serve, https: Upstream) -> None:
    server: Served = serve("connect_get", connect_toml("localhost", https.port))
    assert server.wait() == 1
    errors = sorted(server.stderr.splitlines())
    assert len(errors) == 2
    assert errors[0] == "connect_get: write: Connection aborted (errno 13)"  # ECONNABORTED
    assert errors[1].startswith(f"motte: warning: files[3] (connect 'upstream') to localhost:{https.port}: closed by "
                                "the keep: TLS handshake failed: certificate verification failed: ")
    assert https.requests == []  # not one byte of the request went out


def test_plain_tcp_connect(serve, tmp_path: Path) -> None:
    upstream = Upstream(tmp_path, tls=False)
    try:
        server: Served = serve("connect_get", connect_toml("127.0.0.1", upstream.port, prot="tcp"), "/plain", "x")
        assert server.wait() == 0, server.stderr
        assert upstream.requests == [b"GET /plain HTTP/1.0\r\nHost: x\r\n\r\n"]
        assert "from afar!\r" in server.lines_so_far()
    finally:
        upstream.close()


def test_refused_connect_fails_the_first_io_and_warns_on_the_host(serve) -> None:
    port = free_port()  # nothing listens there
    server: Served = serve("connect_get", connect_toml("127.0.0.1", port, prot="tcp"))
    assert server.wait() == 1
    errors = sorted(line for line in server.stderr.splitlines() if "plaintext TCP" not in line)
    assert errors == [
        "connect_get: write: Connection refused (errno 14)",  # the workload's first I/O fails
        f"motte: warning: files[3] (connect 'upstream'): cannot connect to 127.0.0.1:{port}: connection refused",
    ]


def test_unresolvable_connect_target(serve) -> None:
    server: Served = serve("connect_get", connect_toml("no-such-host.invalid", 443))
    assert server.wait() == 1, server.stderr
    stderr = server.stderr
    assert "connect_get: write: Host is unreachable (errno 23)" in stderr, stderr  # EHOSTUNREACH
    assert "cannot connect to no-such-host.invalid:443: cannot resolve 'no-such-host.invalid'" in stderr, stderr
