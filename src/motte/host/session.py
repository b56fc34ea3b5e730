"""Drive one workload run in a keep from the host: send it, pump its stdio, collect its end.

The host sees the workload here (``motte run`` loads a local file through the host, as in
Enarx); the confidential path is ``motte deploy``.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from motte.host.backends.base import KeepHandle
from motte.host.module_cache import ModuleCacheServer
from motte.shared.control import (
    Accepted,
    Bye,
    ConnectionFailed,
    ControlError,
    Conversation,
    Exit,
    Launch,
    LaunchStreams,
    LaunchTerms,
    Stats,
)
from motte.shared.enarx_config import WorkloadConfig
from motte.shared.endpoint import ChannelClosed, Endpoint, StreamAborted, Timeout
from motte.shared.errors import EXIT_MOTTE_ERROR, EXIT_TIMEOUT, MotteError

if TYPE_CHECKING:
    from motte.host.hostfs import HostDirs
    from motte.host.net import HostNetwork, Tap

WASM_CHUNK = 1 << 20
GRACE = 5.0  # seconds past the workload deadline before the host stops waiting for the keep


@dataclass(frozen=True)
class RunRequest:
    wasm: bytes
    config: WorkloadConfig
    dirs: tuple[tuple[str, str], ...] = ()
    memory_limit: int = 1 << 30
    timeout: float | None = None
    cache_dir: str | None = None  # compiled-module cache (a nil keep's own; VM keeps' served by the host)
    config_dir: str | None = None  # where the config file is: relative paths in it (ca) start there
    read_only_dirs: tuple[tuple[str, str], ...] = ()  # (host, guest) preopened before ``dirs``, served read-only

    @cached_property
    def wasm_sha256(self) -> str:
        """The workload's digest, computed once (a caller checking a pinned module shares it)."""
        return hashlib.sha256(self.wasm).hexdigest()


@dataclass
class RunResult:
    status: int
    reason: str
    message: str = ""
    backtrace: list[str] = field(default_factory=list)
    cached: bool | None = None


@dataclass(frozen=True)
class HostStdio:
    stdin: int = 0
    stdout: int = 1
    stderr: int = 2


def prepare_network(request: RunRequest, tap: Tap | None = None) -> HostNetwork | None:
    """Bind the config's listen sockets and read its CA bundles (None if it has no sockets and no Steward).

    Call it before starting the keep: a port in use then fails the run before anything started.
    ``tap`` sees every byte relayed for the workload's connections.
    """
    return network_for(request.config, config_dir=request.config_dir, tap=tap)


def network_for(config: WorkloadConfig, *, config_dir: str | None = None, tap: Tap | None = None) -> HostNetwork | None:
    """The prepared sockets of a workload config (None if it has no sockets and no Steward)."""
    if config.steward is None and not any(spec.kind in ("listen", "connect") for spec in config.files):
        return None
    from motte.host.net import HostNetwork

    network = HostNetwork(config, config_dir=config_dir, tap=tap)
    network.prepare()
    return network


def run_workload(keep: KeepHandle, request: RunRequest, stdio: HostStdio | None = None,
                 tap: Tap | None = None, network: HostNetwork | None = None) -> RunResult:
    """Run the workload in ``keep``. Its sockets are ``network`` (from :func:`prepare_network`; made
    here if not given), closed when the run ends."""
    if network is None:
        network = prepare_network(request, tap)
    dirs = None
    try:
        if request.dirs or request.read_only_dirs:
            from motte.host.hostfs import HostDirs

            dirs = HostDirs(keep.endpoint, request.dirs, request.read_only_dirs)
        return _run_workload(keep, request, stdio or HostStdio(), network, dirs)
    finally:
        if dirs is not None:
            dirs.close()
        if network is not None:
            network.close()


def _run_workload(keep: KeepHandle, request: RunRequest, stdio: HostStdio, network: HostNetwork | None,
                  dirs: HostDirs | None = None) -> RunResult:
    endpoint = keep.endpoint
    endpoint.limit_buffers(request.memory_limit)
    wasm_stream = endpoint.open_stream("wasm")
    streams: dict[int, int] = {}
    terminals: set[int] = set()  # the workload sees a terminal where the host has one
    pumps: list[threading.Thread] = []
    stdin_fed = False
    for fd, spec in enumerate(request.config.files):
        if spec.kind not in ("stdin", "stdout", "stderr"):
            continue
        stream = endpoint.open_stream(spec.kind, fd=fd)
        streams[fd] = stream
        if spec.kind == "stdin":
            if stdin_fed:
                endpoint.eof(stream)  # one host stdin: only the first stdin file is fed
                continue
            stdin_fed = True
            host_fd = stdio.stdin
            pumps.append(_daemon(_pump_stdin, endpoint, stream, host_fd))
        else:
            endpoint.eof(stream)  # nothing flows host -> keep on an output
            host_fd = stdio.stdout if spec.kind == "stdout" else stdio.stderr
            pumps.append(_daemon(_pump_output, endpoint, stream, host_fd))
        if os.isatty(host_fd):
            terminals.add(fd)
    if network is not None:
        network.hand_over(keep.take_listen_sockets)  # (a nil keep accepts on them itself)
        network.start(endpoint)  # before the launch: the keep may ask for connections as soon as it has it
    if dirs is not None:
        dirs.start()
    ModuleCacheServer(endpoint, request.cache_dir, keep.backend).start()  # VM keeps ask it for compiled modules
    served = dirs.served if dirs is not None else []
    launch = Launch(
        LaunchTerms(
            wasm_size=len(request.wasm),
            wasm_sha256=request.wasm_sha256,
            config=request.config,
            dirs=tuple(s.guest_path for s in served),
            memory_limit=request.memory_limit,
            timeout_ms=None if request.timeout is None else max(1, math.ceil(request.timeout * 1000)),
            ca_bundles=network.ca_bundles if network is not None else {},
            steward_ca=network.steward_ca if network is not None else None,
        ),
        LaunchStreams(wasm_stream, streams, tuple(s.stream for s in served), request.cache_dir, frozenset(terminals)),
    )
    conversation = Conversation("host")
    try:
        endpoint.send_control(**conversation.sending(launch))
    except ValueError as exc:  # larger than one control message may be (CA bundles), or inconsistent
        raise MotteError(f"cannot launch the workload: {exc}", hint="use fewer or smaller CA bundles") from None
    _daemon(_send_wasm, endpoint, wasm_stream, request.wasm).start()
    for pump in pumps:
        pump.start()
    result = _await_exit(keep, request, conversation, network)
    outputs = [p for p in pumps if p.name == _pump_output.__name__]
    for pump in outputs:
        pump.join(timeout=10.0)
    say_bye(endpoint, conversation)
    return result


def _await_exit(keep: KeepHandle, request: RunRequest, conversation: Conversation,
                network: HostNetwork | None = None) -> RunResult:
    endpoint = keep.endpoint
    hard_deadline = None if request.timeout is None else time.monotonic() + request.timeout + GRACE
    cached: bool | None = None
    while True:
        wait = None if hard_deadline is None else max(0.0, hard_deadline - time.monotonic())
        try:
            message = endpoint.recv_control(timeout=wait)
        except Timeout:
            keep.close(grace=0)
            return RunResult(EXIT_TIMEOUT, "timeout", f"the keep did not stop at its {request.timeout:g} s deadline")
        except ChannelClosed as exc:
            return RunResult(EXIT_MOTTE_ERROR, "error", ended_without_exit(keep, exc))
        try:
            received = conversation.received(message)
        except ControlError as exc:
            keep.close(grace=0)
            return RunResult(EXIT_MOTTE_ERROR, "error", str(exc))
        if isinstance(received, Stats):
            cached = received.cached
        elif isinstance(received, Exit):
            return RunResult(received.status, received.reason, received.message, list(received.backtrace), cached)
        elif isinstance(received, Accepted) and network is not None:
            network.accepted(received.stream)
        elif isinstance(received, ConnectionFailed) and network is not None:
            network.connection_failed(received)


def ended_without_exit(keep: KeepHandle, closed: ChannelClosed) -> str:
    """Why a run failed whose keep closed the channel before it reported an exit."""
    status = keep.wait(timeout=2.0)
    detail = f" (keep process exit status {status})" if status is not None else ""
    return f"the keep ended without reporting an exit: {closed}{detail}"


def say_bye(endpoint: Endpoint, conversation: Conversation) -> None:
    """Tell the keep the host has everything (a VM keep may power off); a keep gone already is no error."""
    try:
        endpoint.send_control(**conversation.sending(Bye()))
        endpoint.flush(timeout=2.0)
    except MotteError:
        pass


def _daemon(target: Callable[..., None], *args: object) -> threading.Thread:
    # Daemon threads: a pump blocked on a terminal's stdin must not keep the CLI alive.
    return threading.Thread(target=target, args=args, name=target.__name__, daemon=True)


def _send_wasm(endpoint: Endpoint, stream: int, wasm: bytes) -> None:
    try:
        view = memoryview(wasm)
        for offset in range(0, len(view), WASM_CHUNK):
            endpoint.write(stream, view[offset : offset + WASM_CHUNK])
        endpoint.eof(stream)
    except MotteError:
        pass  # the keep went away; the exit report (or its absence) says why


def _pump_stdin(endpoint: Endpoint, stream: int, source: int) -> None:
    try:
        while True:
            try:
                data = os.read(source, 64 << 10)
            except OSError:
                data = b""
            if not data:
                endpoint.eof(stream)
                return
            endpoint.write(stream, data)
    except (StreamAborted, ChannelClosed, MotteError):
        pass


def _pump_output(endpoint: Endpoint, stream: int, target: int) -> None:
    while True:
        try:
            data = endpoint.read(stream, 1 << 20)
        except (StreamAborted, ChannelClosed):
            return
        if not data:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(target, view) :]
        except OSError as exc:
            # The reader went away (e.g. `| head`): tell the keep, as a closed pipe would.
            endpoint.reset(stream, "EPIPE" if exc.errno == errno.EPIPE else f"host write failed: {exc.strerror}")
            return
