"""The host's half of keep networking: the host does TCP, the keep does TLS.

For each ``listen`` file the host binds the port before the workload starts (a port in use fails
the run at once), accepts connections and opens one channel stream per connection. For each
``connect`` file the keep opens a stream and the host makes the TCP connection. Then bytes are
relayed both ways (:mod:`motte.host.relay`). For ``prot = "tls"`` they are TLS records whose
session ends inside the keep: the host never holds a key nor sees plaintext. The conventions on
the channel are in :mod:`motte.shared.netstreams`. When the config names a ``steward``, the keep's
runtime also asks for one connection to the Steward's host and port (and only there), to get its
certificate. The files the config names (CA bundles) are read by :mod:`motte.outside.net_config`.
"""

from __future__ import annotations

import errno
import functools
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from motte.host.relay import Connection, Relay
from motte.host.relay import Tap as Tap  # what run_workload's callers pass
from motte.outside.net_config import NetworkError, read_network_files
from motte.shared import netstreams
from motte.shared.control import ConnectionFailed
from motte.shared.enarx_config import FileSpec, WorkloadConfig
from motte.shared.endpoint import Endpoint
from motte.shared.errors import MotteError
from motte.shared.printable import printable

LISTEN_BACKLOG = 128  # the kernel's queue of connections the host has not accepted yet
KEEP_BACKLOG = 64  # connections per listen socket handed to the keep but not yet taken by the workload
CONNECT_TIMEOUT = 10.0
MAX_WARNINGS = 20  # per run; a flood of bad clients must not flood the terminal
ACCEPT_RETRY = 1.0  # seconds before accepting again after the host ran out of file descriptors
_STEWARD_LABEL = "steward"  # the keep runtime's own connection to the config's Steward


def _stderr_warning(text: str) -> None:
    sys.stderr.write(f"motte: warning: {printable(text)}\n")  # it may quote a peer or the keep
    sys.stderr.flush()


class _Listener:
    __slots__ = ("active", "fd", "pending", "refused", "resume_at", "sock", "spec")

    def __init__(self, fd: int, spec: FileSpec, sock: socket.socket):
        self.fd = fd
        self.spec = spec
        self.sock = sock
        self.pending: set[int] = set()  # streams the workload has not accepted yet
        self.active = False  # watched by the relay
        self.resume_at = 0.0
        self.refused = False  # the workload closed its listen socket: accept no more for it


class HostNetwork:
    """The sockets of one run: :meth:`prepare` (before the keep starts), :meth:`start`, :meth:`close`."""

    endpoint: Endpoint  # set by start()

    def __init__(self, config: WorkloadConfig, *, config_dir: str | None = None,
                 warn: Callable[[str], None] = _stderr_warning, tap: Tap | None = None):
        self.config = config
        self.config_dir = Path(config_dir) if config_dir else None
        self._warn_sink = warn
        self._warnings = 0
        self.ca_bundles: dict[int, str] = {}  # TLS connect fd -> PEM
        self.steward_ca: str | None = None  # the PEM of the config's steward_ca
        self._steward: tuple[str, int] | None = None  # where the keep may connect to reach its Steward
        self._listeners: list[_Listener] = []
        self._relay = Relay(warn=self._warn, tap=tap, on_round=self._resume_listeners, on_stop=self._close_listeners)
        self._tap = tap
        self._closed = False

    # ---- before the launch ----

    def prepare(self) -> dict[int, str]:
        """Read every CA bundle and bind every listen socket, or fail with a clear error."""
        try:
            files = read_network_files(self.config, self.config_dir)
            self.ca_bundles, self.steward_ca, self._steward = files.ca_bundles, files.steward_ca, files.steward
            for fd, spec in enumerate(self.config.files):
                if spec.kind == "listen":
                    self._listeners.append(_Listener(fd, spec, _bind(fd, spec)))
        except BaseException:
            self._relay.close_all()
            raise
        return self.ca_bundles

    def hand_over(self, take: Callable[[Mapping[int, socket.socket]], bool]) -> None:
        """Offer the listen sockets to the keep (``take``: the keep handle's ``take_listen_sockets``):
        a keep that takes them accepts on them itself and the host relays none of their connections.
        Not when a tap must see what is relayed."""
        if self._tap is None and self._listeners and take({listener.fd: listener.sock for listener in self._listeners}):
            for listener in self._listeners:
                listener.sock.close()  # the keep holds them now: a copy here would keep the port open
            self._listeners = []

    def connection_failed(self, failed: ConnectionFailed) -> None:
        """The keep gave up a connection it accepted on a socket it was handed: warn as for a relayed one."""
        files = self.config.files
        name = files[failed.fd].name if failed.fd < len(files) else None
        self._warn(f"files[{failed.fd}] (listen {name!r}): connection from {failed.peer}: closed by the keep: "
                   f"{failed.reason}")

    # ---- running ----

    def start(self, endpoint: Endpoint) -> None:
        """Relay from now on over ``endpoint``: accept on the listen sockets, serve the keep's
        connect requests."""
        self.endpoint = endpoint
        for listener in self._listeners:
            self._update_listener(listener)
        endpoint.route_opens(netstreams.CONNECT, self._on_connect_request)
        self._relay.start(endpoint)

    def accepted(self, stream: int) -> None:
        """The workload took the connection on ``stream``: the host may queue another."""
        self._relay.post(lambda: self._keep_accepted(stream))

    def close(self, grace: float = 2.0) -> None:
        """Stop accepting now; let connections the keep has finished flush for up to ``grace``
        seconds; then close every socket."""
        if self._closed:
            return
        self._closed = True
        self._relay.stop(grace)

    def _warn(self, text: str) -> None:
        self._warnings += 1
        if self._warnings <= MAX_WARNINGS:
            self._warn_sink(text)
        elif self._warnings == MAX_WARNINGS + 1:
            self._warn_sink("further network warnings of this run are not shown")

    # ---- listen sockets (the relay thread) ----

    def _can_accept(self, listener: _Listener) -> bool:
        return (self._relay.can_open() and not listener.refused and len(listener.pending) < KEEP_BACKLOG
                and time.monotonic() >= listener.resume_at)

    def _update_listener(self, listener: _Listener) -> None:
        # Not accepting leaves clients in the kernel's queue: they wait, or are refused once it is full.
        want = self._can_accept(listener)
        if want and not listener.active:
            self._relay.watch(listener.sock, lambda _m: self._accept(listener))
        elif listener.active and not want:
            self._relay.unwatch(listener.sock)
        listener.active = want

    def _refused(self, listener: _Listener) -> None:
        listener.refused = True  # the keep refuses what the workload will never accept
        self._update_listener(listener)

    def _resume_listeners(self) -> None:
        for listener in self._listeners:
            if not listener.active:
                self._update_listener(listener)

    def _close_listeners(self) -> None:
        # New clients are refused from now on.
        for listener in self._listeners:
            if listener.active:
                self._relay.unwatch(listener.sock)
                listener.active = False
            listener.sock.close()

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
            where = netstreams.address(peer)
            try:
                stream = self.endpoint.open_stream(netstreams.ACCEPTED, fd=listener.fd, peer=where)
            except MotteError:
                sock.close()  # the channel is gone; the run is ending
                break
            label = f"files[{listener.fd}] (listen {listener.spec.name!r}): connection from {where}"
            listener.pending.add(stream)
            self._relay.add(Connection(stream, sock, label, pending=listener.pending,
                                       on_refused=functools.partial(self._refused, listener)))
        self._update_listener(listener)

    def _keep_accepted(self, stream: int) -> None:
        for listener in self._listeners:
            if stream in listener.pending:
                listener.pending.discard(stream)
                self._update_listener(listener)

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
        if not self._relay.can_open():
            return netstreams.failure("ECONNREFUSED", "the host has too many open connections for this keep")
        label = f"files[{fd}] (connect {spec.name!r})"
        self._relay.post(lambda: self._start_connect(stream, label, spec.host or "", spec.port or 0))
        return None

    def _on_steward_request(self, stream: int, meta: dict[str, Any]) -> str | None:
        # The keep's runtime (not the workload) reaching the config's Steward, before the workload starts.
        if self._steward is None or (meta.get("host"), meta.get("port")) != self._steward:
            return netstreams.failure("EACCES", "that is not the Steward the workload config names")
        if not self._relay.can_open():
            return netstreams.failure("ECONNREFUSED", "the host has too many open connections for this keep")
        host, port = self._steward
        self._relay.post(lambda: self._start_connect(stream, _STEWARD_LABEL, host, port))
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
            self._relay.post(lambda: self._connected(stream, label, f"{host}:{port}", sock))
            return
        self._relay.post(lambda: self._connect_failed(stream, label, f"{host}:{port}", *error))

    def _connect_failed(self, stream: int, label: str, where: str, errno_name: str, text: str) -> None:
        self.endpoint.reset(stream, netstreams.failure(errno_name, f"connect to {where}: {text}"))
        if label != _STEWARD_LABEL:  # the keep reports its Steward failing as the run's error
            self._warn(f"{label}: cannot connect to {where}: {text}")

    def _connected(self, stream: int, label: str, where: str, sock: socket.socket) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._relay.stopping:
            sock.close()
            return
        try:
            self.endpoint.write(stream, netstreams.CONNECTED)  # within the stream's initial credit
        except MotteError:
            sock.close()  # the workload closed the fd meanwhile, or the channel is gone
            self.endpoint.reset(stream)
            return
        # The keep reports failures of its Steward connection itself, as the run's error.
        self._relay.add(Connection(stream, sock, f"{label} to {where}", warn_on_reset=label != _STEWARD_LABEL))


def _bind(fd: int, spec: FileSpec) -> socket.socket:
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
    where = netstreams.address(sockaddr)
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
