"""The Steward's HTTP service: the Steward protocol on aiohttp.

    GET  /   health: 200 and a small JSON document
    POST /   Content-Type: application/pkcs10, body: DER CSR
             200  DER SEQUENCE OF Certificate = [CA, issued]
             400  malformed CSR or evidence, or a failed check   (body: "<reason>: <why>")
             401  no evidence (no attestation extension, or KVM while unattested keeps are refused)
             408  the body did not arrive within the request timeout
             413  body larger than the limit (64 KiB by default)
             415  not application/pkcs10
             503  the audit log could not be written: nothing was issued

Every POST is appended to the audit log, and the response is sent only after that entry has been
committed. Refusals carry their stable reason code in the ``Motte-Reason`` header as well.

Checking and signing is CPU work (~0.5-3 ms a request). It runs on the event loop (``workers=0``)
or in a pool of worker processes; see ``bench/bench_steward.py`` for what each gives.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import hashlib
import multiprocessing
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from motte.outside.listening import listen_tcp, stop_on_signals
from motte.outside.loopback import is_loopback as is_loopback  # (motte steward serve --dev checks it too)
from motte.shared.binding import KeepClaims
from motte.shared.errors import MotteError
from motte.shared.steward_protocol import CHAIN_CONTENT_TYPE, MAX_CSR, PKCS10, encode_chain
from motte.steward.check import Refused, check_request
from motte.steward.issuer import CertificateAuthority
from motte.steward.log import AuditLog, Event, LogError
from motte.steward.policy import StewardPolicy
from motte.tenant.attest.amd_roots import AmdTrust

REQUEST_TIMEOUT = 10.0
LINGER = 1.0  # how long aiohttp keeps draining an unread (e.g. oversized) body before closing


def utc_now() -> datetime:
    return datetime.now(UTC)


def replica_name() -> str:
    """This Steward process among replicas: hostname:pid (in Kubernetes the hostname is the pod's name)."""
    return f"{socket.gethostname()}:{os.getpid()}"


# --- the engine: one request in, one outcome out (runs in a worker process, or inline) ----------
@dataclass(frozen=True)
class StewardConfig:
    """Everything a worker process needs to rebuild the engine (picklable)."""

    ca_key_pem: bytes
    ca_cert_pem: bytes
    policy: StewardPolicy
    amd_trust_der: tuple[bytes, ...] | None = None  # test-only roots; None means AMD's built-in ones

    @classmethod
    def build(
        cls, ca: CertificateAuthority, policy: StewardPolicy, *, amd_trust: AmdTrust | None = None
    ) -> StewardConfig:
        key_pem = ca.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        trust_der = None
        if amd_trust is not None:
            trust_der = tuple(
                c.public_bytes(serialization.Encoding.DER)
                for roots in amd_trust.products.values()
                for c in (roots.ark, roots.ask, roots.asvk)
                if c is not None
            )
        return cls(key_pem, ca.cert.public_bytes(serialization.Encoding.PEM), policy, trust_der)


class IssueOutcome(NamedTuple):
    """What the Steward decided on one certificate request: the HTTP answer and its audit-log entry."""

    status: int
    reason: str | None
    message: str
    technology: str | None
    evidence_sha256: str | None
    csr_sha256: str
    key_sha256: str | None
    claims: dict[str, Any] | None
    serial: str | None
    not_after: str | None
    certificate: bytes | None
    body: bytes
    keep_claims: KeepClaims | None = None  # the workload and launch digests the CSR carried

    def event(self, at: datetime, peer: str | None, replica: str) -> Event:
        return Event(
            at=at.isoformat(),
            verdict="issued" if self.status == 200 else "refused",
            status=self.status,
            reason=self.reason,
            message=self.message,
            technology=self.technology,
            evidence_sha256=self.evidence_sha256,
            csr_sha256=self.csr_sha256,
            key_sha256=self.key_sha256,
            serial=self.serial,
            not_after=self.not_after,
            claims=self.claims,
            certificate=self.certificate,
            peer=peer,
            workload_sha256=self.keep_claims.workload_sha256.hex() if self.keep_claims else None,
            launch_sha256=self.keep_claims.launch_sha256.hex() if self.keep_claims else None,
            replica=replica,
        )


class Steward:
    def __init__(self, ca: CertificateAuthority, policy: StewardPolicy, *, amd_trust: AmdTrust | None = None) -> None:
        self.ca = ca
        self.policy = policy
        self.amd_trust = amd_trust

    @classmethod
    def from_config(cls, config: StewardConfig) -> Steward:
        key = serialization.load_pem_private_key(config.ca_key_pem, None)
        cert = x509.load_pem_x509_certificate(config.ca_cert_pem)
        trust = None
        if config.amd_trust_der is not None:
            trust = AmdTrust.from_certs(x509.load_der_x509_certificate(d) for d in config.amd_trust_der)
        return cls(CertificateAuthority(key, cert), config.policy, amd_trust=trust)  # type: ignore[arg-type]

    def process(self, csr_der: bytes, now: datetime) -> IssueOutcome:
        csr_sha256 = hashlib.sha256(csr_der).hexdigest()
        try:
            attested = check_request(csr_der, policy=self.policy, now=now, amd_trust=self.amd_trust)
        except Refused as refused:
            return refusal(refused, csr_sha256, _key_sha256(csr_der))
        cert = self.ca.issue(attested, now=now, lifetime=self.policy.lifetime, dns_names=self.policy.dns_names)
        cert_der = cert.public_bytes(serialization.Encoding.DER)
        return IssueOutcome(
            200,
            None,
            "issued",
            attested.technology,
            attested.evidence_sha256,
            csr_sha256,
            hashlib.sha256(attested.spki).hexdigest(),
            attested.claims,
            f"{cert.serial_number:x}",
            cert.not_valid_after_utc.isoformat(),
            cert_der,
            encode_chain([self.ca.cert_der, cert_der]),
            attested.keep_claims,
        )


def refusal(refused: Refused, csr_sha256: str, key_sha256: str | None = None) -> IssueOutcome:
    return IssueOutcome(
        refused.status,
        refused.reason,
        refused.message,
        refused.technology,
        refused.evidence_sha256,
        csr_sha256,
        key_sha256,
        refused.claims,
        None,
        None,
        None,
        f"{refused.reason}: {refused.message}\n".encode(),
        refused.keep_claims,
    )


def _key_sha256(csr_der: bytes) -> str | None:
    """For the log: which key a refused request was for, when the CSR can be read that far."""
    try:
        spki = (
            x509.load_der_x509_csr(csr_der)
            .public_key()
            .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
    except Exception:  # any failure just means "unknown key"
        return None
    return hashlib.sha256(spki).hexdigest()


_worker: Steward | None = None


def _init_worker(config: StewardConfig, parent: int) -> None:
    global _worker
    _die_with(parent)
    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, systemd: the parent decides when workers stop
        signal.signal(sig, signal.SIG_IGN)
    _worker = Steward.from_config(config)


def _die_with(parent: int) -> None:
    """A worker holds the CA key: it must not outlive a Steward that was killed with SIGKILL (its
    task queue would never close, and it would wait forever). Linux's PR_SET_PDEATHSIG fires when
    the thread that started the worker ends; the pool starts workers from the event-loop thread."""
    if sys.platform != "linux":
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _work(csr_der: bytes, now: datetime) -> IssueOutcome:
    assert _worker is not None, "worker not initialised"
    return _worker.process(csr_der, now)


# --- the HTTP service ----------------------------------------------------------------------------
class StewardService:
    def __init__(
        self,
        config: StewardConfig,
        log: AuditLog,
        *,
        workers: int = 0,
        max_body: int = MAX_CSR,
        request_timeout: float = REQUEST_TIMEOUT,
        clock: Callable[[], datetime] = utc_now,
        dev: bool = False,
    ) -> None:
        self.config = config
        self.log = log
        self.max_body = max_body
        self.request_timeout = request_timeout
        self.clock = clock
        self.dev = dev
        self.steward = Steward.from_config(config)
        self.workers = workers
        self.replica = replica_name()  # which of the replicas sharing the log decided
        self._pool = self._new_pool()

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor | None:
        if self.workers <= 0:
            return None
        # spawn, not fork: the parent has threads (the log writer), which fork does not copy.
        return concurrent.futures.ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.config, os.getpid()),
        )

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body)
        app.router.add_get("/", self.health)
        app.router.add_post("/", self.attest)
        return app

    async def warm_up(self) -> None:
        """Start the worker processes now rather than on the first request."""
        if self._pool is not None:
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(self._pool, _noop) for _ in range(self.workers)))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "service": "motte steward",
                "status": "ok",
                "ca": self.steward.ca.cert.subject.rfc4514_string(),
                "dev": self.dev,
            }
        )

    async def attest(self, request: web.Request) -> web.Response:
        now = self.clock()
        try:
            body = await self._read_body(request)
        except Refused as refused:
            outcome = refusal(refused, "")
        else:
            if request.content_type != PKCS10:
                shown = request.content_type or "none"
                outcome = refusal(
                    Refused(415, "content_type", f"Content-Type must be {PKCS10}, not {shown}"),
                    hashlib.sha256(body).hexdigest(),
                )
            else:
                outcome = await self._decide(body, now)
        try:
            await self.log.append(outcome.event(now, request.remote, self.replica))
        except LogError as exc:
            # Never hand out a certificate the log does not record.
            outcome = refusal(Refused(503, "log_unavailable", f"{exc}; nothing was issued"), outcome.csr_sha256)
        response = _response(outcome)
        if outcome.status == 408:
            # A stalled client will not send the rest: answer, then close at once rather than wait
            # for more of its body (aiohttp would otherwise linger to drain it).
            await response.prepare(request)
            await response.write_eof()
            request.protocol.force_close()
        return response

    async def _decide(self, body: bytes, now: datetime) -> IssueOutcome:
        try:
            if self._pool is None:
                return self.steward.process(body, now)
            pool = self._pool
            try:
                return await asyncio.get_running_loop().run_in_executor(pool, _work, body, now)
            except concurrent.futures.process.BrokenProcessPool:
                # A worker died (killed, out of memory): replace the pool once and try again, so
                # one lost worker does not turn every later request into an error.
                if self._pool is pool:
                    pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = self._new_pool()
                assert self._pool is not None
                return await asyncio.get_running_loop().run_in_executor(self._pool, _work, body, now)
        except MotteError as exc:  # e.g. the CA expired
            return refusal(Refused(503, "steward_error", str(exc)), hashlib.sha256(body).hexdigest())
        except Exception as exc:  # a bug must not take the service down or go unlogged
            return refusal(Refused(500, "internal", f"{type(exc).__name__}: {exc}"), hashlib.sha256(body).hexdigest())

    async def _read_body(self, request: web.Request) -> bytes:
        length = request.content_length
        if length is not None and length > self.max_body:
            raise Refused(413, "body_too_large", f"the body is {length} bytes; the limit is {self.max_body}")
        buf = bytearray()

        async def read() -> None:
            while chunk := await request.content.read(64 * 1024):
                buf.extend(chunk)
                if len(buf) > self.max_body:
                    raise Refused(413, "body_too_large", f"the body is over the {self.max_body}-byte limit")

        try:
            await asyncio.wait_for(read(), self.request_timeout)
        except TimeoutError as exc:
            raise Refused(
                408, "timeout", f"the body did not arrive within {self.request_timeout:g} s ({len(buf)} bytes came)"
            ) from exc
        return bytes(buf)


def _noop() -> None:
    return None


def _response(outcome: IssueOutcome) -> web.Response:
    if outcome.status == 200:
        return web.Response(body=outcome.body, content_type=CHAIN_CONTENT_TYPE)
    response = web.Response(
        status=outcome.status,
        body=outcome.body,
        content_type="text/plain",
        charset="utf-8",
        headers={"Motte-Reason": outcome.reason or "refused"},
    )
    if outcome.status in (408, 413):
        response.force_close()  # the rest of that body is not worth reading
    return response


# --- running it ----------------------------------------------------------------------------------
def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise MotteError(f"cannot load the TLS certificate {cert} / key {key}: {exc}") from exc
    return context


async def serve(
    service: StewardService,
    *,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    on_ready: Callable[[str], None],
    stop: asyncio.Event | None = None,
    reuse_port: bool = False,
) -> None:
    """Serve until SIGINT/SIGTERM (or ``stop`` is set); then stop accepting, let requests in flight
    finish (their log entries included), and close. With ``reuse_port`` this Steward is one of
    several replicas listening on the same host:port (``motte.outside.listening``)."""
    if ssl_context is None and not is_loopback(host):
        raise MotteError(
            f"refusing to serve plain HTTP on {host}: keeps would send their CSRs in clear",
            hint="give --tls-cert and --tls-key, or bind 127.0.0.1",
        )
    stop = stop or asyncio.Event()
    release_signals = stop_on_signals(stop)
    await service.warm_up()
    # keepalive_timeout also runs from the connection's start: a client must bring a whole request
    # head within the request timeout of connecting (or of its previous answer), so connections
    # that never finish one (slowloris) do not pile up. aiohttp's default is an hour.
    runner = web.AppRunner(service.app(), access_log=None, lingering_time=LINGER, shutdown_timeout=REQUEST_TIMEOUT,
                           keepalive_timeout=service.request_timeout)
    await runner.setup()
    try:
        url = await listen_tcp(runner, host, port, ssl_context=ssl_context, reuse_port=reuse_port)
        on_ready(f"{url}/")
        await stop.wait()
    finally:
        release_signals()
        await runner.cleanup()
        service.close()
