"""The host's byte relay between TCP sockets and the keep's channel streams.

One thread runs every socket through an epoll :class:`Poller`; bytes from the keep are passed on by the
channel's reader thread as they arrive (one thread switch less per message), under the same lock.
Backpressure is end to end: the relay reads from a TCP socket only as much as the keep has granted
credit for on its stream, and takes bytes from a stream only when the TCP socket has taken the
previous ones. A slow reader on either side therefore stalls its own connection only, and no
buffer grows beyond a stream's window.

Which sockets exist is :class:`motte.host.net.HostNetwork`'s business: it hands the relay each
connection once it is made, and gets a turn on the relay thread after every round of events.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable

from motte.shared import netstreams
from motte.shared.endpoint import ChannelClosed, Endpoint, StreamAborted
from motte.shared.transport import ReceiveBuffer

MAX_CONNECTIONS = 1024  # open connections per keep (the channel allows 4096 streams per side)
RECV_SIZE = 256 << 10
LINGER = 5.0  # seconds a connection the keep closed is drained of the client's unread bytes
MAX_LINGERING = 256  # connections drained at once; beyond that a close may reset

#: Sees every byte the host relays: ``tap(event, stream, data)`` with event ``"open"``,
#: ``"to-keep"``, ``"from-keep"`` or ``"close"``. For tests and debugging.
Tap = Callable[[str, int, bytes], None]
#: The events a socket is watched for, and a handler told (with EPOLLERR, EPOLLHUP and the like).
READ, WRITE = select.EPOLLIN, select.EPOLLOUT
#: Told the epoll events of its file descriptor.
Handler = Callable[[int], None]
# As the selectors module has it: an error or hang-up is reported as whatever the handler waits
# for (the read or the write then meets it).
_READABLE, _WRITABLE = ~WRITE, ~READ


class Poller:
    """``epoll`` with a handler per file descriptor, for the relay thread.

    The ``selectors`` module does the same with a few microseconds more of Python per wake-up,
    and the relay wakes twice a round trip.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._handlers: dict[int, Handler] = {}

    def register(self, fileobj: socket.socket | int, events: int, handler: Handler) -> None:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        self._epoll.register(fd, events)
        self._handlers[fd] = handler

    def modify(self, fileobj: socket.socket, events: int) -> None:
        self._epoll.modify(fileobj.fileno(), events)

    def unregister(self, fileobj: socket.socket | int) -> None:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        self._handlers.pop(fd, None)
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass  # closed since it was registered (the channel, when the keep ends): epoll dropped it

    def poll(self, timeout: float) -> list[tuple[Handler, int]]:
        """The handlers of the file descriptors that are ready, with their events."""
        handlers = self._handlers
        return [(handlers[fd], events) for fd, events in self._epoll.poll(timeout) if fd in handlers]

    def close(self) -> None:
        self._epoll.close()


class Connection:
    """One TCP connection and the channel stream it is relayed over."""

    __slots__ = ("closed", "keep_eof", "label", "mask", "on_refused", "out", "peer_eof", "pending", "reset", "sock",
                 "stream", "warn_on_reset")

    def __init__(self, stream: int, sock: socket.socket, label: str, *, pending: set[int] | None = None,
                 on_refused: Callable[[], None] | None = None, warn_on_reset: bool = True):
        self.stream = stream
        self.sock = sock
        self.label = label
        self.pending = pending  # an accepted connection: its listen socket's streams the workload has not taken
        self.on_refused = on_refused  # called when the keep says the workload's listen socket is closed
        self.warn_on_reset = warn_on_reset  # False where the keep reports the failure itself
        self.out: memoryview | None = None  # bytes from the keep the TCP socket has not taken yet
        self.peer_eof = False  # the TCP peer half-closed; EOF went to the keep
        self.keep_eof = False  # the keep half-closed; the TCP socket was shut down for writing
        self.reset: str | None = None  # the keep ended the stream (reason)
        self.mask = 0  # the events registered with the poller (READ, WRITE)
        self.closed = False


class Relay:
    """The relay thread and its connections: :meth:`start`, :meth:`add` each connection, :meth:`stop`.

    ``on_round`` runs on the relay thread after each round of events, ``on_stop`` when the relay
    stops taking new connections and again when it closes; both with :attr:`lock` held, as is
    every callback given to :meth:`watch` and :meth:`post`.
    """

    endpoint: Endpoint  # set by start()

    def __init__(self, *, warn: Callable[[str], None], tap: Tap | None, on_round: Callable[[], None],
                 on_stop: Callable[[], None]):
        self._warn = warn
        self._tap = tap
        self._on_round = on_round
        self._on_stop = on_stop
        self._conns: dict[int, Connection] = {}
        self._lingering: dict[socket.socket, float] = {}  # closed by the keep, drained until EOF or the deadline
        self._received = ReceiveBuffer(RECV_SIZE)  # for every socket: only the relay thread reads them
        self._discard = bytearray(256 << 10)  # what lingering connections still send
        self._poller = Poller()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # The relay state (connections, the poller); reentrant: the channel's events reach
        # _on_stream_event from pump(), on the relay thread, which holds it already.
        self.lock = threading.RLock()
        self._post_lock = threading.Lock()  # guards the two fields below (other threads post to them)
        self._posted: list[Callable[[], None]] = []
        self._wake_pending = False
        self._thread: threading.Thread | None = None
        self._channel_fd: int | None = None  # while the relay thread reads the channel
        self._stop_at: float | None = None

    @property
    def stopping(self) -> bool:
        return self._stop_at is not None

    def can_open(self) -> bool:
        """Whether a new connection may be made (not stopping, and below MAX_CONNECTIONS)."""
        return self._stop_at is None and len(self._conns) < MAX_CONNECTIONS

    def start(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._poller.register(self._wake_r, READ, self._on_wake)
        self.endpoint.observe(self._on_stream_event)
        # This thread reads the channel too: a request and its answer then wake one host thread,
        # not two that hand the GIL to each other on every round trip.
        channel_fd = self.endpoint.lend_reading()
        if channel_fd >= 0:  # (-1: the keep is gone already; the run reports how it ended)
            self._channel_fd = channel_fd
            self._poller.register(channel_fd, READ, self._on_channel)
        self._thread = threading.Thread(target=self._run, name="motte-net", daemon=True)
        self._thread.start()

    def stop(self, grace: float) -> None:
        """Take no new connections; let those the keep has finished flush for up to ``grace``
        seconds; then close every socket."""
        if self._thread is not None:
            self.post(lambda: self._begin_stop(grace))
            self._thread.join(grace + 5.0)
            self.endpoint.observe(None)
        with self.lock:
            self.close_all()

    def post(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the relay thread (from any thread)."""
        with self._post_lock:
            self._posted.append(action)
        self._wake()

    def watch(self, sock: socket.socket, on_readable: Handler) -> None:
        self._poller.register(sock, READ, on_readable)

    def unwatch(self, sock: socket.socket) -> None:
        self._poller.unregister(sock)

    def add(self, conn: Connection) -> None:
        """Relay ``conn`` from now on (relay thread), starting with what the keep sent before."""
        self._conns[conn.stream] = conn
        self.endpoint.claim(conn.stream)
        if self._tap is not None:
            self._tap("open", conn.stream, b"")
        self._from_keep(conn)  # anything that came before the claim (a TLS ClientHello, say)
        self._update(conn)

    # ---- the relay thread ----

    def _run(self) -> None:
        poll = self._poller.poll
        try:
            while True:
                timeout = 1.0
                if self._stop_at is not None:
                    if (not self._conns and not self._lingering) or time.monotonic() >= self._stop_at:
                        return
                    timeout = 0.05
                ready = poll(timeout)
                with self.lock:
                    for handler, mask in ready:
                        handler(mask)
                    if self._posted:  # (looked at without _post_lock: a post also wakes the poll)
                        self._process_posted()
                    self._on_round()
                    if self._lingering:
                        self._expire_lingering()
        except Exception as exc:  # a relay bug must not hang the run: report it, drop the sockets
            self._warn(f"the network relay failed: {type(exc).__name__}: {exc}")
        finally:
            with self.lock:
                self._stop_reading_channel()
                self.close_all()

    def _on_channel(self, _mask: int) -> None:
        if not self.endpoint.pump():
            self._stop_reading_channel()  # the keep is gone (the observer was told)

    def _stop_reading_channel(self) -> None:
        if self._channel_fd is not None:
            self._poller.unregister(self._channel_fd)
            self._channel_fd = None
            self.endpoint.reclaim_reading()  # the run goes on: its exit report must still arrive

    def _on_stream_event(self, stream: int) -> None:
        # The relay thread (or, once it stopped, the channel's reader thread): pass the keep's bytes
        # on at once (the sockets do not block).
        if stream == 0:
            self.post(self._drop_connections)  # the channel closed: the keep is gone
            return
        with self.lock:
            conn = self._conns.get(stream)
            if conn is not None:
                self._from_keep(conn)
                self._update(conn)

    def _wake(self) -> None:
        with self._post_lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # full (the relay is awake anyway) or closed (it is gone)

    def _on_wake(self, _mask: int) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _process_posted(self) -> None:
        with self._post_lock:
            actions, self._posted = self._posted, []
            self._wake_pending = False
        for action in actions:
            action()

    def _drop_connections(self) -> None:
        # The keep is gone. What it sent still reaches the clients (within stop()'s grace): a
        # connection closes once its last bytes are out (_from_keep finds the channel closed).
        for conn in list(self._conns.values()):
            self._from_keep(conn)
            self._update(conn)

    def _begin_stop(self, grace: float) -> None:
        self._stop_at = time.monotonic() + grace
        self._on_stop()

    # ---- relaying ----

    def _update(self, conn: Connection) -> None:
        if conn.closed:
            return
        mask = 0
        if not conn.peer_eof and conn.reset is None and self.endpoint.write_window(conn.stream) > 0:
            mask |= READ  # only with credit: that is the backpressure on the peer
        if conn.out is not None:
            mask |= WRITE
        if mask == conn.mask:
            return
        if conn.mask == 0:
            self._poller.register(conn.sock, mask, lambda events: self._on_socket(conn, events))
        elif mask == 0:
            self._poller.unregister(conn.sock)
        else:
            self._poller.modify(conn.sock, mask)
        conn.mask = mask

    def _on_socket(self, conn: Connection, events: int) -> None:
        if conn.closed:
            return  # closed by the reader thread after the poller reported it
        if events & _WRITABLE and conn.mask & WRITE:
            self._flush(conn)
        if events & _READABLE and conn.mask & READ and not conn.closed:
            self._from_peer(conn)
        self._update(conn)

    def _from_peer(self, conn: Connection) -> None:
        window = self.endpoint.write_window(conn.stream)
        if window <= 0:
            return
        try:
            data = self._received.recv(conn.sock.recv_into, window)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._peer_failed(conn, exc)
            return
        if not data:
            conn.peer_eof = True
            self.endpoint.eof(conn.stream)
            self._finish_if_done(conn)
            return
        if self._tap is not None:
            self._tap("to-keep", conn.stream, data)
        try:
            self.endpoint.write(conn.stream, data)  # no more than the credit: it never waits
        except (StreamAborted, ChannelClosed):
            self._from_keep(conn)  # the keep ended the stream: find out how

    def _from_keep(self, conn: Connection) -> None:
        while conn.out is None and not conn.closed:
            try:
                data = self.endpoint.read_nowait(conn.stream, RECV_SIZE)
            except StreamAborted:  # also after EOF: the keep closed its socket
                self._keep_reset(conn, self.endpoint.reset_reason(conn.stream))
                return
            except ChannelClosed:
                self._close(conn)
                return
            if data is None:
                return
            if not data:
                if not conn.keep_eof:
                    conn.keep_eof = True
                    try:
                        conn.sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    self._finish_if_done(conn)
                return
            if self._tap is not None:
                self._tap("from-keep", conn.stream, data)
            self._send(conn, memoryview(data))

    def _send(self, conn: Connection, data: memoryview) -> None:
        try:
            sent = conn.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._peer_failed(conn, exc)
            return
        conn.out = data[sent:] if sent < len(data) else None

    def _flush(self, conn: Connection) -> None:
        if conn.out is not None:
            self._send(conn, conn.out)
        if conn.out is None and not conn.closed:
            if conn.reset is not None:
                self._retire(conn)  # the keep's last bytes are out
            else:
                self._from_keep(conn)

    def _keep_reset(self, conn: Connection, reason: str | None) -> None:
        conn.reset = reason or "reset"
        if conn.reset == netstreams.UNACCEPTED and conn.on_refused is not None:
            conn.on_refused()  # the workload's listen socket is closed
        if conn.reset not in (netstreams.CLOSED, netstreams.UNACCEPTED) and conn.warn_on_reset:
            self._warn(f"{conn.label}: closed by the keep: {conn.reset}")
        if conn.out is None:
            self._retire(conn)

    def _peer_failed(self, conn: Connection, exc: OSError) -> None:
        # The peer vanished mid-stream: only its own stream ends.
        text = (exc.strerror or str(exc)).lower()
        self.endpoint.reset(conn.stream, netstreams.failure("ECONNRESET", f"the peer's connection failed: {text}"))
        self._close(conn)

    def _finish_if_done(self, conn: Connection) -> None:
        if conn.peer_eof and conn.keep_eof and conn.out is None:
            self._close(conn)

    def _close(self, conn: Connection) -> None:
        if not conn.closed:
            self._forget(conn)
            conn.sock.close()

    def _forget(self, conn: Connection) -> None:
        conn.closed = True
        if conn.mask:
            self._poller.unregister(conn.sock)
            conn.mask = 0
        self.endpoint.reset(conn.stream, netstreams.CLOSED)  # frees the stream; a frame only if still open
        self._conns.pop(conn.stream, None)
        if self._tap is not None:
            self._tap("close", conn.stream, b"")
        if conn.pending is not None:
            conn.pending.discard(conn.stream)

    # ---- lingering close ----

    def _retire(self, conn: Connection) -> None:
        """The keep closed the connection and its last bytes are out. If the client may still be
        sending, close gracefully: closing a socket with unread bytes resets the connection, and a
        reset can destroy the answer before the client has read it (an HTTP server that answers
        without reading the whole request). So: FIN now, then read and discard what the client
        still sends, until it closes too or LINGER seconds have passed."""
        if conn.closed:
            return
        if conn.peer_eof or conn.reset != netstreams.CLOSED or len(self._lingering) >= MAX_LINGERING:
            self._close(conn)
            return
        self._forget(conn)
        sock = conn.sock
        if not conn.keep_eof:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                sock.close()
                return
        self._lingering[sock] = time.monotonic() + LINGER
        self._poller.register(sock, READ, lambda _mask: self._drain_lingering(sock))

    def _drain_lingering(self, sock: socket.socket) -> None:
        for _ in range(16):  # at most 4 MiB per wake-up: other connections go on meanwhile
            try:
                count = sock.recv_into(self._discard)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                count = 0
            if not count:
                self._end_lingering(sock)
                return

    def _expire_lingering(self) -> None:
        now = time.monotonic()
        for sock in [sock for sock, deadline in self._lingering.items() if deadline <= now]:
            self._end_lingering(sock)

    def _end_lingering(self, sock: socket.socket) -> None:
        if self._lingering.pop(sock, None) is not None:
            self._poller.unregister(sock)
            sock.close()

    # ---- the end ----

    def close_all(self) -> None:
        """Close every socket now (with :attr:`lock` held, or before :meth:`start`)."""
        self._on_stop()
        for conn in list(self._conns.values()):
            conn.closed = True
            conn.sock.close()
            self.endpoint.reset(conn.stream, netstreams.CLOSED)
        self._conns.clear()
        for sock in self._lingering:
            sock.close()
        self._lingering.clear()
        self._poller.close()
        self._wake_r.close()
        self._wake_w.close()
