"""Connected sockets inside the keep: WASI file descriptors, one per connection, over a carrier.

The host does TCP (it binds, accepts, connects) and relays bytes; for ``prot = "tls"`` those bytes
are TLS records, and the session (:class:`~motte.keep.net.tls.TlsSession`) runs here, so the
host never sees plaintext. The conventions on the channel are in :mod:`motte.shared.netstreams`;
what carries a connection's bytes (a channel stream, or a socket the host handed over) is in
:mod:`motte.keep.net.carriers`.

Everything runs on the workload's thread. Listen sockets and the factory of sockets,
:class:`~motte.keep.net.listen.KeepNetwork`, are in :mod:`motte.keep.net.listen`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from motte.keep.net import TlsError
from motte.keep.wasi.files import DeadlineExceeded, WakeOn, WasiFile
from motte.shared import netstreams
from motte.shared.endpoint import ChannelClosed, StreamAborted
from motte.shared.endpoint import Timeout as EndpointTimeout
from motte.shared.wasi_abi import SDFLAGS_RD, SDFLAGS_WR, Errno, FdFlags, Filetype, Rights, WasiError

if TYPE_CHECKING:  # ssl is loaded only by keeps that do TLS

    from motte.keep.net.carriers import Carrier
    from motte.keep.net.tls import TlsSession


SOCKET_RIGHTS = (
    Rights.FD_READ | Rights.FD_WRITE | Rights.FD_FDSTAT_SET_FLAGS | Rights.POLL_FD_READWRITE
    | Rights.FD_FILESTAT_GET | Rights.SOCK_SHUTDOWN
)
RECV_CHUNK = 256 << 10  # ciphertext taken from the channel per step
SEND_CHUNK = 256 << 10  # plaintext encrypted per step: bounds what one write holds at once
TLS_OVERHEAD_MAX = 64 * (SEND_CHUNK // (16 << 10))  # more than TLS 1.3 adds to SEND_CHUNK (22 bytes a record)
LINGER = 2.0  # seconds close() waits for credit to hand over the last bytes

NOTHING: Callable[[], None] = lambda: None  # noqa: E731
_NO_FLAGS = FdFlags(0)
_NONBLOCK = int(FdFlags.NONBLOCK)  # tested as a plain int: an IntFlag operation is a Python call


def reset_errno(reason: str | None) -> Errno:
    return Errno[netstreams.failure_errno(reason)[1:]]


def split_at(data: bytes, size: int) -> tuple[bytes, bytes]:
    """The first ``size`` bytes of ``data`` and the rest (without a copy when it all fits)."""
    if len(data) <= size:
        return data, b""
    return data[:size], data[size:]


def remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded()
    return left


class StreamSocket(WasiFile):
    """A connected socket: one accepted or outbound connection, plaintext or TLS."""

    filetype = Filetype.SOCKET_STREAM
    rights_base = SOCKET_RIGHTS

    def __init__(self, carrier: Carrier, *, tls: TlsSession | None = None, connecting: bool = False,
                 flags: FdFlags = _NO_FLAGS, on_block: Callable[[], None] = NOTHING,
                 handshake_timeout: float = 10.0):
        super().__init__()
        self.flags = flags
        self.carrier = carrier
        self.tls = tls
        self._on_block = on_block
        self._handshake_timeout = handshake_timeout
        # An outbound connection is usable once the host reports the TCP connection up.
        self._connecting = connecting
        self._handshake_deadline = (
            None if tls is None or connecting else time.monotonic() + handshake_timeout
        )
        self._inbound = b""  # plaintext that arrived and the workload has not read yet
        self._unsent = b""  # bytes for the channel still waiting for credit (TLS output, mostly)
        self._peer_eof = False
        self._read_shut = False
        self._write_shut = False
        self._error: Errno | None = None
        self.failure: str | None = None  # why the connection failed, when known (for the keep's own messages)
        self._closed = False
        self._handshake_bytes = False  # the peer sent something during the handshake

    # ---- the workload's operations ----

    def read(self, size: int, deadline: float | None) -> bytes | None:
        if self._inbound:  # the common case: what the poll that found the socket readable decrypted
            return self._take(size)
        if int(self.flags) & _NONBLOCK and not self._read_shut and self._nothing_new():
            return None  # the other common case: EAGAIN
        return self.recv(size, deadline)

    def recv(self, size: int, deadline: float | None, *, peek: bool = False, waitall: bool = False) -> bytes:
        if self._read_shut:
            return b""
        if self._nothing_new() or not self._inbound_step():
            if int(self.flags) & _NONBLOCK:
                raise WasiError(Errno.AGAIN)
            self._block_until(self._inbound_step, deadline, read=True)
        if waitall and not peek:
            # MSG_WAITALL: gather until ``size`` bytes, EOF or an error.
            pieces: list[bytes] = []
            got = 0
            while got < size:
                if not self._inbound and self._error is None and not self._peer_eof:
                    self._block_until(self._inbound_step, deadline, read=True)
                if not self._inbound:
                    if pieces:
                        break  # EOF or an error after some data: report the data first
                    return self._take(size)  # b"" at EOF, or raises the error
                piece = self._take(size - got)
                pieces.append(piece)
                got += len(piece)
            return b"".join(pieces)
        if peek:
            if self._inbound:
                return self._inbound[:size]
            return self._take(size)  # EOF (b"") or the error
        return self._take(size)

    def write(self, data: bytes, deadline: float | None) -> int:
        if (self._error is None and not self._write_shut and not self._unsent and not self._connecting
                and (self.tls is None or self.tls.established) and 0 < len(data) <= SEND_CHUNK
                and self.carrier.write_window() >= len(data) + TLS_OVERHEAD_MAX):
            # The common case, in one step: an open connection with the credit for all of it.
            self._channel_write(self._encrypt(data), deadline)
            return len(data)
        if not data:
            self._check_writable()
            return 0
        nonblocking = bool(int(self.flags) & _NONBLOCK)
        while True:
            self._check_writable()
            if not self._ready_step():
                if nonblocking:
                    raise WasiError(Errno.AGAIN)  # still connecting or in the handshake
                self._block_until(self._ready_step, deadline, read=True)
                continue
            self._check_writable()
            if self._drain_unsent():
                break
            if nonblocking:
                raise WasiError(Errno.AGAIN)
            self._block_until(self._drain_unsent, deadline, write=True)
        if nonblocking:
            window = self.carrier.write_window()
            if window <= 0:
                self._check_peer_reset()
                raise WasiError(Errno.AGAIN)
            count = min(len(data), window, SEND_CHUNK)
            self._unsent = bytes(self._encrypt(data[:count]))
            self._drain_unsent()  # a TLS record's overhead may not fit the window: the rest waits
            return count
        view = memoryview(data)
        for offset in range(0, len(view), SEND_CHUNK):
            self._channel_write(self._encrypt(view[offset : offset + SEND_CHUNK]), deadline)
        return len(data)

    def shutdown(self, how: int) -> None:
        if self._closed:
            raise WasiError(Errno.BADF)
        if how & SDFLAGS_RD:
            self._read_shut = True
            self._inbound = b""
        if how & SDFLAGS_WR and not self._write_shut:
            self._write_shut = True
            self._finish_sending()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._write_shut and self._error is None:
            self._finish_sending()
        # RESET after EOF: the data already sent still arrives (it precedes the RESET); nothing more
        # is read, so the channel may forget the stream.
        self.carrier.reset(netstreams.CLOSED)

    def readable_now(self) -> bool:
        if self._unsent:
            self._drain_unsent()
        return self._read_shut or (not self._nothing_new() and self._inbound_step())

    def writable_now(self) -> bool:
        if self._error is not None or self._write_shut:
            return True  # a write fails at once rather than blocking
        if not self._ready_step():
            return False
        if self._error is not None:
            return True
        if not self._drain_unsent():
            return self._error is not None
        if self.carrier.write_window() > 0:
            return True
        self._check_peer_reset(raise_error=False)
        return self._error is not None

    def wake_on(self, write: bool) -> WakeOn | None:
        waiting_for_peer = not self.established
        if not write and not waiting_for_peer and not self._unsent:
            return self.carrier.wake_on(read=True, write=False, until=None)  # the common case
        return self.carrier.wake_on(
            read=not write or waiting_for_peer,
            # During the handshake only the peer's bytes (or credit for ours) move it on: waking
            # on the stream's credit would only spin.
            write=(write and not waiting_for_peer) or bool(self._unsent),
            until=self._handshake_deadline if waiting_for_peer else None,
        )

    @property
    def established(self) -> bool:
        return not self._connecting and (self.tls is None or self.tls.established)

    # ---- progress without blocking ----

    def _ready_step(self) -> bool:
        """Move towards a usable connection (connected, handshake done): True once there, or failed."""
        if self._error is not None:
            return True
        if self._connecting:
            status = self._take_channel(1)
            if status is None:
                return self._error is not None
            if status != netstreams.CONNECTED:
                self._fail(Errno.CONNRESET, "the host sent no connection status")
                return True
            self._connecting = False
            if self.tls is not None:
                self._handshake_deadline = time.monotonic() + self._handshake_timeout
        tls = self.tls
        if tls is None or tls.established:
            return True
        while True:
            try:
                done = tls.handshake()
            except TlsError as exc:
                self._queue_tls_output()  # the alert that tells the peer why
                self._fail(Errno.CONNABORTED, str(exc))
                return True
            self._queue_tls_output()
            if done:
                self._handshake_deadline = None
                return True
            if self._handshake_deadline is not None and time.monotonic() >= self._handshake_deadline:
                self._fail(Errno.TIMEDOUT, f"TLS handshake not finished within {self._handshake_timeout:g} s")
                return True
            chunk = self._take_channel(RECV_CHUNK)
            if chunk is None:
                return self._error is not None
            if chunk:
                tls.feed(chunk)
                self._handshake_bytes = True
            elif not self._handshake_bytes:
                # Connected and left without a byte (a port probe, a health check): no TLS error
                # worth a warning on the host, just a connection reset for the workload.
                self._fail(Errno.CONNRESET, netstreams.CLOSED)
                return True
            else:
                tls.feed_eof()

    def _nothing_new(self) -> bool:
        """Nothing to read: no plaintext, nothing for TLS to decrypt, nothing on the stream, no EOF
        nor error. The state of an idle connection, found without stepping it (a poll asks every
        connection it watches, each time)."""
        tls = self.tls
        return (not self._inbound and not self._peer_eof and self._error is None and not self._connecting
                and (tls is None or tls.needs_input) and not self.carrier.readable())

    def _inbound_step(self) -> bool:
        """Take what has arrived: True when a read would not block (data, EOF or an error)."""
        if self._inbound or self._peer_eof or self._error is not None:
            return True
        tls = self.tls
        if self._connecting or (tls is not None and not tls.established):
            if not self._ready_step():
                return False
            if self._error is not None:
                return True
        if tls is None:
            chunk = self._take_channel(RECV_CHUNK)
            if chunk is None:
                return self._error is not None
            if chunk:
                self._inbound = chunk
            else:
                self._peer_eof = True
            return True
        while True:
            try:
                # (Not when nothing was fed since TLS ran dry: the usual state when data arrives.)
                plain = tls.read(RECV_CHUNK) if not tls.needs_input or tls.closed_by_peer else None
            except TlsError as exc:
                self._queue_tls_output()
                self._fail(Errno.CONNABORTED, str(exc))
                return True
            if plain is not None:
                if plain:
                    self._inbound = plain
                else:
                    self._peer_eof = True
                self._queue_tls_output()  # e.g. the answer to a TLS 1.3 KeyUpdate
                return True
            # Only now, with no whole record left, take more ciphertext: what TLS holds stays small.
            chunk = self._take_channel(RECV_CHUNK)
            if chunk is None:
                return self._error is not None
            if chunk:
                tls.feed(chunk)
            else:
                tls.feed_eof()

    def _take(self, size: int) -> bytes:
        if self._inbound:
            data, self._inbound = split_at(self._inbound, size)
            return data
        if self._error is not None:
            raise WasiError(self._error)
        return b""  # EOF

    def _take_channel(self, size: int) -> bytes | None:
        """Bytes from the stream; b"" at EOF; None if none yet (or the stream failed: see _error)."""
        try:
            return self.carrier.read_nowait(size)
        except StreamAborted:
            self.failure = self.carrier.reset_reason()
            self._error = reset_errno(self.failure)
            self.carrier.reset()  # forget it on this side too
        except ChannelClosed:
            self._error = Errno.CONNRESET
        return None

    def _encrypt(self, data: bytes | memoryview) -> bytes | memoryview:
        if self.tls is None:
            return data
        try:
            return self.tls.encrypt(data)
        except TlsError as exc:
            self._fail(Errno.CONNABORTED, str(exc))
            raise WasiError(Errno.CONNABORTED) from None

    def _queue_tls_output(self) -> None:
        if self.tls is not None:
            out = self.tls.outgoing()
            if out:
                self._unsent += out
                self._drain_unsent()

    def _drain_unsent(self) -> bool:
        """Hand queued bytes to the channel as far as credit allows: True when none are left."""
        if not self._unsent:
            return True
        window = self.carrier.write_window()
        if window <= 0:
            self._check_peer_reset(raise_error=False)
            return self._error is not None
        count = min(window, len(self._unsent))
        try:
            self.carrier.write(self._unsent[:count])
        except (StreamAborted, ChannelClosed):
            self._check_peer_reset(raise_error=False)
            self._error = self._error or Errno.CONNRESET
            return True
        self._unsent = self._unsent[count:]
        return not self._unsent

    def _channel_write(self, data: bytes | memoryview, deadline: float | None) -> None:
        try:
            self.carrier.write(data, deadline=deadline)
        except EndpointTimeout:
            raise DeadlineExceeded() from None
        except (StreamAborted, ChannelClosed):
            self._check_peer_reset(raise_error=False)
            self._error = self._error or Errno.CONNRESET
            raise WasiError(self._error) from None

    def _check_writable(self) -> None:
        if self._error is not None:
            raise WasiError(self._error)
        if self._write_shut:
            raise WasiError(Errno.PIPE)

    def _check_peer_reset(self, raise_error: bool = True) -> None:
        """A stream without credit may be one the peer reset: find out, and fail if so."""
        reason = self.carrier.reset_reason()
        if reason is not None:
            self.failure = reason
            self._error = reset_errno(reason)
            self.carrier.reset()
        elif self.carrier.gone():
            self._error = Errno.CONNRESET
        if raise_error and self._error is not None:
            raise WasiError(self._error)

    def _fail(self, errno: Errno, reason: str) -> None:
        """This side gives the connection up: the workload sees ``errno``, the host the reason.

        RESET only, no EOF first: what was queued before it (a TLS alert) still arrives, and the
        host learns the reason even if the peer has already closed its side.
        """
        self._error = errno
        self.failure = reason
        self._drain_unsent()
        self.carrier.reset(reason)

    def _finish_sending(self) -> None:
        if self.tls is not None and self.tls.established:
            self.tls.close()
            self._queue_tls_output()
        if self._unsent and self._error is None:
            deadline = time.monotonic() + LINGER
            while not self._drain_unsent() and time.monotonic() < deadline:
                self.carrier.wait(read=False, write=True, timeout=deadline - time.monotonic())
        self.carrier.eof()

    def _block_until(self, step: Callable[[], bool], deadline: float | None, *, read: bool = False,
                     write: bool = False) -> None:
        """Wait on the carrier until ``step()`` reports progress, the deadline or a handshake timeout."""
        self._on_block()  # output written so far (a prompt, a log line) must reach the host first
        while not step():  # first: TLS may already hold whole records that came with earlier bytes
            timeout = remaining(deadline)
            if self._handshake_deadline is not None:
                # Wake at the handshake deadline so step() can declare the timeout.
                left = max(0.0, self._handshake_deadline - time.monotonic()) + 0.001
                timeout = left if timeout is None else min(timeout, left)
            self.carrier.wait(read=read, write=write or bool(self._unsent), timeout=timeout)
            if self._unsent:
                self._drain_unsent()
