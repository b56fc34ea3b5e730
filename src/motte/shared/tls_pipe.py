"""TLS 1.3 as a pipe of bytes, sans-I/O: ciphertext in and out, plaintext in and out.

The deploy session (:mod:`motte.shared.provision`) runs over it on both ends: the keep feeds it
from a channel stream, the tenant from a WebSocket to the host agent. It is pyOpenSSL over memory
BIOs rather than the standard ``ssl`` module because the session's evidence must bind the session
itself, and only pyOpenSSL exposes TLS's keying-material exporter (RFC 5705, RFC 9266).

Neither side checks the other's certificate here: the keep's certificate is self-signed, and what
makes it trustworthy is the evidence that binds its key and this session's exporter value.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from motte.shared.binding import EXPORTER_SIZE
from motte.shared.errors import MotteError
from motte.shared.provision import EXPORTER_LABEL

READ_CHUNK = 256 << 10


class TlsPipeError(MotteError):
    """The TLS session failed (handshake, a bad record, an unexpected close)."""


def server_context(key: ec.EllipticCurvePrivateKey) -> SSL.Context:
    """TLS 1.3 only, presenting a fresh self-signed certificate for ``key``."""
    context = _context()
    certificate = _self_signed(key)
    context.use_certificate(certificate)
    context.use_privatekey(key)
    context.check_privatekey()
    return context


def client_context() -> SSL.Context:
    return _context()


def _context() -> SSL.Context:
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_3_VERSION)
    context.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION)
    context.set_verify(SSL.VERIFY_NONE)
    return context


def _self_signed(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "motte provisioning keep")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


class TlsPipe:
    """One TLS connection over memory buffers. Not thread-safe: the caller serialises calls."""

    def __init__(self, context: SSL.Context, *, server: bool):
        self._conn = SSL.Connection(context, None)
        if server:
            self._conn.set_accept_state()
        else:
            self._conn.set_connect_state()
        self.handshake_done = False
        self.peer_closed = False

    def handshake(self) -> bytes:
        """Advance the handshake; the ciphertext to send (possibly empty). Feed replies with :meth:`feed`."""
        if not self.handshake_done:
            try:
                self._conn.do_handshake()
                self.handshake_done = True
            except SSL.WantReadError:
                pass
            except SSL.Error as exc:
                raise TlsPipeError(f"TLS handshake failed: {_reason(exc)}") from None
        return self.outgoing()

    def feed(self, ciphertext: bytes) -> bytes:
        """Take received ciphertext; the plaintext it completes (possibly empty). Once the peer
        has closed the session, ``peer_closed`` is set."""
        if ciphertext:
            self._conn.bio_write(ciphertext)
        if not self.handshake_done:
            return b""
        plain = bytearray()
        while True:
            try:
                chunk = self._conn.recv(READ_CHUNK)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self.peer_closed = True
                break
            except SSL.Error as exc:
                raise TlsPipeError(f"TLS session failed: {_reason(exc)}") from None
            if not chunk:
                break
            plain += chunk
        return bytes(plain)

    def encrypt(self, plaintext: bytes | memoryview) -> bytes:
        """The ciphertext carrying ``plaintext``."""
        if not self.handshake_done:
            raise TlsPipeError("TLS session not established yet")
        view = memoryview(plaintext)
        try:
            while view:
                view = view[self._conn.send(view[:READ_CHUNK]) :]
        except SSL.Error as exc:
            raise TlsPipeError(f"TLS session failed: {_reason(exc)}") from None
        return self.outgoing()

    def outgoing(self) -> bytes:
        out = bytearray()
        while True:
            try:
                chunk = self._conn.bio_read(READ_CHUNK)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            out += chunk
        return bytes(out)

    def close(self) -> bytes:
        """Send close_notify; the ciphertext to send."""
        try:
            self._conn.shutdown()
        except SSL.Error:
            pass
        return self.outgoing()

    def exporter(self) -> bytes:
        """RFC 9266's tls-exporter value of this session: what the evidence binds."""
        value = self._conn.export_keying_material(EXPORTER_LABEL, EXPORTER_SIZE, None)
        if len(value) != EXPORTER_SIZE:
            raise TlsPipeError("TLS exporter gave no value")
        return bytes(value)

    def peer_spki(self) -> bytes:
        """The DER SubjectPublicKeyInfo of the peer's certificate."""
        certificate = self._conn.get_peer_certificate(as_cryptography=True)
        if certificate is None:
            raise TlsPipeError("the peer presented no certificate")
        return certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _reason(exc: SSL.Error) -> str:
    parts = [item for item in (exc.args[0] if exc.args else []) if isinstance(item, tuple)]
    if parts:
        return "; ".join(str(part[-1]) for part in parts)
    return str(exc) or type(exc).__name__
