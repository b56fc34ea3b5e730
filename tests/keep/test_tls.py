"""The keep's TLS identity and the sans-I/O TLS session, in memory (no sockets, no keep)."""

from __future__ import annotations

import datetime
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from motte.keep.identity import SELF_SIGNED_CN, self_signed_identity
from motte.keep.net.tls import TlsError, TlsSession, client_context, server_context


def _pump(a: TlsSession, b: TlsSession) -> None:
    """Carry the bytes each side wants to send to the other, until both are quiet."""
    for _ in range(10):
        out_a, out_b = a.outgoing(), b.outgoing()
        if not out_a and not out_b:
            return
        if out_a:
            b.feed(out_a)
        if out_b:
            a.feed(out_b)
        for side in (a, b):
            if not side.established:
                side.handshake()


def _unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.fixture(scope="module")
def server_ctx() -> ssl.SSLContext:
    return server_context(self_signed_identity())


def test_identity_is_a_fresh_p256_key_with_a_self_signed_certificate() -> None:
    identity = self_signed_identity()
    other = self_signed_identity()
    assert identity.spki_der() != other.spki_der()  # a new key per keep
    (certificate,) = identity.chain
    assert isinstance(identity.key, ec.EllipticCurvePrivateKey) and identity.key.curve.name == "secp256r1"
    assert certificate.subject == certificate.issuer
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == SELF_SIGNED_CN
    public = certificate.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(certificate.signature, certificate.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    assert public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo) == identity.spki_der()
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages
    now = datetime.datetime.now(datetime.UTC)
    assert certificate.not_valid_before_utc < now < certificate.not_valid_after_utc


def test_handshake_data_and_close_notify(server_ctx: ssl.SSLContext) -> None:
    server = TlsSession(server_ctx, server_side=True)
    client = TlsSession(_unverified(), server_side=False, server_hostname="localhost")
    assert client.handshake() is False  # the ClientHello is out, the answer is needed
    _pump(client, server)
    assert server.established and client.established
    assert server.version() == "TLSv1.3"
    assert server.read(100) is None  # nothing yet
    message = bytes(range(256)) * 300  # several records
    client.write(message)
    ciphertext = client.outgoing()
    assert message[:64] not in ciphertext
    server.feed(ciphertext[:1000])
    first = server.read(1 << 20) or b""  # a partial record gives nothing, whole ones their data
    server.feed(ciphertext[1000:])
    rest = server.read(1 << 20) or b""
    assert first + rest == message
    client.close()
    server.feed(client.outgoing())
    assert server.read(100) == b""  # close_notify: a clean end
    assert server.closed_by_peer


def test_a_ragged_eof_after_the_handshake_reads_as_the_end(server_ctx: ssl.SSLContext) -> None:
    server = TlsSession(server_ctx, server_side=True)
    client = TlsSession(_unverified(), server_side=False, server_hostname="localhost")
    client.handshake()
    _pump(client, server)
    server.feed_eof()
    assert server.read(100) == b""


def test_garbage_and_old_clients_fail_the_handshake(server_ctx: ssl.SSLContext) -> None:
    server = TlsSession(server_ctx, server_side=True)
    server.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(TlsError, match="handshake failed"):
        server.handshake()
    old = _unverified()
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    client = TlsSession(old, server_side=False, server_hostname="localhost")
    server = TlsSession(server_ctx, server_side=True)
    client.handshake()
    server.feed(client.outgoing())
    with pytest.raises(TlsError, match="unsupported protocol"):
        server.handshake()
    assert server.outgoing()  # the alert that tells the client why
    cut = TlsSession(server_ctx, server_side=True)
    cut.feed_eof()
    with pytest.raises(TlsError, match="closed the connection during the TLS handshake"):
        cut.handshake()


def test_a_client_verifies_the_server_against_the_given_ca(server_ctx: ssl.SSLContext) -> None:
    identity = self_signed_identity()
    trusting = client_context(identity.chain_pem().decode())
    server = TlsSession(server_context(identity), server_side=True)
    client = TlsSession(trusting, server_side=False, server_hostname="localhost")
    client.handshake()
    _pump(client, server)
    assert client.established
    # Another keep's certificate is not trusted by that context, nor by the system store.
    for context in (trusting, client_context()):
        stranger = TlsSession(server_ctx, server_side=True)
        client = TlsSession(context, server_side=False, server_hostname="localhost")
        client.handshake()
        stranger.feed(client.outgoing())
        stranger.handshake()
        client.feed(stranger.outgoing())
        with pytest.raises(TlsError, match="certificate verification failed"):
            client.handshake()


def test_a_ca_bundle_without_certificates_is_refused() -> None:
    with pytest.raises(TlsError, match="no usable certificate"):
        client_context("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
