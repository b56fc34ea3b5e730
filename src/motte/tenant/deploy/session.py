"""The tenant's deploy session with one keep: TLS to the keep through the host's relay, the
challenge, the verdict, and only then the workload, its config and its secrets; then the
workload's output and exit.

The bytes travel over any :class:`ByteChannel` (the host agent's WebSocket in ``motte deploy``);
everything on it is TLS ciphertext that ends inside the keep.
"""

from __future__ import annotations

import hashlib
import secrets as random
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple, Protocol

from motte.shared.binding import NONCE_SIZE
from motte.shared.control import Exit, LaunchTerms
from motte.shared.errors import MotteError
from motte.shared.provision import (
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
    Started,
    encode,
    encode_raw,
)
from motte.shared.tls_pipe import TlsPipe, client_context
from motte.tenant.deploy.package import Package
from motte.tenant.deploy.policy import TenantPolicy
from motte.tenant.deploy.verify import Accepted, KeepRefused, judge

if TYPE_CHECKING:
    from motte.tenant.attest.amd_roots import AmdTrust

OutputSink = Callable[[Frame, bytes], None]


class ByteChannel(Protocol):
    def send(self, data: bytes) -> None: ...

    def receive(self) -> bytes:
        """The next bytes from the keep; ``b""`` once the connection ended."""
        ...


class LaunchMismatch(MotteError):
    """The keep runs something other than what the tenant sent (it started: stop it)."""


class Limits(NamedTuple):
    """What the tenant asked the host for: the keep binds them into its launch, so a host that
    launched the keep with other limits is caught when the launch digest does not match."""

    memory: int
    timeout_ms: int | None = None


class DeployOutcome(NamedTuple):
    accepted: Accepted
    started: Started
    exit: Exit | None  # None when detached
    #: seconds: tls (the handshake), evidence (hello to the keep's answer), verify, deploy (hashing
    #: the workload, the deploy message), transfer (the workload's bytes, from the first to the last
    #: handed to the channel: the keep may not have them all yet), start (until the keep reports
    #: started: the rest of the bytes, its hashing, compiling and starting), first_output (not
    #: when detached)
    timings: dict[str, float]


class KeepSession:
    """One TLS session to a keep, its frames and their order, over a :class:`ByteChannel`."""

    def __init__(self, channel: ByteChannel):
        self.channel = channel
        self.pipe = TlsPipe(client_context(), server=False)
        self.order = Order("tenant")
        self._reader = FrameReader("keep")
        self._inbox: list[Message] = []

    def handshake(self) -> None:
        self._send_raw(self.pipe.handshake())
        while not self.pipe.handshake_done:
            self.pipe.feed(self._receive_raw())
            self._send_raw(self.pipe.handshake())

    def send(self, message: Message) -> None:
        self.order.sent(message)
        self._send_raw(self.pipe.encrypt(encode(message)))

    def send_wasm(self, wasm: bytes) -> None:
        view = memoryview(wasm)
        for offset in range(0, len(view), MAX_CHUNK):
            chunk = view[offset : offset + MAX_CHUNK]
            self.order.sent_raw(Frame.WASM, len(chunk))
            self._send_raw(self.pipe.encrypt(encode_raw(Frame.WASM, chunk)))

    def receive(self) -> Message:
        while not self._inbox:
            data = self._receive_raw()
            for message in self._reader.feed(self.pipe.feed(data)):
                self.order.received(message)
                if isinstance(message, Abort):
                    raise ProvisionError(f"the keep ended the session: {message.message}")
                self._inbox.append(message)
            if self.pipe.peer_closed and not self._inbox:
                raise ProvisionError("the keep closed the session")
        return self._inbox.pop(0)

    def close(self) -> None:
        try:
            self._send_raw(self.pipe.close())
        except MotteError:
            pass

    def _send_raw(self, data: bytes) -> None:
        if data:
            self.channel.send(data)

    def _receive_raw(self) -> bytes:
        data = self.channel.receive()
        if not data:
            raise ProvisionError("the connection to the keep ended (the keep or the host agent went away)")
        return data


def expected_launch(package: Package, secrets: tuple[Secret, ...], limits: Limits) -> LaunchTerms:
    """The launch terms the keep must report running: what the tenant sent, with the limits it asked for."""
    return LaunchTerms(
        wasm_size=len(package.wasm), wasm_sha256=package.wasm_sha256, config=package.config,
        memory_limit=limits.memory, timeout_ms=limits.timeout_ms, ca_bundles=package.ca_bundles,
        steward_ca=package.steward_ca, delivery="deploy", secrets=tuple((s.kind, s.name) for s in secrets),
        package=package.registry_name,
    )


def deploy(channel: ByteChannel, package: Package, policy: TenantPolicy, limits: Limits, *,
           secrets: tuple[Secret, ...] = (), output: OutputSink, now: datetime | None = None,
           amd_trust: AmdTrust | None = None, detach: bool = False,
           progress: Callable[[str], None] | None = None) -> DeployOutcome:
    """Verify the keep at the other end of ``channel``, then deploy ``package`` to it.

    Raises :class:`KeepRefused` (nothing was sent), :class:`ProvisionError` (the keep broke the
    protocol or went away) or other :class:`MotteError` with one line."""
    say = progress or (lambda _: None)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now_ = time.perf_counter()
        timings[name] = now_ - clock
        clock = now_

    session = KeepSession(channel)
    session.handshake()
    lap("tls")
    nonce = random.token_bytes(NONCE_SIZE)
    session.send(Hello(nonce))
    offer = session.receive()
    assert isinstance(offer, EvidenceOffer)  # the order allows nothing else
    lap("evidence")
    try:
        accepted = judge(offer, nonce=nonce, spki=session.pipe.peer_spki(), exporter=session.pipe.exporter(),
                         policy=policy, now=now or datetime.now().astimezone(), amd_trust=amd_trust)
    except KeepRefused as exc:
        session.send(Abort(f"the tenant's policy refused this keep: {exc.check}"))
        session.close()
        raise
    lap("verify")
    say("the keep passed the policy" if accepted.attested else
        f"the keep is UNATTESTED ({offer.backend}): its host can read the workload, its secrets and its output")
    terms = expected_launch(package, secrets, limits)  # (hashes the workload, once)
    session.send(Deploy(package.config, len(package.wasm), terms.wasm_sha256, package.ca_bundles,
                        package.steward_ca, secrets, package.registry_name))
    lap("deploy")
    session.send_wasm(package.wasm)
    lap("transfer")
    started = session.receive()
    assert isinstance(started, Started)
    lap("start")
    _check_started(started, terms)
    if detach:
        session.send(Detach())
        session.close()
        return DeployOutcome(accepted, started, None, timings)
    first = True
    while True:
        message = session.receive()
        if first:
            lap("first_output")
            first = False
        if isinstance(message, Output):
            output(message.frame, message.data)
        elif isinstance(message, Exit):
            session.close()
            return DeployOutcome(accepted, started, message, timings)


def _check_started(started: Started, terms: LaunchTerms) -> None:
    if started.workload_sha256 != terms.wasm_sha256:
        raise LaunchMismatch("the keep reports a workload digest other than the one sent")
    expected = hashlib.sha256(terms.canonical_bytes()).hexdigest()
    if started.launch_sha256 != expected:
        raise LaunchMismatch("the keep runs launch terms other than the tenant's (did the host change the limits?)")
