"""Listen sockets inside the keep, and :class:`KeepNetwork`, which makes the keep's sockets.

The host binds and accepts; each connection it accepted arrives as a channel stream, which
:meth:`ListenSocket.offer` (the channel's reader thread, under the endpoint's lock) queues until
the workload takes it with ``sock_accept``. The conventions are in :mod:`motte.shared.netstreams`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from motte.keep.net.carriers import ChannelCarrier
from motte.keep.net.sockets import NOTHING, StreamSocket, remaining
from motte.keep.wasi.files import WakeOn, WasiFile
from motte.shared import netstreams
from motte.shared.control import Accepted, ControlMessage
from motte.shared.endpoint import Endpoint
from motte.shared.errors import MotteError
from motte.shared.wasi_abi import Errno, FdFlags, Filetype, Rights, WasiError

if TYPE_CHECKING:  # ssl is loaded only by keeps that do TLS
    import ssl

LISTEN_RIGHTS = Rights.SOCK_ACCEPT | Rights.POLL_FD_READWRITE | Rights.FD_FDSTAT_SET_FLAGS | Rights.FD_FILESTAT_GET
BACKLOG_LIMIT = 1024  # connections a listen socket holds for the workload; the host should send far fewer


class Listener(WasiFile):
    """A listen socket, however its connections arrive: what ``sock_accept`` takes."""

    filetype = Filetype.SOCKET_STREAM
    rights_base = LISTEN_RIGHTS

    def accept(self, flags: FdFlags, deadline: float | None) -> StreamSocket:
        raise NotImplementedError

    def read(self, size: int, deadline: float | None) -> bytes:
        raise WasiError(Errno.NOTCONN)

    def write(self, data: bytes, deadline: float | None) -> int:
        raise WasiError(Errno.NOTCONN)

    def writable_now(self) -> bool:
        return False  # as poll(2) on a listening socket: never writable


class ListenSocket(Listener):
    """A listen socket: the host bound the port; each connection it accepts arrives as a stream."""

    def __init__(self, endpoint: Endpoint, fd: int, *, tls_context: ssl.SSLContext | None,
                 report: Callable[[ControlMessage], None], on_block: Callable[[], None] = NOTHING,
                 handshake_timeout: float = 10.0):
        super().__init__()
        self.endpoint = endpoint
        self.report = report  # sends a control message to the host, in the order of shared/control.py
        self.fd = fd
        self.tls_context = tls_context
        self._on_block = on_block
        self._handshake_timeout = handshake_timeout
        self._backlog: deque[int] = deque()
        self._lock = threading.Lock()  # offer() runs on the channel's reader thread
        self._closed = False
        self._wake_on_connection = WakeOn(endpoint, condition=self._has_backlog)

    def offer(self, stream: int) -> str | None:
        """A connection for this socket arrived (reader thread, endpoint lock held): queue it."""
        with self._lock:
            if self._closed:
                return netstreams.UNACCEPTED  # the workload closed the listen socket
            if len(self._backlog) >= BACKLOG_LIMIT:
                return netstreams.failure("ECONNREFUSED", "the listen socket's backlog is full")
            self._backlog.append(stream)
        return None

    def _has_backlog(self) -> bool:
        return bool(self._backlog)

    def accept(self, flags: FdFlags, deadline: float | None) -> StreamSocket:
        if flags & ~FdFlags.NONBLOCK:
            raise WasiError(Errno.INVAL)
        if not self._backlog:
            if self.endpoint.closed is not None:
                raise WasiError(Errno.CONNABORTED)  # the host is gone: no connection will come
            if self.flags & FdFlags.NONBLOCK:
                raise WasiError(Errno.AGAIN)
            self._on_block()
            while not self._backlog:
                if self.endpoint.closed is not None:
                    raise WasiError(Errno.CONNABORTED)
                self.endpoint.wait((), remaining(deadline), condition=self._has_backlog)
        with self._lock:
            stream = self._backlog.popleft()
        try:
            self.report(Accepted(stream))
        except MotteError:
            raise WasiError(Errno.CONNABORTED) from None
        tls = None
        if self.tls_context is not None:
            from motte.keep.net.tls import TlsSession

            tls = TlsSession(self.tls_context, server_side=True)
        return StreamSocket(ChannelCarrier(self.endpoint, stream), tls=tls, flags=flags, on_block=self._on_block,
                            handshake_timeout=self._handshake_timeout)

    def readable_now(self) -> bool:
        # With the channel gone, accept fails at once: report that rather than wait for ever.
        return bool(self._backlog) or self.endpoint.closed is not None

    def wake_on(self, write: bool) -> WakeOn | None:
        return None if write else self._wake_on_connection

    def close(self) -> None:
        with self._lock:
            self._closed = True
            waiting = list(self._backlog)
            self._backlog.clear()
        for stream in waiting:
            # As when a server exits with clients still queued: nothing to warn about, and the host
            # learns that this socket takes no more.
            self.endpoint.reset(stream, netstreams.UNACCEPTED)


class KeepNetwork:
    """The keep's sockets: routes the connections the host accepted to their listen socket and
    asks the host for outbound ones."""

    def __init__(self, endpoint: Endpoint, *, report: Callable[[ControlMessage], None],
                 on_block: Callable[[], None] = NOTHING, handshake_timeout: float = 10.0):
        self.endpoint = endpoint
        self.report = report
        self.on_block = on_block
        self.handshake_timeout = handshake_timeout
        self.listeners: dict[int, ListenSocket] = {}

    def listen(self, fd: int, tls_context: ssl.SSLContext | None) -> ListenSocket:
        listener = ListenSocket(self.endpoint, fd, tls_context=tls_context, report=self.report,
                                on_block=self.on_block, handshake_timeout=self.handshake_timeout)
        self.listeners[fd] = listener
        return listener

    def connect(self, fd: int | None, host: str, port: int, tls_context: ssl.SSLContext | None) -> StreamSocket:
        """A workload's connect file (``fd``), or with ``fd=None`` the runtime's own connection to
        the config's Steward. Opened now, so the host connects while the workload is still being
        instantiated."""
        if fd is None:
            stream = self.endpoint.open_stream(netstreams.CONNECT, host=host, port=port, **{netstreams.STEWARD: True})
        else:
            stream = self.endpoint.open_stream(netstreams.CONNECT, fd=fd, host=host, port=port)
        tls = None
        if tls_context is not None:
            from motte.keep.net.tls import TlsSession

            tls = TlsSession(tls_context, server_side=False, server_hostname=host)
        return StreamSocket(ChannelCarrier(self.endpoint, stream), tls=tls, connecting=True, on_block=self.on_block,
                            handshake_timeout=self.handshake_timeout)

    def start(self) -> None:
        """Take accepted connections from now on (any that arrived earlier are handed over too)."""
        self.endpoint.route_opens(netstreams.ACCEPTED, self._offer)

    def _offer(self, stream: int, meta: dict[str, Any]) -> str | None:
        fd = meta.get("fd")
        listener = self.listeners.get(fd) if isinstance(fd, int) and not isinstance(fd, bool) else None
        if listener is None:
            return netstreams.failure("ECONNREFUSED", f"fd {fd!r} is not a listen socket of this keep")
        return listener.offer(stream)
