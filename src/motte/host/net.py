"""The host's half of keep networking: the host does TCP, the keep does TLS.

For each ``listen`` file the host binds the port before the workload starts (a port in use fails
the run at once), accepts connections and opens one channel stream per connection. For each
``connect`` file the keep opens a stream and the host makes the TCP connection. Then bytes are
relayed both ways. For ``prot = "tls"`` they are TLS records whose session ends inside the keep:
the host never holds a key nor sees plaintext. The conventions on the channel are in
:mod:`motte.shared.netstreams`. When the config names a ``steward``, the keep's runtime also asks
for one connection to the Steward's host and port (and only there), to get its certificate.

One thread runs every socket through a selector; bytes from the keep are passed on by the
channel's reader thread as they arrive (one thread switch less per message), under the same lock.
Backpressure is end to end: the relay reads from a TCP socket only as much as the keep has granted
credit for on its stream, and takes bytes from a stream only when the TCP socket has taken the
previous ones. A slow reader on either side therefore stalls its own connection only, and no
buffer grows beyond a stream's window.
"""

from __future__ import annotations

import errno
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from motte.shared import netstreams
from motte.shared.enarx_config import FileSpec, WorkloadConfig
from motte.shared.endpoint import ChannelClosed, Endpoint, ReceiveBuffer, StreamAborted
from motte.shared.errors import MotteError

LISTEN_BACKLOG = 128  # the kernel's queue of connections the host has not accepted yet
KEEP_BACKLOG = 64  # connections per listen socket handed to the keep but not yet taken by the workload
MAX_CONNECTIONS = 1024  # open connections per keep (the channel allows 4096 streams per side)
CONNECT_TIMEOUT = 10.0
RECV_SIZE = 256 << 10
MAX_CA_BUNDLE = 128 << 10
MAX_WARNINGS = 20  # per run; a flood of bad clients must not flood the terminal
ACCEPT_RETRY = 1.0  # seconds before accepting again after the host ran out of file descriptors
LINGER = 5.0  # seconds a connection the keep closed is drained of the client's unread bytes
MAX_LINGERING = 256  # connections drained at once; beyond that a close may reset
_STEWARD_LABEL = "steward"  # the keep runtime's own connection to the config's Steward

#: Sees every byte the host relays: ``tap(event, stream, data)`` with event ``"open"``,
#: ``"to-keep"``, ``"from-keep"`` or ``"close"``. For tests and debugging.
Tap = Callable[[str, int, bytes], None]


class NetworkError(MotteError):
    """The host cannot provide a socket the workload config asks for."""


def _stderr_warning(text: str) -> None:
    sys.stderr.write(f"motte: warning: {text}\n")
    sys.stderr.flush()


def _address(sockaddr: Any) -> str:
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Listener:
    __slots__ = ("active", "fd", "pending", "resume_at", "sock", "spec")

    def __init__(self, fd: int, spec: FileSpec, sock: socket.socket):
        self.fd = fd
        self.spec = spec
        self.sock = sock
        self.pending: set[int] = set()  # streams the workload has not accepted yet
        self.active = False  # registered with the selector
        self.resume_at = 0.0


class _Connection:
    __slots__ = ("closed", "keep_eof", "label", "listener", "mask", "out", "peer_eof", "reset", "sock", "stream")

    def __init__(self, stream: int, sock: socket.socket, label: str, listener: _Listener | None):
        self.stream = stream
        self.sock = sock
        self.label = label
        self.listener = listener
        self.out: memoryview | None = None  # bytes from the keep the TCP socket has not taken yet
        self.peer_eof = False  # the TCP peer half-closed; EOF went to the keep
        self.keep_eof = False  # the keep half-closed; the TCP socket was shut down for writing
        self.reset: str | None = None  # the keep ended the stream (reason)
        self.mask = 0  # selector events registered
        self.closed = False


class HostNetwork:
    """The sockets of one run: :meth:`prepare` (before the keep starts), :meth:`start`, :meth:`close`."""

    endpoint: Endpoint  # set by start()

    def __init__(self, config: WorkloadConfig, *, config_dir: str | None = None,
                 warn: Callable[[str], None] = _stderr_warning, tap: Tap | None = None):
        self.config = config
        self.config_dir = Path(config_dir) if config_dir else None
        self._warn_sink = warn
        self._warnings = 0
        self._tap = tap
        self.ca_bundles: dict[str, str] = {}
        self.steward_ca: str | None = None  # the PEM of the config's steward_ca
        self._steward: tuple[str, int] | None = None  # where the keep may connect to reach its Steward
        self._listeners: list[_Listener] = []
        self._conns: dict[int, _Connection] = {}
        self._lingering: dict[socket.socket, float] = {}  # closed by the keep, drained until EOF or the deadline
        self._received = ReceiveBuffer(RECV_SIZE)  # for every socket: only the relay thread reads them
        self._discard = bytearray(256 << 10)  # what lingering connections still send
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._relay_lock = threading.Lock()  # the relay state: connections, listeners, the selector
        self._lock = threading.Lock()  # guards the three fields below (other threads post to them)
        self._posted: list[Callable[[], None]] = []
        self._wake_pending = False
        self._thread: threading.Thread | None = None
        self._stop_at: float | None = None
        self._closed = False

    # ---- before the launch ----

    def prepare(self) -> dict[str, str]:
        """Bind every listen socket and read every CA bundle, or fail with a clear error."""
        try:
            if self.config.steward is not None:
                from motte.shared.steward_http import parse_steward_url

                try:
                    url = parse_steward_url(self.config.steward)
                except MotteError as exc:
                    raise NetworkError(f"steward: {exc}") from None
                self._steward = (url.host, url.port)
            if self.config.steward_ca is not None:
                self.steward_ca = self._read_ca("steward_ca", self.config.steward_ca)
            for fd, spec in enumerate(self.config.files):
                if spec.kind == "listen":
                    self._listeners.append(_Listener(fd, spec, self._bind(fd, spec)))
                elif spec.kind == "connect" and spec.ca is not None:
                    self.ca_bundles[str(fd)] = self._read_ca(f"files[{fd}].ca", spec.ca)
        except BaseException:
            self._close_all()
            raise
        return self.ca_bundles

    def _bind(self, fd: int, spec: FileSpec) -> socket.socket:
        what = f"files[{fd}] (listen {spec.name!r})"
        addr = spec.addr or "::"
        port = spec.port or 0
        try:
            infos = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise NetworkError(f"{what}: cannot resolve the address {addr!r}: {exc.strerror}") from None
        family, kind, proto, _, sockaddr = infos[0]
        try:
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            if addr == "::" and exc.errno == errno.EAFNOSUPPORT:  # a host without IPv6
                family, sockaddr = socket.AF_INET, ("0.0.0.0", port)
                sock = socket.socket(family, kind, proto)
            else:
                raise NetworkError(f"{what}: cannot create a socket: {exc.strerror}") from None
        where = _address(sockaddr)
        try:
            # A port left in TIME_WAIT by an earlier run may be reused; one still listening may not.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and addr == "::":
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # "::" takes IPv4 too
            sock.bind(sockaddr)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            hint = None
            if exc.errno == errno.EADDRINUSE:
                hint = f"another program uses port {port}: stop it, or change port in the workload config"
            elif exc.errno == errno.EACCES:
                hint = "ports below 1024 need privileges: choose a higher port"
            elif exc.errno == errno.EADDRNOTAVAIL:
                hint = "the address is not one of this host's: change addr in the workload config"
            text = (exc.strerror or str(exc)).lower()
            raise NetworkError(f"{what}: cannot listen on {where}: {text}", hint=hint) from None
        return sock

    def _read_ca(self, what: str, name: str) -> str:
        path = Path(name)
        if not path.is_absolute() and self.config_dir is not None:
            path = self.config_dir / path
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NetworkError(f"{what}: {path}: no such file", hint="give the path of a PEM CA bundle") from None
        except OSError as exc:
            raise NetworkError(f"{what}: {path}: cannot read: {exc.strerror}") from None
        if len(data) > MAX_CA_BUNDLE:
            raise NetworkError(f"{what}: {path}: {len(data)} bytes, more than the {MAX_CA_BUNDLE} a bundle may have",
                               hint="name only the CA certificates this connection needs")
        text = data.decode("ascii", "replace")
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise NetworkError(f"{what}: {path}: no PEM certificate in it", hint="give a PEM CA bundle")
        return text

    # ---- running ----

    def start(self, endpoint: Endpoint) -> None:
        """Relay from now on over ``endpoint``: accept on the listen sockets, serve the keep's
        connect requests."""
        self.endpoint = endpoint
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        for listener in self._listeners:
            self._update_listener(listener)
        self.endpoint.observe(self._on_stream_event)
        self.endpoint.route_opens(netstreams.CONNECT, self._on_connect_request)
        self._thread = threading.Thread(target=self._run, name="motte-net", daemon=True)
        self._thread.start()

    def handle_control(self, message: dict[str, Any]) -> bool:
        """A control message from the keep about networking (True if it was one)."""
        if message.get("op") != netstreams.OP_ACCEPTED:
            return False
        stream = message.get("stream")
        if isinstance(stream, int):
            self._post(lambda: self._keep_accepted(stream))
        return True

    def close(self, grace: float = 2.0) -> None:
        """Stop accepting now; let connections the keep has finished flush for up to ``grace``
        seconds; then close every socket."""
        if self._closed:
            return
        if self._thread is not None:
            self._post(lambda: self._begin_stop(grace))
            self._thread.join(grace + 5.0)
            self.endpoint.observe(None)
        self._closed = True
        with self._relay_lock:
            self._close_all()

    # ---- the relay thread ----

    def _run(self) -> None:
        try:
            while True:
                timeout = 1.0
                if self._stop_at is not None:
                    if (not self._conns and not self._lingering) or time.monotonic() >= self._stop_at:
                        return
                    timeout = 0.05
                ready = self._selector.select(timeout)
                with self._relay_lock:
                    for key, mask in ready:
                        key.data(mask)
                    self._process_posted()
                    self._resume_listeners()
                    if self._lingering:
                        self._expire_lingering()
        except Exception as exc:  # a relay bug must not hang the run: report it, drop the sockets
            self._warn(f"the network relay failed: {type(exc).__name__}: {exc}")
        finally:
            with self._relay_lock:
                self._close_all()

    def _post(self, action: Callable[[], None]) -> None:
        with self._lock:
            self._posted.append(action)
        self._wake()

    def _on_stream_event(self, stream: int) -> None:
        # The channel's reader thread: pass the keep's bytes on at once (the sockets do not block).
        if stream == 0:
            self._post(self._drop_connections)  # the channel closed: the keep is gone
            return
        with self._relay_lock:
            conn = self._conns.get(stream)
            if conn is not None:
                self._from_keep(conn)
                self._update(conn)

    def _wake(self) -> None:
        with self._lock:
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
        with self._lock:
            actions, self._posted = self._posted, []
            self._wake_pending = False
        for action in actions:
            action()

    def _drop_connections(self) -> None:
        # The keep is gone. What it sent still reaches the clients (within close()'s grace): a
        # connection closes once its last bytes are out (_from_keep finds the channel closed).
        for conn in list(self._conns.values()):
            self._from_keep(conn)
            self._update(conn)

    def _begin_stop(self, grace: float) -> None:
        self._stop_at = time.monotonic() + grace
        for listener in self._listeners:
            if listener.active:
                self._selector.unregister(listener.sock)
                listener.active = False
            listener.sock.close()  # new clients are refused from now on

    # ---- listen sockets ----

    def _can_accept(self, listener: _Listener) -> bool:
        return (self._stop_at is None and len(listener.pending) < KEEP_BACKLOG
                and len(self._conns) < MAX_CONNECTIONS and time.monotonic() >= listener.resume_at)

    def _update_listener(self, listener: _Listener) -> None:
        # Not accepting leaves clients in the kernel's queue: they wait, or are refused once it is full.
        want = self._can_accept(listener)
        if want and not listener.active:
            self._selector.register(listener.sock, selectors.EVENT_READ, lambda _m: self._accept(listener))
        elif listener.active and not want:
            self._selector.unregister(listener.sock)
        listener.active = want

    def _resume_listeners(self) -> None:
        for listener in self._listeners:
            if not listener.active:
                self._update_listener(listener)

    def _accept(self, listener: _Listener) -> None:
        while self._can_accept(listener):
            try:
                sock, peer = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:
                    continue
                # Out of file descriptors or memory: back off instead of spinning on the listener.
                self._warn(f"files[{listener.fd}] (listen {listener.spec.name!r}): accept failed: {exc.strerror}")
                listener.resume_at = time.monotonic() + ACCEPT_RETRY
                break
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            where = _address(peer)
            try:
                stream = self.endpoint.open_stream(netstreams.ACCEPTED, fd=listener.fd, peer=where)
            except MotteError:
                sock.close()  # the channel is gone; the run is ending
                break
            label = f"files[{listener.fd}] (listen {listener.spec.name!r}): connection from {where}"
            conn = _Connection(stream, sock, label, listener)
            listener.pending.add(stream)
            self._conns[stream] = conn
            self.endpoint.claim(stream)
            if self._tap is not None:
                self._tap("open", stream, b"")
            self._from_keep(conn)  # anything that came before the claim
            self._update(conn)
        self._update_listener(listener)

    def _keep_accepted(self, stream: int) -> None:
        conn = self._conns.get(stream)
        if conn is not None and conn.listener is not None:
            conn.listener.pending.discard(stream)
            self._update_listener(conn.listener)

    # ---- outbound connections ----

    def _on_connect_request(self, stream: int, meta: dict[str, Any]) -> str | None:
        # Reader thread, endpoint lock held. The host connects only where the config says.
        if meta.get(netstreams.STEWARD) is True:
            return self._on_steward_request(stream, meta)
        fd = meta.get("fd")
        files = self.config.files
        if not isinstance(fd, int) or isinstance(fd, bool) or not 0 <= fd < len(files):
            return netstreams.failure("EACCES", f"fd {fd!r} is not a file of the workload config")
        spec = files[fd]
        if spec.kind != "connect" or (meta.get("host"), meta.get("port")) != (spec.host, spec.port):
            return netstreams.failure("EACCES", f"files[{fd}] is not a connect file for that host and port")
        if self._stop_at is not None or len(self._conns) >= MAX_CONNECTIONS:
            return netstreams.failure("ECONNREFUSED", "the host has too many open connections for this keep")
        label = f"files[{fd}] (connect {spec.name!r})"
        self._post(lambda: self._start_connect(stream, label, spec.host or "", spec.port or 0))
        return None

    def _on_steward_request(self, stream: int, meta: dict[str, Any]) -> str | None:
        # The keep's runtime (not the workload) reaching the config's Steward, before the workload starts.
        if self._steward is None or (meta.get("host"), meta.get("port")) != self._steward:
            return netstreams.failure("EACCES", "that is not the Steward the workload config names")
        if self._stop_at is not None or len(self._conns) >= MAX_CONNECTIONS:
            return netstreams.failure("ECONNREFUSED", "the host has too many open connections for this keep")
        host, port = self._steward
        self._post(lambda: self._start_connect(stream, _STEWARD_LABEL, host, port))
        return None

    def _start_connect(self, stream: int, label: str, host: str, port: int) -> None:
        # Name resolution and connect block: a short-lived thread each, bounded by CONNECT_TIMEOUT.
        threading.Thread(target=self._connect, args=(stream, label, host, port), name=f"motte-connect-{stream}",
                         daemon=True).start()

    def _connect(self, stream: int, label: str, host: str, port: int) -> None:
        try:
            sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
        except socket.gaierror as exc:
            error = ("EHOSTUNREACH", f"cannot resolve {host!r}: {exc.strerror}")
        except TimeoutError:
            error = ("ETIMEDOUT", f"no answer within {CONNECT_TIMEOUT:g} s")
        except OSError as exc:
            error = (errno.errorcode.get(exc.errno or 0, "ECONNRESET"), (exc.strerror or str(exc)).lower())
        else:
            self._post(lambda: self._connected(stream, label, f"{host}:{port}", sock))
            return
        self._post(lambda: self._connect_failed(stream, label, f"{host}:{port}", *error))

    def _connect_failed(self, stream: int, label: str, where: str, errno_name: str, text: str) -> None:
        self.endpoint.reset(stream, netstreams.failure(errno_name, f"connect to {where}: {text}"))
        if label != _STEWARD_LABEL:  # the keep reports its Steward failing as the run's error
            self._warn(f"{label}: cannot connect to {where}: {text}")

    def _connected(self, stream: int, label: str, where: str, sock: socket.socket) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._stop_at is not None:
            sock.close()
            return
        try:
            self.endpoint.write(stream, netstreams.CONNECTED)  # within the stream's initial credit
        except MotteError:
            sock.close()  # the workload closed the fd meanwhile, or the channel is gone
            self.endpoint.reset(stream)
            return
        conn = _Connection(stream, sock, f"{label} to {where}", None)
        self._conns[stream] = conn
        self.endpoint.claim(stream)
        if self._tap is not None:
            self._tap("open", stream, b"")
        self._from_keep(conn)  # what the keep sent while the host was connecting (a TLS ClientHello)
        self._update(conn)

    # ---- relaying ----

    def _update(self, conn: _Connection) -> None:
        if conn.closed:
            return
        mask = 0
        if not conn.peer_eof and conn.reset is None and self.endpoint.write_window(conn.stream) > 0:
            mask |= selectors.EVENT_READ  # only with credit: that is the backpressure on the peer
        if conn.out is not None:
            mask |= selectors.EVENT_WRITE
        if mask == conn.mask:
            return
        if conn.mask == 0:
            self._selector.register(conn.sock, mask, lambda events: self._on_socket(conn, events))
        elif mask == 0:
            self._selector.unregister(conn.sock)
        else:
            self._selector.modify(conn.sock, mask, lambda events: self._on_socket(conn, events))
        conn.mask = mask

    def _on_socket(self, conn: _Connection, events: int) -> None:
        if conn.closed:
            return  # closed by the reader thread after the selector reported it
        if events & selectors.EVENT_WRITE:
            self._flush(conn)
        if events & selectors.EVENT_READ and not conn.closed:
            self._from_peer(conn)
        self._update(conn)

    def _from_peer(self, conn: _Connection) -> None:
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

    def _from_keep(self, conn: _Connection) -> None:
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

    def _send(self, conn: _Connection, data: memoryview) -> None:
        try:
            sent = conn.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._peer_failed(conn, exc)
            return
        conn.out = data[sent:] if sent < len(data) else None

    def _flush(self, conn: _Connection) -> None:
        if conn.out is not None:
            self._send(conn, conn.out)
        if conn.out is None and not conn.closed:
            if conn.reset is not None:
                self._retire(conn)  # the keep's last bytes are out
            else:
                self._from_keep(conn)

    def _keep_reset(self, conn: _Connection, reason: str | None) -> None:
        conn.reset = reason or "reset"
        if conn.reset != netstreams.CLOSED and not conn.label.startswith(_STEWARD_LABEL):
            self._warn(f"{conn.label}: closed by the keep: {conn.reset}")  # (the keep reports its Steward's)
        if conn.out is None:
            self._retire(conn)

    def _peer_failed(self, conn: _Connection, exc: OSError) -> None:
        # The peer vanished mid-stream: only its own stream ends.
        text = (exc.strerror or str(exc)).lower()
        self.endpoint.reset(conn.stream, netstreams.failure("ECONNRESET", f"the peer's connection failed: {text}"))
        self._close(conn)

    def _finish_if_done(self, conn: _Connection) -> None:
        if conn.peer_eof and conn.keep_eof and conn.out is None:
            self._close(conn)

    def _close(self, conn: _Connection) -> None:
        if not conn.closed:
            self._forget(conn)
            conn.sock.close()

    def _forget(self, conn: _Connection) -> None:
        conn.closed = True
        if conn.mask:
            self._selector.unregister(conn.sock)
            conn.mask = 0
        self.endpoint.reset(conn.stream, netstreams.CLOSED)  # frees the stream; a frame only if still open
        self._conns.pop(conn.stream, None)
        if self._tap is not None:
            self._tap("close", conn.stream, b"")
        if conn.listener is not None:
            conn.listener.pending.discard(conn.stream)

    # ---- lingering close ----

    def _retire(self, conn: _Connection) -> None:
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
        self._selector.register(sock, selectors.EVENT_READ, lambda _mask: self._drain_lingering(sock))

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
            self._selector.unregister(sock)
            sock.close()

    # ---- the end ----

    def _warn(self, text: str) -> None:
        self._warnings += 1
        if self._warnings <= MAX_WARNINGS:
            self._warn_sink(text)
        elif self._warnings == MAX_WARNINGS + 1:
            self._warn_sink("further network warnings of this run are not shown")

    def _close_all(self) -> None:
        for listener in self._listeners:
            listener.sock.close()
        for conn in list(self._conns.values()):
            conn.closed = True
            conn.sock.close()
            self.endpoint.reset(conn.stream, netstreams.CLOSED)
        self._conns.clear()
        for sock in self._lingering:
            sock.close()
        self._lingering.clear()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
