"""Turn the config's listen/connect files into sockets: identity, TLS contexts, channel routes.

When the config names a ``steward``, :meth:`NetworkSetup.use_steward` gets the keep's certificate
from it first (through the host's TCP relay, TLS ending here), and the listeners serve that chain.

Imported only when a workload has sockets, so other workloads never pay for ``ssl`` and
``cryptography`` at start-up.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from motte.keep.identity import KeepIdentity
from motte.keep.net.direct import HandedOverListenSocket, SendQueues
from motte.keep.net.listen import KeepNetwork, Listener
from motte.keep.net.sockets import StreamSocket
from motte.keep.net.tls import HANDSHAKE_TIMEOUT, TlsError, client_context, server_context
from motte.keep.wasi.files import DeadlineExceeded
from motte.shared.control import ControlMessage
from motte.shared.enarx_config import FileSpec
from motte.shared.endpoint import Endpoint
from motte.shared.errors import MotteError
from motte.shared.wasi_abi import WasiError

if TYPE_CHECKING:
    from motte.keep.evidence import EvidenceSource
    from motte.shared.binding import KeepClaims

_NONE: Mapping[int, socket.socket] = MappingProxyType({})
STEWARD_TIMEOUT = 30.0  # seconds for the whole certificate request: connect, TLS, the Steward's answer


class NetworkSetup:
    def __init__(self, endpoint: Endpoint, ca_bundles: Mapping[int, str], *, report: Callable[[ControlMessage], None],
                 on_block: Callable[[], None], handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 handed_over: Mapping[int, socket.socket] = _NONE):
        self.network = KeepNetwork(endpoint, report=report, on_block=on_block, handshake_timeout=handshake_timeout)
        self._handed_over = dict(handed_over)  # listen sockets the host handed over (a nil keep's), by fd
        # What their connections queue, together (made only for a keep that has such sockets).
        self._send_queues = SendQueues(endpoint.buffer_budget) if handed_over else None
        self._ca_bundles = ca_bundles
        self._server: ssl.SSLContext | None = None
        self._default_client: ssl.SSLContext | None = None

    def socket(self, fd: int, spec: FileSpec) -> Listener | StreamSocket:
        tls = spec.prot == "tls"
        if spec.kind == "listen":
            handed_over = self._handed_over.pop(fd, None)
            if handed_over is not None:
                network = self.network
                assert self._send_queues is not None  # (made with the handed-over sockets)
                return HandedOverListenSocket(network.endpoint, fd, handed_over,
                                              tls_context=self._server_context() if tls else None,
                                              queues=self._send_queues, report=network.report,
                                              on_block=network.on_block, handshake_timeout=network.handshake_timeout)
            return self.network.listen(fd, self._server_context() if tls else None)
        if spec.kind != "connect" or spec.host is None or spec.port is None:
            raise MotteError(f"not a socket file: {spec.kind!r}")
        return self.network.connect(fd, spec.host, spec.port, self._client_context(fd) if tls else None)

    def start(self) -> None:
        for sock in self._handed_over.values():  # for no listen file of the config: not ours to serve
            sock.close()
        self._handed_over.clear()
        self.network.start()

    def use_steward(self, steward: str, source: EvidenceSource, ca_pem: str | None = None,
                    timeout: float = STEWARD_TIMEOUT, *, claims: KeepClaims | None = None) -> KeepIdentity:
        """Get the keep's certificate from the Steward at ``steward`` (https URL) and serve TLS with
        it from now on. ``source`` gives the evidence. ``ca_pem`` is the config's ``steward_ca``;
        without it the Steward's TLS certificate must chain to the system trust store. ``claims``,
        the digests of what the keep was given, go into the CSR and its evidence, and so into the
        certificate. Raises MotteError
        (one line) if the Steward cannot be reached, refuses, or answers badly: the workload must not
        start then."""
        from motte.keep.csr import StewardExchange, certificate_request
        from motte.shared.steward_protocol import StewardProtocolError

        # a fresh key, evidence bound to it and to the claims, the CSR
        request = certificate_request(source, claims=claims)
        exchange = StewardExchange(steward, request)
        where = exchange.url.host_header
        try:
            context = client_context(ca_pem)
        except TlsError as exc:
            raise MotteError(f"steward_ca: {exc}") from None
        sock = self.network.connect(None, exchange.url.host, exchange.url.port, context)
        deadline = time.monotonic() + timeout
        try:
            data = memoryview(exchange.outgoing())
            while data:
                data = data[sock.write(bytes(data), deadline):]
            while (chain := exchange.receive(sock.recv(1 << 16, deadline))) is None:
                pass
        except DeadlineExceeded:
            raise MotteError(f"the Steward at {where} did not answer within {timeout:g} s") from None
        except WasiError as exc:
            reason = sock.failure or exc.errno.name
            raise MotteError(f"cannot get the keep's certificate from the Steward at {where}: {reason}") from None
        except StewardProtocolError as exc:
            raise MotteError(f"the Steward at {where} answered badly: {exc}") from None
        finally:
            sock.close()
        identity = KeepIdentity(request.key, chain.certificates)
        try:
            self._server = server_context(identity)
        except (OSError, ssl.SSLError) as exc:
            raise MotteError(f"cannot serve the Steward's certificate: {exc}") from None
        return identity

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
