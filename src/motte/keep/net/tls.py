"""TLS that ends inside the keep: the standard ``ssl`` module over memory BIOs, sans-I/O.

The host relays only what :meth:`TlsSession.outgoing` returns and feeds back what it received;
it never holds a key nor sees plaintext (commitment 4 in docs/threat-model.md: the network stack
is outside the TCB, TLS is inside). TLS 1.3 only.
"""

from __future__ import annotations

import os
import ssl

from motte.keep.identity import KeepIdentity
from motte.keep.net import TlsError

__all__ = ["HANDSHAKE_TIMEOUT", "TlsError", "TlsSession", "client_context", "server_context"]

HANDSHAKE_TIMEOUT = 10.0  # seconds from accept (or connect) to a finished handshake
# A TLS record carries at most 16 KiB of plaintext. Asking ``SSLObject.read`` for more only makes
# it allocate (and for large sizes mmap and unmap) a buffer that size on every call.
MAX_RECORD = 16 << 10


def server_context(identity: KeepIdentity) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    # Session tickets stay on (OpenSSL sends two after the handshake). Besides resumption, they
    # answer the client's Finished at once: without them a client with Nagle's algorithm holds
    # its first request until the host's delayed ACK, about 40 ms.
    _load_identity(context, identity)
    return context


def client_context(ca_pem: str | None = None) -> ssl.SSLContext:
    """Verifies servers against the system trust store, plus ``ca_pem`` when the config names one."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    if ca_pem:
        try:
            context.load_verify_locations(cadata=ca_pem)
        except (ssl.SSLError, ValueError) as exc:
            raise TlsError(f"the CA bundle holds no usable certificate: {exc}") from None
    return context


def _load_identity(context: ssl.SSLContext, identity: KeepIdentity) -> None:
    # ssl loads a certificate and key only from a path. An anonymous in-memory file (memfd) gives
    # a path without the key ever touching a file system the host could read.
    fd = os.memfd_create("motte-identity", os.MFD_CLOEXEC)
    try:
        os.write(fd, identity.chain_pem() + identity.key_pem())
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def _reason(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message}"
    return (exc.reason or str(exc)).replace("_", " ").lower()


class TlsSession:
    """One TLS connection as a pure state machine over bytes.

    Feed it the ciphertext that arrived (:meth:`feed`, :meth:`feed_eof`), send what
    :meth:`outgoing` returns after every call. :meth:`read` and :meth:`write` move plaintext.
    """

    __slots__ = ("_incoming", "_object", "_outgoing", "closed_by_peer", "established", "needs_input", "server_side")

    def __init__(self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None):
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._object = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side,
                                        server_hostname=server_hostname)
        self.server_side = server_side
        self.established = False
        self.closed_by_peer = False
        # True once a read found nothing more to decrypt, until more is fed: no read can give
        # plaintext before then, which a poll of every idle connection learns without a call.
        self.needs_input = False

    def feed(self, data: bytes) -> None:
        self._incoming.write(data)
        self.needs_input = False

    def feed_eof(self) -> None:
        self._incoming.write_eof()
        self.needs_input = False

    @property
    def peer_eof(self) -> bool:
        return self._incoming.eof

    def outgoing(self) -> bytes:
        return self._outgoing.read() if self._outgoing.pending else b""

    def handshake(self) -> bool:
        """Advance the handshake with what was fed: True once it is complete."""
        if self.established:
            return True
        try:
            self._object.do_handshake()
        except ssl.SSLWantReadError:
            if self._incoming.eof:
                raise TlsError("the peer closed the connection during the TLS handshake") from None
            return False
        except ssl.SSLEOFError:
            raise TlsError("the peer closed the connection during the TLS handshake") from None
        except ssl.SSLError as exc:
            raise TlsError(f"TLS handshake failed: {_reason(exc)}") from None
        self.established = True
        return True

    def read(self, size: int) -> bytes | None:
        """Up to ``size`` bytes of plaintext (several records if available); ``b""`` once the peer
        closed the session; None when more ciphertext is needed."""
        if self.needs_input or (not self._incoming.pending and not self._incoming.eof and not self._object.pending()):
            # Nothing to decrypt: skip the read that would only raise SSLWantReadError (costly when
            # a poll asks every idle connection). OpenSSL leaves unprocessed records in the BIO.
            self.needs_input = True
            return b"" if self.closed_by_peer else None
        pieces: list[bytes] = []
        wanted = size
        while wanted > 0:
            try:
                piece = self._object.read(min(wanted, MAX_RECORD))
            except ssl.SSLWantReadError:
                self.needs_input = True  # (the rest of a record is still to come)
                break
            except ssl.SSLZeroReturnError:
                self.closed_by_peer = True
                break
            except ssl.SSLEOFError:
                # TCP ended without close_notify. Many clients just close; an application protocol
                # with its own framing (HTTP) detects truncation itself, as it does with ssl's
                # suppress_ragged_eofs default.
                self.closed_by_peer = True
                break
            except ssl.SSLError as exc:
                raise TlsError(f"TLS failure: {_reason(exc)}") from None
            if not piece:
                self.closed_by_peer = True
                break
            pieces.append(piece)
            wanted -= len(piece)
            if not self._object.pending() and not self._incoming.pending and not self._incoming.eof:
                self.needs_input = True
                break  # nothing left to decrypt: another read would only raise SSLWantReadError
        if pieces:
            return pieces[0] if len(pieces) == 1 else b"".join(pieces)
        return b"" if self.closed_by_peer else None

    def write(self, data: bytes | memoryview) -> None:
        """Encrypt all of ``data`` (the handshake must be complete); collect it with :meth:`outgoing`."""
        try:
            self._object.write(data)
        except ssl.SSLError as exc:
            raise TlsError(f"TLS failure: {_reason(exc)}") from None

    def encrypt(self, data: bytes | memoryview) -> bytes:
        """:meth:`write`, then :meth:`outgoing`: the records that carry ``data`` (and whatever was
        queued before them)."""
        self.write(data)
        return self._outgoing.read()

    def close(self) -> None:
        """Queue a close_notify alert (when the session is up); the peer learns this side is done."""
        if not self.established:
            return
        try:
            self._object.unwrap()
        except ssl.SSLWantReadError:
            pass  # the alert is queued; the peer's own close_notify is not awaited
        except ssl.SSLError:
            pass

    def version(self) -> str | None:
        return self._object.version()
