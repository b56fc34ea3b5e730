"""The host side of a provisioned keep for the deploy tests: the real host driver
(:class:`motte.host.provisioned.ProvisionedKeep`) on a thread, tenant sessions as byte channels,
and an in-process keep whose evidence comes from a test-only SNP platform."""

from __future__ import annotations

import socket
import threading

from motte.host.backends.base import KeepHandle
from motte.host.provisioned import KeepEnd, ProvisionedKeep, ProvisionSession
from motte.keep.evidence import EvidenceSource
from motte.keep.runtime import KeepRuntime
from motte.shared.control import Provision
from motte.shared.endpoint import ChannelClosed, Endpoint, StreamAborted
from motte.shared.transport import SocketTransport


class SessionChannel:
    """A tenant's byte channel on one provisioning stream; ``tap`` collects every byte relayed.
    A keep that is gone ends the connection, as the host agent ends the tenant's WebSocket."""

    def __init__(self, session: ProvisionSession, tap: list[bytes] | None = None):
        self.session = session
        self.tap = tap

    def send(self, data: bytes) -> None:
        if self.tap is not None:
            self.tap.append(data)
        try:
            self.session.write(data)
        except (ChannelClosed, StreamAborted):
            pass  # the next receive says the connection ended

    def receive(self) -> bytes:
        try:
            data = self.session.read(1 << 20, timeout=60)
        except (ChannelClosed, StreamAborted):
            return b""
        if self.tap is not None:
            self.tap.append(data)
        return data


class Host:
    """Provision ``keep`` and drive it until it ends, on a thread."""

    def __init__(self, keep: KeepHandle, provision: Provision, **options: object):
        self.driver = ProvisionedKeep(keep, provision, **options)  # type: ignore[arg-type]
        self.end: KeepEnd | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.end = self.driver.run()

    def session(self, tap: list[bytes] | None = None) -> SessionChannel:
        return SessionChannel(self.driver.open_session(), tap)

    def join(self, timeout: float = 60) -> KeepEnd:
        self._thread.join(timeout)
        assert self.end is not None, "the host driver did not end"
        return self.end


class InProcessKeep(KeepHandle):
    """A keep runtime on a thread of the test process, on a real socketpair channel, with the
    evidence source the test gives it (a fake SNP platform signing with test-only AMD keys)."""

    backend = "snp"
    isolation = "a test keep in the test's own process, with test-only AMD keys"

    def __init__(self, evidence: EvidenceSource):
        a, b = socket.socketpair()
        self.endpoint = Endpoint(SocketTransport(a), "host", name="test-host").start()
        self._keep_endpoint = Endpoint(SocketTransport(b), "keep", name="test-keep").start()
        self.endpoint.send_hello()
        self._keep_endpoint.send_hello()
        self.endpoint.await_hello(5)
        self._keep_endpoint.await_hello(5)
        runtime = KeepRuntime(self._keep_endpoint, backend="snp", evidence=evidence)
        self._thread = threading.Thread(target=runtime.serve, name="test-keep", daemon=True)
        self._thread.start()

    def memory_pid(self) -> int | None:
        return None

    def wait(self, timeout: float | None = None) -> int | None:
        self._thread.join(timeout)
        return None if self._thread.is_alive() else 0

    def close(self, grace: float = 2.0) -> None:
        self.endpoint.close()
        self._keep_endpoint.close()
        self._thread.join(grace or None)
