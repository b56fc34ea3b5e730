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
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tests.net.conftest import PATIENCE, Served, connect_toml, free_port

pytestmark = pytest.mark.timeout(240)  # a kvm keep: see PATIENCE

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

RESPONSE = b"HTTP/1.0 200 OK\r\nContent-Length: 12\r\n\r\nfrom afar!\r\n"


def _certificate(subject: str, key: PrivateKey, issuer: tuple[str, PrivateKey], ca: bool) -> x509.Certificate:
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
    """A one-request HTTPS (or HTTP) server on loopback; records what it was sent.

    It serves a leaf for ``localhost`` issued by a test CA (whose certificate is ``ca_path``), or
    the ``leaf`` and its key it is given."""

    def __init__(self, tmp_path: Path, tls: bool, leaf: tuple[x509.Certificate, PrivateKey] | None = None):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _certificate("motte test CA", ca_key, ("motte test CA", ca_key), ca=True)
        if leaf is None:
            leaf_key: PrivateKey = ec.generate_private_key(ec.SECP256R1())
            leaf = (_certificate("localhost", leaf_key, ("motte test CA", ca_key), ca=False), leaf_key)
        certificate, key = leaf
        self.ca_path = tmp_path / "certs" / "ca.pem"
        self.ca_path.parent.mkdir()
        self.ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        chain = tmp_path / "chain.pem"
        chain.write_bytes(certificate.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        self.context: ssl.SSLContext | None = None
        if tls:
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(chain)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(PATIENCE["kvm"])  # a first kvm keep of a session may take that long
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


def test_tls_connect_verified_against_the_configured_ca(serve, backend: str, https: Upstream) -> None:
    # ca is relative to the Enarx.toml's folder; the host reads it and sends it with the launch.
    toml = connect_toml("localhost", https.port, ca="certs/ca.pem")
    server: Served = serve("connect_get", toml, "/data", "localhost", backend=backend)
    assert server.wait() == 0, server.stderr
    assert "\n".join(server.lines_so_far()).encode() + b"\n" == RESPONSE
    assert https.requests == [b"GET /data HTTP/1.0\r\nHost: localhost\r\n\r\n"]
    assert https.versions == ["TLSv1.3"]


def _refused_by_the_keep(server: Served, port: int, reason: str) -> None:
    assert server.wait() == 1
    errors = sorted(server.stderr.splitlines())
    assert len(errors) == 2, errors
    assert errors[0] == "connect_get: write: Connection aborted (errno 13)"  # ECONNABORTED
    assert errors[1] == (f"motte: warning: files[3] (connect 'upstream') to localhost:{port}: closed by the keep: "
                         f"TLS handshake failed: certificate verification failed: {reason}")


def test_tls_connect_without_the_ca_fails_verification_inside_the_keep(serve, backend: str, https: Upstream) -> None:
    server: Served = serve("connect_get", connect_toml("localhost", https.port), backend=backend)
    _refused_by_the_keep(server, https.port, "unable to get local issuer certificate")
    assert https.requests == []  # not one byte of the request went out


#: A root CA that Mozilla's bundle (the VM keep's trust store) and Debian's both hold.
SYSTEM_ROOT = "CN=ISRG Root X1,O=Internet Security Research Group,C=US"


def _system_root(backend: str) -> x509.Certificate:
    """SYSTEM_ROOT from the trust store the keep verifies against without ``ca``: the image's
    bundle in a VM keep, the host's default CA file in a nil keep (which gets no SSL_CERT_FILE)."""
    from motte.host.image.inputs import ca_bundle_path

    bundle = ca_bundle_path() if backend == "kvm" else Path(ssl.get_default_verify_paths().openssl_cafile)
    try:
        roots = x509.load_pem_x509_certificates(bundle.read_bytes())
    except (OSError, ValueError):
        roots = []
    found = [root for root in roots if root.subject.rfc4514_string() == SYSTEM_ROOT]
    if backend == "nil" and not found:
        pytest.skip(f"this host's trust store ({bundle}) does not hold {SYSTEM_ROOT}")
    assert found, f"{SYSTEM_ROOT} is not in {bundle}"
    return found[0]


def test_tls_connect_without_a_ca_verifies_against_the_system_store(serve, backend: str, tmp_path: Path) -> None:
    """The keep finds a system root when it builds the chain. The server's leaf claims to be issued by
    a real root (by name and key identifier) but signs itself: with that root in the keep's trust store
    the chain is built and its signature fails; without a store the issuer would be unknown."""
    root = _system_root(backend)
    key = rsa.generate_private_key(65537, 2048)  # the root's key type: else the root is never taken for the issuer
    now = datetime.datetime.now(datetime.UTC)
    root_key_id = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    impostor = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_key_id), critical=False)
        .sign(key, hashes.SHA256())
    )
    upstream = Upstream(tmp_path, tls=True, leaf=(impostor, key))
    try:
        server: Served = serve("connect_get", connect_toml("localhost", upstream.port), backend=backend)
        _refused_by_the_keep(server, upstream.port, "certificate signature failure")
        assert upstream.requests == []
    finally:
        upstream.close()


def test_plain_tcp_connect(serve, backend: str, tmp_path: Path) -> None:
    upstream = Upstream(tmp_path, tls=False)
    try:
        toml = connect_toml("127.0.0.1", upstream.port, prot="tcp")
        server: Served = serve("connect_get", toml, "/plain", "x", backend=backend)
        assert server.wait() == 0, server.stderr
        assert upstream.requests == [b"GET /plain HTTP/1.0\r\nHost: x\r\n\r\n"]
        assert "from afar!\r" in server.lines_so_far()
    finally:
        upstream.close()


def test_refused_connect_fails_the_first_io_and_warns_on_the_host(serve, backend: str) -> None:
    port = free_port()  # nothing listens there
    server: Served = serve("connect_get", connect_toml("127.0.0.1", port, prot="tcp"), backend=backend)
    assert server.wait() == 1
    errors = sorted(line for line in server.stderr.splitlines() if "plaintext TCP" not in line)
    assert errors == [
        "connect_get: write: Connection refused (errno 14)",  # the workload's first I/O fails
        f"motte: warning: files[3] (connect 'upstream'): cannot connect to 127.0.0.1:{port}: connection refused",
    ]


def test_unresolvable_connect_target(serve, backend: str) -> None:
    server: Served = serve("connect_get", connect_toml("no-such-host.invalid", 443), backend=backend)
    assert server.wait() == 1, server.stderr
    stderr = server.stderr
    assert "connect_get: write: Host is unreachable (errno 23)" in stderr, stderr  # EHOSTUNREACH
    assert "cannot connect to no-such-host.invalid:443: cannot resolve 'no-such-host.invalid'" in stderr, stderr
