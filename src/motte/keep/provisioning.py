"""The empty keep: wait for the tenant, prove what this keep is on the tenant's own TLS session,
and only then receive the workload, its config and its secrets (``motte deploy``).

The host relays each tenant connection as a channel stream of kind ``provision``; the TLS session
ends here, so the host carries ciphertext only. The order of the session is
:mod:`motte.shared.provision`'s; the evidence binds the tenant's nonce, this keep's TLS key and the
session's exporter value (:func:`motte.shared.binding.provision_report_data`), so a host that
relays the session to another keep, or splices two sessions, is caught by the tenant.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from typing import NamedTuple

from motte.keep.evidence import EvidenceSource
from motte.keep.wasi.files import ChannelOutput, DeadlineExceeded
from motte.shared.binding import provision_report_data
from motte.shared.control import PROVISION_STREAM, LaunchTerms, Provision
from motte.shared.endpoint import ChannelClosed, Endpoint, StreamAborted, Timeout
from motte.shared.errors import MotteError
from motte.shared.netstreams import CLOSED
from motte.shared.provision import (
    HEADER,
    MAX_CHUNK,
    Abort,
    Deploy,
    Detach,
    EvidenceOffer,
    Frame,
    FrameReader,
    Hello,
    Message,
    Order,
    Output,
    ProvisionError,
    Secret,
    encode,
    encode_raw,
)
from motte.shared.tls_pipe import TlsPipe, TlsPipeError, server_context
from motte.shared.wasi_abi import Errno, WasiError

MAX_SESSIONS = 16  # tenant connections one empty keep takes before it gives up


class Deployment(NamedTuple):
    terms: LaunchTerms  # built here from what the tenant sent and the host's limits: what the keep binds
    wasm: bytes
    secrets: tuple[Secret, ...]
    session: TenantSession


class ProvisioningFailed(MotteError):
    """No tenant provisioned the keep in time."""


class TenantSession:
    """One tenant connection: TLS over a channel stream, and the deploy protocol's frames in it.

    Sends are thread-safe (the workload's stdout and stderr, and the runtime, share the session);
    one lock keeps encryption and the order of ciphertext on the stream together."""

    def __init__(self, endpoint: Endpoint, stream: int, pipe: TlsPipe):
        self.endpoint = endpoint
        self.stream = stream
        self.pipe = pipe
        self.order = Order("keep")
        self._reader = FrameReader("tenant")
        self._inbox: deque[Message] = deque()
        self._lock = threading.Lock()
        self.detached = False
        self.gone = False  # the tenant closed the session or it broke

    def handshake(self, deadline: float) -> None:
        with self._lock:
            self._write(self.pipe.handshake(), deadline)
        while not self.pipe.handshake_done:
            ciphertext = self._read(deadline)
            with self._lock:
                self.pipe.feed(ciphertext)
                self._write(self.pipe.handshake(), deadline)
        with self._lock:
            self._take(self.pipe.feed(b""))  # what came with the handshake's last flight

    def _take(self, plain: bytes) -> None:
        for message in self._reader.feed(plain):
            self.order.received(message)
            if isinstance(message, Abort):
                raise ProvisionError(f"the tenant ended the session: {message.message}")
            self._inbox.append(message)

    def receive(self, deadline: float | None) -> Message:
        """The tenant's next message (checked against the order)."""
        while not self._inbox:
            ciphertext = self._read(deadline)
            with self._lock:  # (the order too: the workload's output threads step it meanwhile)
                plain = self.pipe.feed(ciphertext)
                self._write(self.pipe.outgoing(), deadline)
                self._take(plain)
            if self.pipe.peer_closed and not self._inbox:
                raise ProvisionError("the tenant closed the session")
        return self._inbox.popleft()

    def send(self, message: Message, deadline: float | None = None) -> None:
        with self._lock:
            self.order.sent(message)
            self._write(self.pipe.encrypt(encode(message)), deadline)

    def send_output(self, frame: Frame, data: bytes, deadline: float | None) -> None:
        """Workload output, in frames that fit the stream's credit: the output never waits for
        credit holding the session's lock, which the thread taking the tenant's messages needs (a
        tenant that detaches stops reading: its Detach must get through). Once the tenant has
        detached, the rest is dropped."""
        view = memoryview(data)
        while view:
            with self._lock:
                if self.detached:
                    return
                if self.gone:  # nobody takes the tenant's messages any more: the write may wait
                    for offset in range(0, len(view), MAX_CHUNK):
                        chunk = view[offset : offset + MAX_CHUNK]
                        self.order.sent_raw(frame, len(chunk))
                        self._write(self.pipe.encrypt(encode_raw(frame, chunk)), deadline)
                    return
                piece = _fitting(self.endpoint.write_window(self.stream), len(view))
                if piece:
                    self.order.sent_raw(frame, piece)
                    self._write(self.pipe.encrypt(encode_raw(frame, view[:piece])), deadline)  # within the credit
                    view = view[piece:]
                    continue
            self._await_credit(len(view), deadline)

    def _await_credit(self, wanted: int, deadline: float | None) -> None:
        """Without the lock: until a piece of ``wanted`` bytes of output fits the stream's credit,
        the stream is reset or closed, the tenant sends something (a Detach, say: the session's
        reader takes it), or a while has passed (the reader's own reset of the stream on a Detach
        does not wake a thread waiting on the channel: the caller looks again)."""
        endpoint, stream = self.endpoint, self.stream
        timeout = CREDIT_LOOK_AGAIN
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic())
            if timeout <= 0:
                raise Timeout("the tenant did not read the output in time")
        endpoint.wait((stream,), timeout, condition=lambda: _fitting(endpoint.write_window(stream), wanted) > 0)
        reason = endpoint.reset_reason(stream)
        if reason is not None:
            raise StreamAborted(f"the tenant's connection was reset: {reason}")
        if endpoint.closed is not None:
            raise ChannelClosed("the channel closed")

    def abort(self, why: str) -> None:
        """Tell the tenant why the session ends, as far as it still listens; never raises."""
        try:
            self.send(Abort(why), time.monotonic() + 2.0)
            self.close()
        except MotteError:
            self.endpoint.reset(self.stream, "aborted")

    def close(self) -> None:
        try:
            with self._lock:
                self._write(self.pipe.close(), time.monotonic() + 2.0)
            self.endpoint.eof(self.stream)
        except MotteError:
            pass

    def watch(self) -> None:
        """From the workload's start: a thread that notes the tenant detaching or leaving."""
        threading.Thread(target=self._watch, name="tenant-session", daemon=True).start()

    def _watch(self) -> None:
        try:
            while True:
                message = self.receive(None)
                if isinstance(message, Detach):
                    self.detached = True
                    # Nobody reads the output any more: a write waiting for credit returns now.
                    self.endpoint.reset(self.stream, CLOSED)
                    break
        except MotteError:
            pass
        self.gone = True

    def _read(self, deadline: float | None) -> bytes:
        timeout = None if deadline is None else deadline - time.monotonic()
        if timeout is not None and timeout <= 0:
            raise ProvisionError("the tenant did not finish provisioning in time")
        try:
            data = self.endpoint.read(self.stream, 1 << 20, timeout=timeout)
        except Timeout:
            raise ProvisionError("the tenant did not finish provisioning in time") from None
        except (StreamAborted, ChannelClosed):
            raise ProvisionError("the tenant's connection broke") from None
        if not data:
            raise ProvisionError("the tenant closed the connection")
        return data

    def _write(self, ciphertext: bytes, deadline: float | None) -> None:
        if ciphertext:
            self.endpoint.write(self.stream, ciphertext, deadline=deadline)


#: A TLS 1.3 record's overhead (header, content type, tag: 22 bytes) with room to spare, per record
#: of at most 16 KiB of plaintext; and the smallest piece of output worth a frame of its own.
_TLS_RECORD_OVERHEAD = 64
CREDIT_LOOK_AGAIN = 0.25  # seconds output waits for credit before it looks whether the tenant detached
_TLS_RECORD = 16 << 10
_SMALLEST_PIECE = 1024


def _fitting(window: int, wanted: int) -> int:
    """How much of ``wanted`` bytes of output, framed and encrypted, fits ``window`` bytes of credit
    (0: too little of it to be worth sending now)."""
    room = window - HEADER.size - _TLS_RECORD_OVERHEAD * (window // _TLS_RECORD + 1)
    piece = min(room, wanted, MAX_CHUNK)
    return piece if piece >= min(wanted, _SMALLEST_PIECE) else 0


def preload() -> None:
    """Import what provisioning imports on use (a keep waiting in a warm pool does so early)."""
    import motte.keep.csr
    import motte.shared.steward_certs  # noqa: F401


def await_deployment(endpoint: Endpoint, provision: Provision, source: EvidenceSource, backend: str) -> Deployment:
    """Wait (at most ``provision.wait_ms``) for a tenant to provision this keep. Sessions that fail
    (a tenant whose policy refused this keep, a relay that broke) are told why and closed; the
    keep waits for the next until the deadline. Raises :class:`ProvisioningFailed` then."""
    from motte.keep.csr import generate_key
    from motte.shared.steward_certs import spki_der

    deadline = time.monotonic() + provision.wait_ms / 1000
    key = generate_key(source.technology)  # this keep's TLS key for its tenant sessions
    context = server_context(key)
    spki = spki_der(key.public_key())
    last = "no tenant connected"
    for _ in range(MAX_SESSIONS):
        try:
            stream, meta = endpoint.accept_stream(timeout=max(0.0, deadline - time.monotonic()))
        except Timeout:
            break
        if meta.get("kind") != PROVISION_STREAM:
            endpoint.reset(stream, "a provisioned keep takes provisioning streams only")
            continue
        session = TenantSession(endpoint, stream, TlsPipe(context, server=True))
        try:
            return _provision(session, provision, source, backend, spki, deadline)
        except (ProvisionError, TlsPipeError, StreamAborted, Timeout) as exc:
            last = str(exc)
            session.abort(last)
    waited = provision.wait_ms / 1000
    raise ProvisioningFailed(f"no tenant provisioned the keep within {waited:g} s (last: {last})")


def _provision(session: TenantSession, provision: Provision, source: EvidenceSource, backend: str,
               spki: bytes, deadline: float) -> Deployment:
    session.handshake(deadline)
    hello = session.receive(deadline)
    assert isinstance(hello, Hello)  # the order allows nothing else first
    binding = provision_report_data(source.technology, hello.nonce, spki, session.pipe.exporter())
    evidence = source.collect(binding)
    session.send(EvidenceOffer(evidence.technology, backend, evidence.value), deadline)
    deploy = session.receive(deadline)
    assert isinstance(deploy, Deploy)
    wasm = bytearray()
    while len(wasm) < deploy.wasm_size:  # (the order refuses more than announced)
        chunk = session.receive(deadline)
        assert isinstance(chunk, Output)
        wasm += chunk.data
    digest = hashlib.sha256(wasm).hexdigest()
    if digest != deploy.wasm_sha256:
        raise ProvisionError("the workload that arrived is not the one the tenant announced (digest mismatch)")
    terms = LaunchTerms(
        wasm_size=len(wasm), wasm_sha256=digest, config=deploy.config,
        memory_limit=provision.memory_limit, timeout_ms=provision.timeout_ms,
        ca_bundles=deploy.ca_bundles, steward_ca=deploy.steward_ca, delivery="deploy",
        secrets=tuple((secret.kind, secret.name) for secret in deploy.secrets), package=deploy.package,
    )
    try:
        terms.check()
    except ValueError as exc:
        raise ProvisionError(f"the deploy cannot run: {exc}") from None
    return Deployment(terms, bytes(wasm), deploy.secrets, session)


class SessionOutput(ChannelOutput):
    """The workload's stdout or stderr, sent to the tenant in its session (never to the host).
    Once the tenant detached, output is dropped; once it left, the workload gets EPIPE."""

    def __init__(self, session: TenantSession, frame: Frame, *, buffered: bool):
        super().__init__(session.endpoint, session.stream, buffered=buffered)
        self.session = session
        self.frame = frame

    def _send(self, data: bytes, deadline: float | None) -> None:
        if self.session.detached:
            return
        try:
            self.session.send_output(self.frame, data, deadline)
        except Timeout:
            raise DeadlineExceeded() from None
        except MotteError:
            if self.session.detached:
                return
            self.broken = True
            raise WasiError(Errno.PIPE) from None

    def close(self) -> None:
        self.flush()  # the session stays open for the exit message
