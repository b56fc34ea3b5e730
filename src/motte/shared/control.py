"""The control stream: every message the host and the keep exchange on stream 0, and their order.

Each message is a typed value (a ``NamedTuple``: ``dataclasses`` would cost the keep's start-up
8 ms of imports) with ``to_message`` (a JSON object whose ``"op"`` names it) and
``from_message`` (which validates: whatever the host sends comes from the untrusted side, and the
host does not trust the keep's words either). The channel encodes every control message with
:func:`motte.shared.channel.canonical_json`, so a message has one byte encoding; the keep will
hash :meth:`LaunchTerms.canonical_bytes` into its attested identity.

The order is one table, :data:`SEQUENCE`, that both ends follow through :class:`Conversation`::

    phase             sender  message    next phase
    awaiting launch   host    launch     running     the workload, its config and where each part arrives
    awaiting launch   host    provision  provisioning  no workload: wait for the tenant (motte deploy)
    awaiting launch   keep    exit       exited      the keep could not take what the host sent
    provisioning      keep    serve      serving     the tenant's workload arrived: serve its sockets
    provisioning      keep    exit       exited      no valid provisioning in time, or it failed
    serving           host    served     running     the sockets are bound (or why they could not be)
    serving           keep    exit       exited
    running           keep    accepted   running     the workload took a network connection
    running           keep    connection_failed  running  the keep gave up a connection it accepted itself
    running           keep    stats      reported    once, after the workload ended
    running           keep    exit       exited      how the workload ended
    reported          keep    exit       exited
    exited            host    bye        done        the host has everything: a VM keep may power off

Anything else (an unknown op, a message out of turn, a malformed one) is a :class:`ControlError`
naming the side that broke the protocol. The data streams the launch names (the workload bytes,
stdio, ``--dir``) are opened before it. A provisioned keep gets its workload from the tenant over
TLS that ends inside it, carried on streams of kind :data:`PROVISION_STREAM` the host opens, one
per tenant connection (the protocol inside is :mod:`motte.shared.provision`); see
``docs/architecture.md`` and ``docs/deploy.md`` for the whole picture.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import Enum
from types import MappingProxyType
from typing import Any, Literal, NamedTuple, TypeAlias

from motte.shared.channel import ProtocolError, Role, canonical_json
from motte.shared.enarx_config import ConfigError, WorkloadConfig

MAX_WASM_SIZE = 512 << 20
MAX_CA_BUNDLE = 128 << 10  # one PEM bundle: the extra CA of a TLS connect file, or the Steward's CA
MAX_PREOPENS = 64
MAX_GUEST_PATH = 1024
MAX_BACKTRACE = 64  # frames of a trap's backtrace the keep reports
MAX_EXIT_TEXT = 4096  # characters of an exit message or of one backtrace line
MAX_PEER = 64  # characters of a peer's address ("[v6 address]:port")
MAX_TIMEOUT_MS = 366 * 24 * 3600 * 1000  # a year and a day: more than the CLI allows, less than a thread can wait
WASM_PAGE = 64 << 10
STDIO_KINDS = frozenset({"stdin", "stdout", "stderr"})
PROVISION_STREAM = "provision"  # the kind of a stream carrying one tenant connection to a provisioned keep
MAX_SECRETS = 64
MAX_SECRET_NAME = 128
MAX_PACKAGE_NAME = 512
MAX_PROVISION_WAIT_MS = 3_600_000
SECRET_KINDS = frozenset({"file", "env"})
Delivery = Literal["run", "deploy"]
ExitReason = Literal["exit", "trap", "timeout", "memory", "error"]
EXIT_REASONS: frozenset[str] = frozenset({"exit", "trap", "timeout", "memory", "error"})
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_SECRET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_NO_BUNDLES: Mapping[int, str] = MappingProxyType({})
_NO_STREAMS: Mapping[int, int] = MappingProxyType({})


class ControlError(ProtocolError):
    """A control message that is unknown, out of turn or malformed; the text names who sent it."""


class _Malformed(ValueError):
    """A field of a control message is missing or of the wrong type or range."""


# ---- the messages ----------------------------------------------------------------------------


class LaunchTerms(NamedTuple):
    """Everything the host supplies that decides what the workload is and sees. Attestation
    binds these; nothing here depends on the channel or the host's file layout."""

    wasm_size: int
    wasm_sha256: str  # lower-case hex
    config: WorkloadConfig
    dirs: tuple[str, ...] = ()  # guest paths of the preopened directories, in preopen order
    memory_limit: int = 1 << 30
    timeout_ms: int | None = None
    ca_bundles: Mapping[int, str] = _NO_BUNDLES  # TLS connect fd -> PEM of its extra CA
    steward_ca: str | None = None  # PEM of the CA the keep trusts for the Steward's TLS certificate
    #: who supplied the terms: the host (``motte run``) or the tenant over attested TLS (``motte deploy``)
    delivery: Delivery = "run"
    secrets: tuple[tuple[str, str], ...] = ()  # (kind, name) of each tenant secret; never the value
    package: str | None = None  # deploy from a registry: the package ("host/user/repo:tag")

    @property
    def timeout(self) -> float | None:
        return None if self.timeout_ms is None else self.timeout_ms / 1000

    def to_message(self) -> dict[str, Any]:
        return {
            "wasm": {"size": self.wasm_size, "sha256": self.wasm_sha256},
            "config": self.config.to_json(),
            "dirs": list(self.dirs),
            "limits": {"memory": self.memory_limit, "timeout_ms": self.timeout_ms},
            "ca": [{"fd": fd, "pem": pem} for fd, pem in sorted(self.ca_bundles.items())],
            "steward_ca": self.steward_ca,
            "delivery": self.delivery,
            "secrets": [{"kind": kind, "name": name} for kind, name in self.secrets],
            "package": self.package,
        }

    def canonical_bytes(self) -> bytes:
        """The one byte encoding of the terms (what attestation hashes)."""
        return canonical_json(self.to_message())

    @classmethod
    def from_message(cls, data: Any) -> LaunchTerms:
        wasm, limits = _object(_get(data, "wasm"), "wasm"), _object(_get(data, "limits"), "limits")
        dirs = _list(_get(data, "dirs"), "dirs", MAX_PREOPENS)
        timeout_ms = _get(limits, "timeout_ms")
        terms = cls(
            wasm_size=_int(_get(wasm, "size"), "wasm.size", 1, MAX_WASM_SIZE),
            wasm_sha256=_sha256(_get(wasm, "sha256"), "wasm.sha256"),
            config=WorkloadConfig.from_json(_get(data, "config")),
            dirs=tuple(_guest_path(path, f"dirs[{i}]") for i, path in enumerate(dirs)),
            memory_limit=_int(_get(limits, "memory"), "limits.memory", WASM_PAGE, 1 << 62),
            timeout_ms=None if timeout_ms is None else _int(timeout_ms, "limits.timeout_ms", 1, MAX_TIMEOUT_MS),
            ca_bundles=_ca_bundles(_get(data, "ca")),
            steward_ca=_optional_pem(_get(data, "steward_ca"), "steward_ca"),
            delivery=_delivery(_get(data, "delivery")),
            secrets=_secrets(_get(data, "secrets")),
            package=package_name(_get(data, "package")),
        )
        terms.check()
        return terms

    def check(self) -> None:
        """The rules that tie the fields together (both ends check them: the host before sending)."""
        for fd in self.ca_bundles:
            spec = self.config.files[fd] if 0 <= fd < len(self.config.files) else None
            if spec is None or spec.kind != "connect" or spec.prot != "tls":
                raise _Malformed(f"a CA bundle was sent for fd {fd}, which is no TLS connect file")
        if self.steward_ca is not None and self.config.steward is None:
            raise _Malformed("a Steward CA bundle was sent, but the workload config names no steward")
        if (self.secrets or self.package is not None) and self.delivery != "deploy":
            raise _Malformed("secrets and registry packages come only in a deploy, never through the host")
        env_names = [name for kind, name in self.secrets if kind == "env"]
        clash = set(env_names) & set(self.config.env)
        if clash or len(set(self.secrets)) != len(self.secrets):
            raise _Malformed(f"secret {sorted(clash)[0] if clash else 'name'!r} given twice")


class LaunchStreams(NamedTuple):
    """Where each part of the launch arrives on the channel, and the host's module cache."""

    wasm: int
    stdio: Mapping[int, int] = _NO_STREAMS  # fd of a stdio file -> its stream
    dirs: tuple[int, ...] = ()  # the stream serving each of LaunchTerms.dirs, in the same order
    cache_dir: str | None = None  # compiled-module cache; honoured by nil keeps only
    terminals: frozenset[int] = frozenset()  # the stdio fds whose end on the host is a terminal

    def to_message(self) -> dict[str, Any]:
        return {
            "wasm": self.wasm,
            "stdio": [{"fd": fd, "stream": stream} for fd, stream in sorted(self.stdio.items())],
            "dirs": list(self.dirs),
            "cache_dir": self.cache_dir,
            "terminals": sorted(self.terminals),
        }

    @classmethod
    def from_message(cls, data: Any) -> LaunchStreams:
        stdio: dict[int, int] = {}
        for i, entry in enumerate(_list(_get(data, "stdio"), "streams.stdio", 1 << 16)):
            fd = _int(_get(entry, "fd"), f"streams.stdio[{i}].fd")
            if fd in stdio:
                raise _Malformed(f"streams.stdio names fd {fd} twice")
            stdio[fd] = _stream(_get(entry, "stream"), f"streams.stdio[{i}].stream")
        cache_dir = _get(data, "cache_dir")
        dirs = _list(_get(data, "dirs"), "streams.dirs", MAX_PREOPENS)
        terminals = _list(_get(data, "terminals"), "streams.terminals", 1 << 16)
        return cls(
            wasm=_stream(_get(data, "wasm"), "streams.wasm"),
            stdio=stdio,
            dirs=tuple(_stream(stream, f"streams.dirs[{i}]") for i, stream in enumerate(dirs)),
            cache_dir=None if cache_dir is None else _str(cache_dir, "streams.cache_dir", 4096),
            terminals=frozenset(_int(fd, f"streams.terminals[{i}]") for i, fd in enumerate(terminals)),
        )


class Launch(NamedTuple):
    """host -> keep, first: run this workload."""

    terms: LaunchTerms
    streams: LaunchStreams

    def to_message(self) -> dict[str, Any]:
        self.terms.check()
        return {"op": "launch", "terms": self.terms.to_message(), "streams": self.streams.to_message()}

    @classmethod
    def from_message(cls, data: Any) -> Launch:
        launch = cls(LaunchTerms.from_message(_get(data, "terms")), LaunchStreams.from_message(_get(data, "streams")))
        files = launch.terms.config.files
        for fd, spec in enumerate(files):
            if spec.kind in STDIO_KINDS and fd not in launch.streams.stdio:
                raise _Malformed(f"no channel stream for fd {fd} ({spec.kind})")
        for fd in launch.streams.stdio:
            if not (0 <= fd < len(files) and files[fd].kind in STDIO_KINDS):
                raise _Malformed(f"a stdio stream was sent for fd {fd}, which is no stdio file")
        if not launch.streams.terminals <= launch.streams.stdio.keys():
            raise _Malformed("streams.terminals names an fd that has no stdio stream")
        if len(launch.streams.dirs) != len(launch.terms.dirs):
            raise _Malformed(f"{len(launch.terms.dirs)} preopened directories but {len(launch.streams.dirs)} streams")
        return launch


class Provision(NamedTuple):
    """host -> keep, first: start empty and wait, at most ``wait_ms``, for the tenant to provision
    a workload over TLS relayed on :data:`PROVISION_STREAM` streams. The limits are the host's
    (it pays for the resources); the keep binds them into the launch like everything else."""

    wait_ms: int
    memory_limit: int = 1 << 30
    timeout_ms: int | None = None

    def to_message(self) -> dict[str, Any]:
        return {"op": "provision", "wait_ms": self.wait_ms,
                "limits": {"memory": self.memory_limit, "timeout_ms": self.timeout_ms}}

    @classmethod
    def from_message(cls, data: Any) -> Provision:
        limits = _object(_get(data, "limits"), "limits")
        timeout_ms = _get(limits, "timeout_ms")
        return cls(
            wait_ms=_int(_get(data, "wait_ms"), "wait_ms", 1, MAX_PROVISION_WAIT_MS),
            memory_limit=_int(_get(limits, "memory"), "limits.memory", WASM_PAGE, 1 << 62),
            timeout_ms=None if timeout_ms is None else _int(timeout_ms, "limits.timeout_ms", 1, MAX_TIMEOUT_MS),
        )


class Serve(NamedTuple):
    """keep -> host, once provisioned: what the host must do for the workload, and no more. The
    config is the network view of the tenant's (its files' kinds, names, addresses and ports, and
    the Steward URL): no args, no env, no CA bundles; the host binds the listen ports and makes
    the connections the keep asks for, as in a run."""

    config: WorkloadConfig

    def to_message(self) -> dict[str, Any]:
        return {"op": "serve", "config": self.config.to_json()}

    @classmethod
    def from_message(cls, data: Any) -> Serve:
        config = WorkloadConfig.from_json(_get(data, "config"))
        if config.args or config.env or config.steward_ca or any(spec.ca for spec in config.files):
            raise _Malformed("the network view of a config carries no args, env or CA bundles")
        return cls(config)

    @staticmethod
    def network_view(config: WorkloadConfig) -> WorkloadConfig:
        """What of ``config`` the host needs to see to serve the workload's sockets."""
        return WorkloadConfig(steward=config.steward,
                              files=[spec._replace(ca=None) for spec in config.files])


class Served(NamedTuple):
    """host -> keep: the sockets :class:`Serve` asked for are ready, or why they are not."""

    error: str | None = None

    def to_message(self) -> dict[str, Any]:
        return {"op": "served", "error": self.error}

    @classmethod
    def from_message(cls, data: Any) -> Served:
        error = _get(data, "error")
        return cls(None if error is None else _str(error, "error", MAX_EXIT_TEXT))


class Accepted(NamedTuple):
    """keep -> host: the workload took the connection on this stream (the host may queue another)."""

    stream: int

    def to_message(self) -> dict[str, Any]:
        return {"op": "accepted", "stream": self.stream}

    @classmethod
    def from_message(cls, data: Any) -> Accepted:
        return cls(_stream(_get(data, "stream"), "stream"))


class ConnectionFailed(NamedTuple):
    """keep -> host: the keep gave up a connection it accepted on a listen socket the host handed
    over (``fd``, the WASI fd), from ``peer``: the host warns as it does for a relayed one."""

    fd: int
    peer: str
    reason: str

    def to_message(self) -> dict[str, Any]:
        return {"op": "connection_failed", "fd": self.fd, "peer": self.peer[:MAX_PEER],
                "reason": self.reason[:MAX_EXIT_TEXT]}

    @classmethod
    def from_message(cls, data: Any) -> ConnectionFailed:
        return cls(_int(_get(data, "fd"), "fd", 0, (1 << 31) - 1), _str(_get(data, "peer"), "peer", MAX_PEER),
                   _str(_get(data, "reason"), "reason", MAX_EXIT_TEXT))


class Stats(NamedTuple):
    """keep -> host, once the workload ended: how its module was compiled."""

    cached: bool
    compile_us: int

    def to_message(self) -> dict[str, Any]:
        return {"op": "stats", "cached": self.cached, "compile_us": self.compile_us}

    @classmethod
    def from_message(cls, data: Any) -> Stats:
        cached = _get(data, "cached")
        if not isinstance(cached, bool):
            raise _Malformed("cached must be true or false")
        return cls(cached, _int(_get(data, "compile_us"), "compile_us"))


class Exit(NamedTuple):
    """keep -> host: how the workload (or its launch) ended. ``status`` is motte's exit status."""

    status: int
    reason: ExitReason  # exit | trap | timeout | memory | error
    message: str = ""
    backtrace: tuple[str, ...] = ()

    def to_message(self) -> dict[str, Any]:
        return {
            "op": "exit", "status": self.status, "reason": self.reason,
            "message": self.message[:MAX_EXIT_TEXT],
            "backtrace": [line[:MAX_EXIT_TEXT] for line in self.backtrace[:MAX_BACKTRACE]],
        }

    @classmethod
    def from_message(cls, data: Any) -> Exit:
        reason = _get(data, "reason")
        if reason not in EXIT_REASONS:
            raise _Malformed(f"reason must be one of {', '.join(sorted(EXIT_REASONS))}")
        lines = _list(_get(data, "backtrace"), "backtrace", MAX_BACKTRACE)
        return cls(
            status=_int(_get(data, "status"), "status", 0, 255),
            reason=reason,
            message=_str(_get(data, "message"), "message", MAX_EXIT_TEXT),
            backtrace=tuple(_str(line, f"backtrace[{i}]", MAX_EXIT_TEXT) for i, line in enumerate(lines)),
        )


class Bye(NamedTuple):
    """host -> keep, after the exit: the host has all output; a VM keep may now power off."""


    def to_message(self) -> dict[str, Any]:
        return {"op": "bye"}

    @classmethod
    def from_message(cls, data: Any) -> Bye:
        return cls()


ControlMessage: TypeAlias = (Launch | Provision | Serve | Served | Accepted | ConnectionFailed | Stats | Exit
                              | Bye)
MESSAGES: dict[str, type[ControlMessage]] = {
    "launch": Launch, "provision": Provision, "serve": Serve, "served": Served,
    "accepted": Accepted, "connection_failed": ConnectionFailed, "stats": Stats, "exit": Exit, "bye": Bye,
}


# ---- the sequence ----------------------------------------------------------------------------


class Phase(Enum):
    AWAITING_LAUNCH = "awaiting launch"
    PROVISIONING = "provisioning"
    SERVING = "serving"
    RUNNING = "running"
    REPORTED = "reported"
    EXITED = "exited"
    DONE = "done"


#: (phase, sender, op) -> the phase after it. The one definition of the order; both ends follow it.
SEQUENCE: dict[tuple[Phase, Role, str], Phase] = {
    (Phase.AWAITING_LAUNCH, "host", "launch"): Phase.RUNNING,
    (Phase.AWAITING_LAUNCH, "host", "provision"): Phase.PROVISIONING,
    (Phase.AWAITING_LAUNCH, "keep", "exit"): Phase.EXITED,
    (Phase.PROVISIONING, "keep", "serve"): Phase.SERVING,
    (Phase.PROVISIONING, "keep", "exit"): Phase.EXITED,
    (Phase.SERVING, "host", "served"): Phase.RUNNING,
    (Phase.SERVING, "keep", "exit"): Phase.EXITED,
    (Phase.RUNNING, "keep", "accepted"): Phase.RUNNING,
    (Phase.RUNNING, "keep", "connection_failed"): Phase.RUNNING,
    (Phase.RUNNING, "keep", "stats"): Phase.REPORTED,
    (Phase.RUNNING, "keep", "exit"): Phase.EXITED,
    (Phase.REPORTED, "keep", "exit"): Phase.EXITED,
    (Phase.EXITED, "host", "bye"): Phase.DONE,
}


class Conversation:
    """One side's view of the control sequence: checks and advances it for every message sent
    (:meth:`sending`) and received (:meth:`received`). Pure: the caller does the I/O."""

    def __init__(self, role: Role):
        self.role: Role = role
        self.peer: Role = "keep" if role == "host" else "host"
        self.phase = Phase.AWAITING_LAUNCH

    def sending(self, message: ControlMessage) -> dict[str, Any]:
        """The JSON object to send for ``message``, once the sequence allows this side to send it."""
        data = message.to_message()
        self._advance(self.role, data["op"])
        return data

    def received(self, data: Mapping[str, Any]) -> ControlMessage:
        """Parse and check a message from the peer; :class:`ControlError` names the peer if it broke the rules."""
        op = data.get("op")
        kind = MESSAGES.get(op) if isinstance(op, str) else None
        if kind is None or not isinstance(op, str):
            raise ControlError(f"the {self.peer} sent an unknown control message {_shown(op)}")
        after = self._next(self.peer, op)
        try:
            message = kind.from_message(data)
        except (_Malformed, ConfigError) as exc:
            raise ControlError(f"the {self.peer} sent a malformed {op!r} message: {exc}") from None
        self.phase = after
        return message

    def _advance(self, sender: Role, op: str) -> None:
        self.phase = self._next(sender, op)

    def _next(self, sender: Role, op: str) -> Phase:
        after = SEQUENCE.get((self.phase, sender, op))
        if after is None:
            allowed = sorted(o for (p, s, o) in SEQUENCE if p is self.phase and s == sender)
            expected = f"it may send {' or '.join(map(repr, allowed))}" if allowed else "it may send nothing"
            raise ControlError(f"the {sender} sent {op!r} out of turn ({self.phase.value}: {expected})")
        return after


# ---- field checks (the host and the keep do not trust each other's JSON) ------------------------


def _get(data: Any, key: str) -> Any:
    if not isinstance(data, Mapping):
        raise _Malformed(f"expected an object holding {key!r}")
    if key not in data:
        raise _Malformed(f"{key!r} is missing")
    return data[key]


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _Malformed(f"{what} must be an object")
    return value


def _list(value: Any, what: str, most: int) -> list[Any]:
    if not isinstance(value, list):
        raise _Malformed(f"{what} must be a list")
    if len(value) > most:
        raise _Malformed(f"{what} has {len(value)} entries, more than {most}")
    return value


def _int(value: Any, what: str, low: int = 0, high: int = (1 << 63) - 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _Malformed(f"{what} must be an integer from {low} to {high}")
    return value


def _stream(value: Any, what: str) -> int:
    return _int(value, what, 1, (1 << 31) - 1)


def _str(value: Any, what: str, most: int) -> str:
    if not isinstance(value, str):
        raise _Malformed(f"{what} must be a string")
    if len(value) > most:
        raise _Malformed(f"{what} is longer than {most} characters")
    return value


def _sha256(value: Any, what: str) -> str:
    text = _str(value, what, 64)
    if not _SHA256_HEX.fullmatch(text):
        raise _Malformed(f"{what} must be 64 lower-case hex digits")
    return text


def _guest_path(value: Any, what: str) -> str:
    path = _str(value, what, MAX_GUEST_PATH)
    if not 0 < len(path.encode("utf-8", "surrogatepass")) <= MAX_GUEST_PATH or "\0" in path:
        raise _Malformed(f"{what} must be a path of 1 to {MAX_GUEST_PATH} bytes without NUL")
    return path


def _optional_pem(value: Any, what: str) -> str | None:
    if value is None:
        return None
    pem = _str(value, what, MAX_CA_BUNDLE)
    if len(pem.encode("utf-8", "surrogatepass")) > MAX_CA_BUNDLE:
        raise _Malformed(f"{what} exceeds {MAX_CA_BUNDLE} bytes")
    return pem


def _ca_bundles(value: Any) -> dict[int, str]:
    bundles: dict[int, str] = {}
    for i, entry in enumerate(_list(value, "ca", 1 << 16)):
        fd = _int(_get(entry, "fd"), f"ca[{i}].fd")
        if fd in bundles:
            raise _Malformed(f"ca names fd {fd} twice")
        pem = _optional_pem(_get(entry, "pem"), f"the CA bundle for fd {fd}")
        if pem is None:
            raise _Malformed(f"ca[{i}].pem must be a string")
        bundles[fd] = pem
    return bundles


def _delivery(value: Any) -> Delivery:
    if value == "run":
        return "run"
    if value == "deploy":
        return "deploy"
    raise _Malformed("delivery must be 'run' or 'deploy'")


def _secrets(value: Any) -> tuple[tuple[str, str], ...]:
    out = []
    for i, entry in enumerate(_list(value, "secrets", MAX_SECRETS)):
        kind = _get(entry, "kind")
        if kind not in SECRET_KINDS:
            raise _Malformed(f"secrets[{i}].kind must be 'file' or 'env'")
        out.append((kind, secret_name(_get(entry, "name"), f"secrets[{i}].name")))
    return tuple(out)


def package_name(value: Any, what: str = "package") -> str | None:
    """A registry package's name as deploy binds it (``host/user/repo:tag``), or None."""
    if value is None:
        return None
    name = _str(value, what, MAX_PACKAGE_NAME)
    if not name or not name.isprintable() or not name.isascii() or " " in name:
        raise _Malformed(f"{what} must be printable ASCII without spaces")
    return name


def secret_name(value: Any, what: str = "secret name") -> str:
    """A secret's name: a file name in the secrets directory, or an environment variable's name."""
    name = _str(value, what, MAX_SECRET_NAME)
    if not _SECRET_NAME.fullmatch(name):
        raise _Malformed(f"{what} must be 1 to {MAX_SECRET_NAME} of A-Z a-z 0-9 _ . - and not start with '.' or '-'")
    return name


def _shown(value: Any) -> str:
    return repr(value)[:80]
