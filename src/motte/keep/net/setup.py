"""Turn the config's listen/connect files into sockets: identity, TLS contexts, channel routes.

Imported only when a workload has sockets, so other workloads never pay for ``ssl`` and
``cryptography`` at start-up.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

from motte.keep.net.sockets import KeepNetwork, ListenSocket, StreamSocket
from motte.keep.net.tls import HANDSHAKE_TIMEOUT, TlsError, client_context, server_context
from motte.shared.enarx_config import FileSpec
from motte.shared.endpoint import Endpoint
from motte.shared.errors import MotteError


class NetworkSetup:
    def __init__(self, endpoint: Endpoint, ca_bundles: dict[int, str], *, on_block: Callable[[], None],
                 handshake_timeout: float = HANDSHAKE_TIMEOUT):
        self.network = KeepNetwork(endpoint, on_block=on_block, handshake_timeout=handshake_timeout)
        self._ca_bundles = ca_bundles
        self._server: ssl.SSLContext | None = None
        self._default_client: ssl.SSLContext | None = None

    def socket(self, fd: int, spec: FileSpec) -> ListenSocket | StreamSocket:
        tls = spec.prot == "tls"
        if spec.kind == "listen":
            return self.network.listen(fd, self._server_context() if tls else None)
        if spec.kind != "connect" or spec.host is None or spec.port is None:
            raise MotteError(f"not a socket file: {spec.kind!r}")
        return self.network.connect(fd, spec.host, spec.port, self._client_context(fd) if tls else None)

    def start(self) -> None:
        self.network.start()

    def _server_context(self) -> ssl.SSLContext:
        if self._server is None:
            # One identity per keep, made here at start: its key never leaves the keep.
            from motte.keep.identity import self_signed_identity

            try:
                self._server = server_context(self_signed_identity())
            except (OSError, ssl.SSLError) as exc:
                raise MotteError(f"cannot set up the keep's TLS identity: {exc}") from None
        return self._server

    def _client_context(self, fd: int) -> ssl.SSLContext:
        ca = self._ca_bundles.get(fd)
        try:
            if ca is not None:
                return client_context(ca)
            if self._default_client is None:
                self._default_client = client_context()
            return self._default_client
        except TlsError as exc:
            raise MotteError(str(exc)) from None
