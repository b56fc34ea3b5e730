"""Listen sockets the host handed over to a nil keep, and the connections accepted on them.

A nil keep is a process on the host, with no isolation from it: relaying its connections buys
nothing, and costs every request and every answer a wake-up of the host and a copy on each side.
So the host binds a nil keep's listen sockets as always (a port in use still fails the run at
once) and then hands them over (:mod:`motte.shared.socket_handover`); the keep accepts on them
itself and the host takes no part in the connections. TLS still ends here, above the carrier
(:class:`SocketCarrier`), exactly as on a relayed connection. A VM keep's connections are always
relayed: the channel is its only way out.

Everything runs on the workload's thread. Waits go through the channel's endpoint
(``Endpoint.wait(fds=...)``), so the channel is still read while the workload waits on a socket.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from motte.keep.net.listen import Listener
from motte.keep.net.sockets import LINGER, NOTHING, RECV_CHUNK, StreamSocket, remaining, split_at
from motte.keep.wasi.files import WakeOn
from motte.shared import netstreams
from motte.shared.channel import INITIAL_WINDOW
from motte.shared.control import ConnectionFailed, ControlMessage
from motte.shared.endpoint import Endpoint, StreamAborted
from motte.shared.endpoint import Timeout as EndpointTimeout
from motte.shared.errors import MotteError
from motte.shared.transport import ReceiveBuffer
from motte.shared.wasi_abi import Errno, FdFlags, WasiError

if TYPE_CHECKING:  # ssl is loaded only by keeps that do TLS
    import ssl

#: The most a connection holds queued in the keep beyond what the kernel's send buffer took (what
#: lets a write return before the peer has read, as a relayed connection's channel credit).
WINDOW = 256 << 10
_READABLE = select.POLLIN
_WRITABLE = select.POLLOUT
#: Errors of accept(2) that concern only the connection being accepted: take the next one.
_ACCEPT_RETRY = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
_received = ReceiveBuffer(RECV_CHUNK)  # one for all sockets: the workload's thread is the only reader


class SendQueues:
    """The bytes a keep's own sockets hold beyond what their kernels took.

    Bounded together: each socket may always hold ``INITIAL_WINDOW``, and more, up to ``WINDOW``,
    only while the total stays within ``total`` (the keep's budget for buffered stream data, as for
    the credit of relayed connections). And sent by a thread of their own as soon as the kernels
    take them, as a kernel sends what a socket's buffer holds: a workload that wrote, and then waits
    on something else, does not hold its peer up (the thread runs only while something is queued).
    """

    def __init__(self, total: int):
        self.total = total
        self.queued = 0
        self.lock = threading.RLock()  # the queues and their sockets' sends
        self._waiting: dict[int, SocketCarrier] = {}  # by fd: the sockets holding queued bytes
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sender: threading.Thread | None = None

    def cap(self, queued_here: int) -> int:
        """What a socket holding ``queued_here`` may hold."""
        return max(INITIAL_WINDOW, min(WINDOW, self.total - self.queued + queued_here))

    def window(self, queued_here: int) -> int:
        """What a socket holding ``queued_here`` may queue more."""
        return max(0, self.cap(queued_here) - queued_here)

    def send_later(self, carrier: SocketCarrier) -> None:
        """Lock held: ``carrier`` holds queued bytes; send them once its kernel takes them."""
        self._waiting[carrier.fd] = carrier
        if self._sender is None:
            self._sender = threading.Thread(target=self._send_loop, name="keep-socket-sender", daemon=True)
            self._sender.start()
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # woken already

    def sent(self, carrier: SocketCarrier) -> None:
        """Lock held: ``carrier`` holds nothing queued any more."""
        if self._waiting.get(carrier.fd) is carrier:
            del self._waiting[carrier.fd]

    def _send_loop(self) -> None:
        while True:
            poller = select.poll()
            poller.register(self._wake_r, _READABLE)
            with self.lock:
                for fd in self._waiting:
                    poller.register(fd, _WRITABLE)
            ready = poller.poll()
            with self.lock:
                for fd, _events in ready:
                    if fd == self._wake_r:
                        while True:
                            try:
                                os.read(self._wake_r, 4096)
                            except BlockingIOError:
                                break
                        continue
                    carrier = self._waiting.get(fd)
                    if carrier is not None:
                        carrier.send_queued()


class SocketCarrier:
    """A :class:`~motte.keep.net.carriers.Carrier` over a TCP socket of the keep's own."""

    def __init__(self, endpoint: Endpoint, sock: socket.socket, queues: SendQueues,
                 on_failure: Callable[[str], None] = lambda _r: None):
        sock.setblocking(False)
        self.endpoint = endpoint
        self.queues = queues
        self.sock = sock
        self.fd = sock.fileno()
        self._on_failure = on_failure  # told why this side gave the connection up (the host warns)
        self._inbound = b""  # read ahead by readable()
        self._eof = False
        self._reset: str | None = None
        self._queued = bytearray()  # written, not yet taken by the kernel
        self._closed = False
        self._readable_wake = WakeOn(endpoint, fd=(self.fd, _READABLE))

    def read_nowait(self, size: int) -> bytes | None:
        if self._inbound:
            data, self._inbound = split_at(self._inbound, size)
            return data
        if self._reset is not None:
            raise StreamAborted(self._reset)
        if self._eof:
            return b""
        try:
            data = _received.recv(self.sock.recv_into, size)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            self._failed(exc)
        if not data:
            self._eof = True
        return data

    def readable(self) -> bool:
        if self._inbound or self._eof or self._reset is not None:
            return True
        try:
            data = self.read_nowait(RECV_CHUNK)
        except StreamAborted:
            return True
        if data is None:
            return False
        self._inbound = data
        return True

    def write_window(self) -> int:
        if self._reset is not None or self._closed:
            return 0
        if self._queued and not self.send_queued():
            return 0
        return self.queues.window(len(self._queued))

    def write(self, data: bytes | memoryview, deadline: float | None = None) -> None:
        if self._reset is not None:
            raise StreamAborted(self._reset)
        if not self._queued:
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._failed(exc)
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
        self._queue(data)
        # Beyond the window (a blocking write) wait for the peer to read, as for channel credit.
        while len(self._queued) > self.queues.cap(len(self._queued)) and not self.send_queued():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise EndpointTimeout("the peer did not read in time")
            self.wait(read=False, write=True, timeout=left)
        if self._reset is not None:
            raise StreamAborted(self._reset)

    def eof(self) -> None:
        deadline = time.monotonic() + LINGER  # what a relayed connection waits for credit at close
        while self._queued and self._reset is None and not self.send_queued() and time.monotonic() < deadline:
            self.wait(read=False, write=True, timeout=deadline - time.monotonic())
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def reset(self, reason: str = "") -> None:
        if self._closed:
            return
        if reason not in ("", netstreams.CLOSED) and self._reset is None:
            self._on_failure(reason)
            self.send_queued()  # e.g. the TLS alert that tells the peer why
        with self.queues.lock:
            self._closed = True
            self._unqueue(len(self._queued))
            self.sock.close()

    def reset_reason(self) -> str | None:
        return self._reset

    def gone(self) -> bool:
        return False  # the connection does not depend on the channel

    def wait(self, *, read: bool, write: bool, timeout: float | None) -> None:
        self.endpoint.wait((), timeout, fds=((self.fd, self._events(read, write)),))

    def wake_on(self, *, read: bool, write: bool, until: float | None) -> WakeOn:
        if read and not write and until is None:
            return self._readable_wake
        return WakeOn(self.endpoint, until=until, fd=(self.fd, self._events(read, write)))

    def _events(self, read: bool, write: bool) -> int:
        return (_READABLE if read else 0) | (_WRITABLE if write else 0)

    def send_queued(self) -> bool:
        """Hand queued bytes to the kernel as far as it takes them: True when none are left. (The
        workload's thread, or the queues' sender.)"""
        with self.queues.lock:
            while self._queued and self._reset is None and not self._closed:
                try:
                    sent = self.sock.send(self._queued)
                except (BlockingIOError, InterruptedError):
                    return False
                except OSError as exc:
                    try:
                        self._failed(exc)
                    except StreamAborted:
                        return True
                self._unqueue(sent)
            return not self._queued

    def _queue(self, data: bytes | memoryview) -> None:
        with self.queues.lock:
            self._queued += data
            self.queues.queued += len(data)
            self.queues.send_later(self)

    def _unqueue(self, count: int) -> None:
        """Lock held."""
        del self._queued[:count]
        self.queues.queued -= count
        if not self._queued:
            self.queues.sent(self)

    def _failed(self, exc: OSError) -> NoReturn:
        """The peer reset the connection (or the network failed it): as a RESET from the host."""
        with self.queues.lock:
            self._unqueue(len(self._queued))
        self._reset = netstreams.failure(errno.errorcode.get(exc.errno or 0, ""), (exc.strerror or str(exc)).lower())
        raise StreamAborted(self._reset)


class HandedOverListenSocket(Listener):
    """A listen socket the host bound and handed over: the keep accepts on it itself."""

    def __init__(self, endpoint: Endpoint, fd: int, sock: socket.socket, *, tls_context: ssl.SSLContext | None,
                 queues: SendQueues, report: Callable[[ControlMessage], None], on_block: Callable[[], None] = NOTHING,
                 handshake_timeout: float = 10.0):
        super().__init__()
        sock.setblocking(False)
        self.endpoint = endpoint
        self.queues = queues  # the keep's, shared by all its own sockets
        self.fd = fd
        self.sock = sock
        self.tls_context = tls_context
        self.report = report  # the host warns about connections the keep gave up, as it does for relayed ones
        self._on_block = on_block
        self._handshake_timeout = handshake_timeout
        self._watch = (sock.fileno(), _READABLE)
        self._wake_on_connection = WakeOn(endpoint, fd=self._watch)
        self._probe = select.poll()
        self._probe.register(*self._watch)

    def accept(self, flags: FdFlags, deadline: float | None) -> StreamSocket:
        if flags & ~FdFlags.NONBLOCK:
            raise WasiError(Errno.INVAL)
        while True:
            try:
                conn, peer = self.sock.accept()
                break
            except (BlockingIOError, InterruptedError):
                if self.flags & FdFlags.NONBLOCK:
                    raise WasiError(Errno.AGAIN) from None
                self._on_block()
                self.endpoint.wait((), remaining(deadline), fds=(self._watch,))
            except OSError as exc:
                if exc.errno not in _ACCEPT_RETRY:
                    raise WasiError(Errno.NFILE if exc.errno in (errno.EMFILE, errno.ENFILE) else Errno.NOMEM) from None
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        where = netstreams.address(peer)
        carrier = SocketCarrier(self.endpoint, conn, self.queues, lambda reason: self._report_failure(where, reason))
        tls = None
        if self.tls_context is not None:
            from motte.keep.net.tls import TlsSession

            tls = TlsSession(self.tls_context, server_side=True)
        return StreamSocket(carrier, tls=tls, flags=flags, on_block=self._on_block,
                            handshake_timeout=self._handshake_timeout)

    def _report_failure(self, peer: str, reason: str) -> None:
        try:
            self.report(ConnectionFailed(self.fd, peer, reason))
        except MotteError:
            pass  # the channel is gone, or the run is over: nobody left to warn

    def readable_now(self) -> bool:
        return bool(self._probe.poll(0))

    def wake_on(self, write: bool) -> WakeOn | None:
        return None if write else self._wake_on_connection

    def close(self) -> None:
        self.sock.close()  # clients still queued in the kernel are refused, as with any server
