"""Drive one provisioned keep from the host (``motte deploy``): the deploy counterpart of
:func:`motte.host.session.run_workload`.

The keep starts empty. The host tells it to wait for its tenant (:class:`~motte.shared.control.Provision`),
opens a channel stream of kind :data:`~motte.shared.control.PROVISION_STREAM` for each tenant
connection and relays its bytes, which are TLS records of a session that ends inside the keep: the
host never parses them. Once provisioned the keep asks the host to serve the workload's sockets
(:class:`~motte.shared.control.Serve`); the host binds them and answers
(:class:`~motte.shared.control.Served`), then relays the workload's connections as in a run. The
keep tells the host only how the workload ended (status and reason); its output and the exit
message go to the tenant.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, NamedTuple

from motte.host.backends.base import KeepHandle
from motte.host.session import GRACE, ended_without_exit, network_for, say_bye
from motte.shared.control import (
    MAX_EXIT_TEXT,
    PROVISION_STREAM,
    Accepted,
    ControlError,
    Conversation,
    Exit,
    Phase,
    Provision,
    Serve,
    Served,
    Stats,
)
from motte.shared.endpoint import ChannelClosed, Endpoint, Timeout
from motte.shared.errors import MotteError
from motte.shared.netstreams import CLOSED

if TYPE_CHECKING:
    from motte.host.net import HostNetwork, Tap

EndState = Literal["exited", "stopped", "failed"]


class KeepEnd(NamedTuple):
    """How a provisioned keep ended: its exit report, or why there is none."""

    state: EndState
    exit: Exit | None = None  # status and reason (the message went to the tenant)
    error: str | None = None  # failed: what went wrong
    stats: Stats | None = None


class ProvisionSession:
    """One tenant connection to the keep: a stream whose bytes the host passes on and never reads."""

    def __init__(self, endpoint: Endpoint, stream: int):
        self.endpoint = endpoint
        self.stream = stream

    def read(self, size: int, timeout: float | None = None) -> bytes:
        """The keep's next bytes (``b""``: it half-closed); StreamAborted, ChannelClosed or Timeout."""
        return self.endpoint.read(self.stream, size, timeout=timeout)

    def window(self) -> int:
        """How many bytes :meth:`write` takes now without waiting for the keep to grant credit."""
        return self.endpoint.write_window(self.stream)

    def wait_writable(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for credit (or for the stream or the channel to end)."""
        self.endpoint.wait((), timeout, writable=(self.stream,))

    def write(self, data: bytes | memoryview) -> None:
        self.endpoint.write(self.stream, data)

    def eof(self) -> None:
        self.endpoint.eof(self.stream)

    def close(self, reason: str = CLOSED) -> None:
        """End the stream: :data:`~motte.shared.netstreams.CLOSED` after the bytes sent, or an error."""
        self.endpoint.reset(self.stream, reason)


class ProvisionedKeep:
    """:meth:`run` provisions the keep and drives it until it ends (on a thread of its own);
    :meth:`open_session` and :meth:`stop` may be called from any thread meanwhile. Whoever
    launched the keep closes it after :meth:`run` returned."""

    def __init__(self, keep: KeepHandle, provision: Provision, *, tap: Tap | None = None,
                 on_running: Callable[[], None] | None = None):
        """``tap`` sees every byte relayed for the workload's connections; ``on_running`` is called
        (on the thread of :meth:`run`) once the keep was provisioned and its sockets are served."""
        self.keep = keep
        self.provision = provision
        self._tap = tap
        self._on_running = on_running
        self._conversation = Conversation("host")
        self._network: HostNetwork | None = None
        self._stopping = threading.Event()
        self._stats: Stats | None = None

    def open_session(self) -> ProvisionSession:
        """A new stream for one tenant connection (ChannelClosed once the keep is gone)."""
        endpoint = self.keep.endpoint
        return ProvisionSession(endpoint, endpoint.open_stream(PROVISION_STREAM))

    def stop(self) -> None:
        """End the keep now: :meth:`run` returns ``stopped``."""
        self._stopping.set()
        self.keep.endpoint.close()

    def run(self) -> KeepEnd:
        endpoint = self.keep.endpoint
        endpoint.limit_buffers(self.provision.memory_limit)
        try:
            try:
                endpoint.send_control(**self._conversation.sending(self.provision))
            except ChannelClosed as exc:
                return self._closed(exc)
            return self._await_end()
        finally:
            if self._network is not None:
                self._network.close()

    def _await_end(self) -> KeepEnd:
        endpoint = self.keep.endpoint
        # Until provisioned, the keep's own wait bounds it; once running, the workload's deadline.
        deadline: float | None = time.monotonic() + self.provision.wait_ms / 1000 + GRACE
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                message = endpoint.recv_control(timeout=wait)
            except Timeout:
                self.keep.close(grace=0)
                return KeepEnd("failed", error=self._overdue(), stats=self._stats)
            except ChannelClosed as exc:
                return self._closed(exc)
            try:
                received = self._conversation.received(message)
            except ControlError as exc:
                self.keep.close(grace=0)
                return KeepEnd("failed", error=str(exc), stats=self._stats)
            if isinstance(received, Serve):
                error = self._serve(received)
                try:
                    endpoint.send_control(**self._conversation.sending(Served(error)))
                except ChannelClosed as exc:
                    return self._closed(exc)
                if error is not None:
                    deadline = time.monotonic() + GRACE  # the keep gives up now
                    continue
                timeout = self.provision.timeout_ms
                deadline = None if timeout is None else time.monotonic() + timeout / 1000 + GRACE
                if self._on_running is not None:
                    self._on_running()
            elif isinstance(received, Accepted) and self._network is not None:
                self._network.accepted(received.stream)
            elif isinstance(received, Stats):
                self._stats = received
            elif isinstance(received, Exit):
                say_bye(endpoint, self._conversation)
                return KeepEnd("exited", exit=received, stats=self._stats)

    def _serve(self, serve: Serve) -> str | None:
        """Bind the sockets the workload config names and relay its connections; or why not."""
        try:
            network = network_for(serve.config, tap=self._tap)
        except MotteError as exc:  # a port in use, an address not this host's
            return str(exc)[:MAX_EXIT_TEXT]
        if network is not None:
            self._network = network
            network.start(self.keep.endpoint)  # before Served: the keep may connect as soon as it has it
        return None

    def _closed(self, exc: ChannelClosed) -> KeepEnd:
        if self._stopping.is_set():
            return KeepEnd("stopped", stats=self._stats)
        return KeepEnd("failed", error=ended_without_exit(self.keep, exc), stats=self._stats)

    def _overdue(self) -> str:
        if self._conversation.phase in (Phase.PROVISIONING, Phase.SERVING):
            return f"the keep was not provisioned within its {self.provision.wait_ms / 1000:g} s wait"
        return f"the keep did not stop at its {(self.provision.timeout_ms or 0) / 1000:g} s deadline"
