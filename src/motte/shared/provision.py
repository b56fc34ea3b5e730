"""The deploy protocol between the tenant and a provisioned keep, inside TLS that ends in the keep.

Sans-I/O: typed messages, one byte encoding each, an incremental frame reader and the order both
sides follow. The TLS session is relayed by the host as ciphertext on a channel stream of kind
:data:`motte.shared.control.PROVISION_STREAM`; what is defined here travels inside it::

    frame   = type (1 byte) || length (4 bytes, big-endian) || payload
    tenant -> keep  hello     {"version": 1, "nonce": hex}        a fresh 32-byte nonce
    keep -> tenant  evidence  {"technology", "backend", "evidence": base64}
                              report data = provision_report_data(technology, nonce,
                              SPKI of the keep's TLS key, RFC 9266 tls-exporter of this session)
    tenant -> keep  deploy    {"config", "wasm": {"size", "sha256"}, "ca", "steward_ca",
                               "secrets": [{"kind", "name", "value": base64}]}
                              only after the tenant verified the evidence against its policy
    tenant -> keep  wasm      raw workload bytes, frames until "size" bytes arrived
    keep -> tenant  started   {"workload_sha256", "launch_sha256", "chain": PEM | null}
    keep -> tenant  stdout / stderr   raw output bytes
    tenant -> keep  detach    {}   the tenant leaves; the workload runs on, its output is dropped
    keep -> tenant  exit      the :class:`motte.shared.control.Exit` message
    either          abort     {"message"}   the sender gives up, saying why; the session ends

Anything else, or anything out of turn, is a :class:`ProvisionError`. Message JSON is canonical
(:func:`motte.shared.channel.canonical_json`).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from collections.abc import Mapping
from enum import IntEnum
from typing import Any, Literal, NamedTuple, TypeAlias

from motte.shared.binding import NONCE_SIZE
from motte.shared.channel import canonical_json
from motte.shared.control import (
    MAX_CA_BUNDLE,
    MAX_SECRETS,
    MAX_WASM_SIZE,
    SECRET_KINDS,
    ControlError,
    Exit,
    package_name,
    secret_name,
)
from motte.shared.enarx_config import ConfigError, WorkloadConfig
from motte.shared.errors import MotteError

VERSION = 1
EXPORTER_LABEL = b"EXPORTER-Channel-Binding"  # RFC 9266 tls-exporter: empty context, EXPORTER_SIZE bytes
HEADER = struct.Struct(">BI")
MAX_MESSAGE = 1 << 20  # one JSON message (a deploy with its secrets and CA bundles)
MAX_CHUNK = 1 << 20  # one frame of workload or output bytes
MAX_SECRET = 64 << 10
MAX_EVIDENCE = 64 << 10
MAX_TEXT = 4096
_HEX64 = re.compile(r"[0-9a-f]{64}")
Side = Literal["tenant", "keep"]


class ProvisionError(MotteError):
    """The peer broke the deploy protocol; the text says which side and how."""


class Frame(IntEnum):
    HELLO = 1
    EVIDENCE = 2
    DEPLOY = 3
    WASM = 4
    STARTED = 5
    STDOUT = 6
    STDERR = 7
    DETACH = 8
    EXIT = 9
    ABORT = 10


_RAW = frozenset({Frame.WASM, Frame.STDOUT, Frame.STDERR})


class _Bad(ValueError):
    pass


# ---- messages ----------------------------------------------------------------------------------


class Hello(NamedTuple):
    nonce: bytes

    def payload(self) -> dict[str, Any]:
        return {"version": VERSION, "nonce": self.nonce.hex()}

    @classmethod
    def parse(cls, data: Any) -> Hello:
        if _get(data, "version") != VERSION:
            raise _Bad(f"version must be {VERSION}")
        nonce = _hex(_get(data, "nonce"), "nonce")
        if len(nonce) != NONCE_SIZE:
            raise _Bad(f"nonce must be {NONCE_SIZE} bytes")
        return cls(nonce)


class EvidenceOffer(NamedTuple):
    technology: str  # "kvm" (none: nil and kvm keeps), "snp", "tdx"
    backend: str  # what the keep says it runs on (informational; the evidence is what counts)
    evidence: bytes  # DER, as in the CSR's attestation extension; empty for "kvm"

    def payload(self) -> dict[str, Any]:
        return {"technology": self.technology, "backend": self.backend,
                "evidence": base64.b64encode(self.evidence).decode("ascii")}

    @classmethod
    def parse(cls, data: Any) -> EvidenceOffer:
        evidence = _b64(_get(data, "evidence"), "evidence", MAX_EVIDENCE)
        return cls(_text(_get(data, "technology"), "technology", 16), _text(_get(data, "backend"), "backend", 16),
                   evidence)


class Secret(NamedTuple):
    kind: str  # "file": /run/secrets/<name>, read-only, in keep memory; "env": an environment variable
    name: str
    value: bytes


class Deploy(NamedTuple):
    config: WorkloadConfig
    wasm_size: int
    wasm_sha256: str
    ca_bundles: Mapping[int, str]  # TLS connect fd -> PEM, from the tenant's package
    steward_ca: str | None
    secrets: tuple[Secret, ...] = ()
    package: str | None = None  # from a registry: "host/user/repo:tag", which the keep binds

    def payload(self) -> dict[str, Any]:
        return {
            "package": self.package,
            "config": self.config.to_json(),
            "wasm": {"size": self.wasm_size, "sha256": self.wasm_sha256},
            "ca": [{"fd": fd, "pem": pem} for fd, pem in sorted(self.ca_bundles.items())],
            "steward_ca": self.steward_ca,
            "secrets": [{"kind": s.kind, "name": s.name, "value": base64.b64encode(s.value).decode("ascii")}
                        for s in self.secrets],
        }

    @classmethod
    def parse(cls, data: Any) -> Deploy:
        wasm = _get(data, "wasm")
        size = _get(wasm, "size")
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_WASM_SIZE:
            raise _Bad(f"wasm.size must be an integer from 1 to {MAX_WASM_SIZE}")
        digest = _get(wasm, "sha256")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise _Bad("wasm.sha256 must be 64 lower-case hex digits")
        bundles: dict[int, str] = {}
        for entry in _list(_get(data, "ca"), "ca", 1 << 10):
            fd = _get(entry, "fd")
            if not isinstance(fd, int) or isinstance(fd, bool) or fd in bundles:
                raise _Bad("ca[].fd must be distinct integers")
            bundles[fd] = _text(_get(entry, "pem"), "ca[].pem", MAX_CA_BUNDLE)
        steward_ca = _get(data, "steward_ca")
        secrets = []
        for i, entry in enumerate(_list(_get(data, "secrets"), "secrets", MAX_SECRETS)):
            kind = _get(entry, "kind")
            if kind not in SECRET_KINDS:
                raise _Bad(f"secrets[{i}].kind must be 'file' or 'env'")
            try:
                name = secret_name(_get(entry, "name"), f"secrets[{i}].name")
            except ValueError as exc:
                raise _Bad(str(exc)) from None
            secrets.append(Secret(kind, name, _b64(_get(entry, "value"), f"secrets[{i}].value", MAX_SECRET)))
        return cls(
            config=WorkloadConfig.from_json(_get(data, "config"), source="the deploy's config"),
            wasm_size=size,
            wasm_sha256=digest,
            ca_bundles=bundles,
            steward_ca=None if steward_ca is None else _text(steward_ca, "steward_ca", MAX_CA_BUNDLE),
            secrets=tuple(secrets),
            package=_package(_get(data, "package")),
        )


class Started(NamedTuple):
    workload_sha256: str  # what the keep computed from the bytes it received
    launch_sha256: str  # of the launch terms it runs (motte.shared.control.LaunchTerms.canonical_bytes)
    chain: str | None  # PEM of its Steward-issued chain, when the config names a Steward

    def payload(self) -> dict[str, Any]:
        return {"workload_sha256": self.workload_sha256, "launch_sha256": self.launch_sha256, "chain": self.chain}

    @classmethod
    def parse(cls, data: Any) -> Started:
        digests = [_get(data, key) for key in ("workload_sha256", "launch_sha256")]
        if not all(isinstance(d, str) and _HEX64.fullmatch(d) for d in digests):
            raise _Bad("the digests must be 64 lower-case hex digits")
        chain = _get(data, "chain")
        return cls(digests[0], digests[1], None if chain is None else _text(chain, "chain", 64 << 10))


class Detach(NamedTuple):
    def payload(self) -> dict[str, Any]:
        return {}

    @classmethod
    def parse(cls, data: Any) -> Detach:
        return cls()


class Abort(NamedTuple):
    message: str

    def payload(self) -> dict[str, Any]:
        return {"message": self.message[:MAX_TEXT]}

    @classmethod
    def parse(cls, data: Any) -> Abort:
        return cls(_text(_get(data, "message"), "message", MAX_TEXT))


class Output(NamedTuple):
    frame: Literal[Frame.STDOUT, Frame.STDERR, Frame.WASM]
    data: bytes


Message: TypeAlias = Hello | EvidenceOffer | Deploy | Started | Detach | Abort | Exit | Output
_JSON_TYPES: dict[Frame, Any] = {
    Frame.HELLO: Hello, Frame.EVIDENCE: EvidenceOffer, Frame.DEPLOY: Deploy, Frame.STARTED: Started,
    Frame.DETACH: Detach, Frame.ABORT: Abort,
}
_FRAME_OF: dict[type, Frame] = {kind: frame for frame, kind in _JSON_TYPES.items()}


def encode(message: Message) -> bytes:
    """One frame: the header and the payload (raw bytes, or canonical JSON)."""
    if isinstance(message, Output):
        return encode_raw(message.frame, message.data)
    if isinstance(message, Exit):
        body = canonical_json({k: v for k, v in message.to_message().items() if k != "op"})
        return HEADER.pack(Frame.EXIT, len(body)) + body
    body = canonical_json(message.payload())
    return HEADER.pack(_FRAME_OF[type(message)], len(body)) + body


def encode_raw(frame: Frame, data: bytes | memoryview) -> bytes:
    if frame not in _RAW or len(data) > MAX_CHUNK:
        raise ValueError(f"a {frame.name} frame carries raw bytes, at most {MAX_CHUNK}")
    return HEADER.pack(frame, len(data)) + bytes(data)


class FrameReader:
    """Turns received bytes into messages; raises :class:`ProvisionError` on anything malformed.
    ``sender`` names the peer in errors."""

    def __init__(self, sender: Side):
        self.sender = sender
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        out: list[Message] = []
        while len(self._buffer) >= HEADER.size:
            kind, length = HEADER.unpack_from(self._buffer)
            try:
                frame = Frame(kind)
            except ValueError:
                raise ProvisionError(f"the {self.sender} sent an unknown frame type {kind}") from None
            limit = MAX_CHUNK if frame in _RAW else MAX_MESSAGE
            if length > limit:
                raise ProvisionError(f"the {self.sender} sent a {frame.name} frame of {length} bytes (at most {limit})")
            if len(self._buffer) < HEADER.size + length:
                break
            payload = bytes(self._buffer[HEADER.size : HEADER.size + length])
            del self._buffer[: HEADER.size + length]
            out.append(self._message(frame, payload))
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buffer)

    def _message(self, frame: Frame, payload: bytes) -> Message:
        if frame in _RAW:
            return Output(frame, payload)  # type: ignore[arg-type]
        try:
            data = json.loads(payload)
            if frame is Frame.EXIT:
                return Exit.from_message(data)
            parsed: Message = _JSON_TYPES[frame].parse(data)
            return parsed
        except (ValueError, ConfigError, ControlError) as exc:
            raise ProvisionError(f"the {self.sender} sent a malformed {frame.name.lower()} message: {exc}") from None


# ---- the order -----------------------------------------------------------------------------------

#: (state, sender, frame) -> the state after it. "sent" is the state in which workload bytes flow.
ORDER: dict[tuple[str, Side, Frame], str] = {
    ("start", "tenant", Frame.HELLO): "challenged",
    ("challenged", "keep", Frame.EVIDENCE): "attested",
    ("attested", "tenant", Frame.DEPLOY): "sending",
    ("sending", "tenant", Frame.WASM): "sending",
    ("sent", "keep", Frame.STARTED): "running",
    ("running", "keep", Frame.STDOUT): "running",
    ("running", "keep", Frame.STDERR): "running",
    ("running", "tenant", Frame.DETACH): "detached",
    ("running", "keep", Frame.EXIT): "ended",
    ("detached", "keep", Frame.STDOUT): "detached",
    ("detached", "keep", Frame.STDERR): "detached",
    ("detached", "keep", Frame.EXIT): "ended",
}


class Order:
    """One side's view of the session's order, checking what it sends and what it receives.
    Tracks the workload bytes so that "sending" becomes "sent" exactly at the announced size."""

    def __init__(self, side: Side):
        self.side: Side = side
        self.peer: Side = "keep" if side == "tenant" else "tenant"
        self.state = "start"
        self._wasm_left = 0

    def sent(self, message: Message) -> None:
        self._step(self.side, *_frame_of(message))

    def received(self, message: Message) -> None:
        self._step(self.peer, *_frame_of(message))

    def sent_raw(self, frame: Frame, size: int) -> None:
        """This side sends ``size`` raw bytes in a ``frame`` (without building the message)."""
        self._step(self.side, frame, size)

    def _step(self, sender: Side, frame: Frame, size: int) -> None:
        if frame is Frame.ABORT:
            self.state = "ended"
            return
        after = ORDER.get((self.state, sender, frame))
        if after is None:
            raise ProvisionError(f"the {sender} sent {frame.name.lower()} out of turn (session {self.state})")
        if frame is Frame.DEPLOY:
            self._wasm_left = size
        elif frame is Frame.WASM:
            if size > self._wasm_left:
                raise ProvisionError(f"the {sender} sent more workload bytes than it announced")
            self._wasm_left -= size
            if self._wasm_left == 0:
                after = "sent"
        self.state = after


def _frame_of(message: Message) -> tuple[Frame, int]:
    """The frame a message travels in, and the size that matters to the order (workload bytes
    announced by a deploy or carried by a wasm frame)."""
    if isinstance(message, Output):
        return message.frame, len(message.data)
    if isinstance(message, Exit):
        return Frame.EXIT, 0
    if isinstance(message, Deploy):
        return Frame.DEPLOY, message.wasm_size
    return _FRAME_OF[type(message)], 0


# ---- field checks --------------------------------------------------------------------------------


def _package(value: Any) -> str | None:
    try:
        return package_name(value)
    except ValueError as exc:
        raise _Bad(str(exc)) from None


def _get(data: Any, key: str) -> Any:
    if not isinstance(data, Mapping) or key not in data:
        raise _Bad(f"{key!r} is missing")
    return data[key]


def _list(value: Any, what: str, most: int) -> list[Any]:
    if not isinstance(value, list) or len(value) > most:
        raise _Bad(f"{what} must be a list of at most {most}")
    return value


def _text(value: Any, what: str, most: int) -> str:
    if not isinstance(value, str) or len(value) > most:
        raise _Bad(f"{what} must be a string of at most {most} characters")
    return value


def _hex(value: Any, what: str) -> bytes:
    try:
        return bytes.fromhex(_text(value, what, 256))
    except ValueError:
        raise _Bad(f"{what} must be hex") from None


def _b64(value: Any, what: str, most: int) -> bytes:
    text = _text(value, what, (most + 2) // 3 * 4)
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise _Bad(f"{what} must be base64") from None
