"""The host agent's API (``motte host serve``), as both its server and the tenant's client see it.

Sans-I/O: the request to launch a keep, the keep's record, and the conventions of a session
websocket. Each side checks what the other sends (the tenant does not trust the host, and the
host does not trust its clients). ``docs/deploy.md`` documents the API for people.

A session websocket carries one tenant connection to a keep: binary messages are the tenant's
TLS bytes, to and from the keep, up to :data:`MAX_MESSAGE` bytes each. An empty binary message
is a half close (no more bytes from its sender). Closing the websocket with 1000 ends the
connection in order; the agent's close codes say why it ended a session.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from motte.shared.control import MAX_PROVISION_WAIT_MS, MAX_TIMEOUT_MS, WASM_PAGE

DEFAULT_PORT = 7313
DEFAULT_WAIT_MS = 60_000
MAX_MESSAGE = 1 << 20
MAX_ERROR_TEXT = 1000
#: seconds between the agent's pings on a quiet session: the agent takes a client that does not
#: answer within half of it for gone, the client an agent it hears nothing from for three
HEARTBEAT = 20.0
#: the session ended in order: both sides half-closed, or the keep closed the connection
CLOSE_NORMAL = 1000
#: the keep ended (exited, stopped or failed) while the session was open
CLOSE_KEEP_ENDED = 4001
#: the keep reset the connection; the close reason says why
CLOSE_RESET = 4002

KeepState = Literal["starting", "provisioning", "running", "exited", "stopped", "failed"]
STATES: tuple[KeepState, ...] = ("starting", "provisioning", "running", "exited", "stopped", "failed")
LIVE_STATES: frozenset[str] = frozenset({"starting", "provisioning", "running"})


class ApiFieldError(ValueError):
    """A field of a request or record is missing, unknown, or of the wrong type or range."""


class KeepRequest(NamedTuple):
    """``POST /v1/keeps``: launch an empty keep that waits for its tenant."""

    backend: str | None = None  # None: the agent's default (the strongest it can run)
    memory: int | None = None  # the workload's memory cap in bytes; None: the agent's default
    timeout_ms: int | None = None  # the workload's deadline once it runs
    wait_ms: int = DEFAULT_WAIT_MS  # how long the empty keep waits to be provisioned
    detach: bool = False  # False: the agent stops the keep when its last session closes

    def to_json(self) -> dict[str, Any]:
        return self._asdict()

    @classmethod
    def from_json(cls, data: Any) -> KeepRequest:
        if not isinstance(data, Mapping):
            raise ApiFieldError("the request must be a JSON object")
        unknown = sorted(set(data) - set(cls._fields))
        if unknown:
            raise ApiFieldError(f'unknown field "{str(unknown[0])[:40]}"; the fields are {", ".join(cls._fields)}')
        backend = data.get("backend")
        if backend is not None and not (isinstance(backend, str) and 0 < len(backend) <= 32):
            raise ApiFieldError("backend must be a backend's name, such as \"nil\" or \"kvm\"")
        detach = data.get("detach", False)
        if not isinstance(detach, bool):
            raise ApiFieldError("detach must be true or false")
        return cls(
            backend=backend,
            memory=_optional_int(data.get("memory"), "memory", WASM_PAGE, 1 << 62),
            timeout_ms=_optional_int(data.get("timeout_ms"), "timeout_ms", 1, MAX_TIMEOUT_MS),
            wait_ms=_int(data.get("wait_ms", DEFAULT_WAIT_MS), "wait_ms", 1, MAX_PROVISION_WAIT_MS),
            detach=detach,
        )


class KeepExit(NamedTuple):
    """How a keep's workload ended, as the keep told the host (the message went to the tenant)."""

    status: int
    reason: str


class KeepRecord(NamedTuple):
    """What the agent knows about one keep it launched."""

    id: str
    backend: str
    state: KeepState
    created: str  # ISO 8601, UTC
    memory: int
    timeout_ms: int | None
    wait_ms: int
    detach: bool
    isolation: str | None = None  # known once launched
    pid: int | None = None  # the host process holding the keep's memory, if there is one
    sessions: int = 0  # tenant connections open now
    ended: str | None = None
    exit: KeepExit | None = None
    error: str | None = None  # why it failed

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    def to_json(self) -> dict[str, Any]:
        data = self._asdict()
        data["exit"] = None if self.exit is None else self.exit._asdict()
        return data

    @classmethod
    def from_json(cls, data: Any) -> KeepRecord:
        if not isinstance(data, Mapping):
            raise ApiFieldError("a keep record must be a JSON object")
        state = data.get("state")
        if state not in STATES:
            raise ApiFieldError(f"state must be one of {', '.join(STATES)}")
        exit_data = data.get("exit")
        keep_exit = None
        if exit_data is not None:
            if not isinstance(exit_data, Mapping):
                raise ApiFieldError("exit must be an object")
            keep_exit = KeepExit(_int(exit_data.get("status"), "exit.status", 0, 255),
                                 _str(exit_data.get("reason"), "exit.reason", 16))
        return cls(
            id=_str(data.get("id"), "id", 64),
            backend=_str(data.get("backend"), "backend", 32),
            state=state,
            created=_str(data.get("created"), "created", 64),
            memory=_int(data.get("memory"), "memory", 0, 1 << 62),
            timeout_ms=_optional_int(data.get("timeout_ms"), "timeout_ms", 1, MAX_TIMEOUT_MS),
            wait_ms=_int(data.get("wait_ms"), "wait_ms", 1, MAX_PROVISION_WAIT_MS),
            detach=data.get("detach") is True,
            isolation=_optional_str(data.get("isolation"), "isolation", 200),
            pid=_optional_int(data.get("pid"), "pid", 1, 1 << 31),
            sessions=_int(data.get("sessions", 0), "sessions", 0, 1 << 16),
            ended=_optional_str(data.get("ended"), "ended", 64),
            exit=keep_exit,
            error=_optional_str(data.get("error"), "error", MAX_ERROR_TEXT),
        )


def _int(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    raise ApiFieldError(f"{what} must be an integer from {low} to {high}")


def _optional_int(value: Any, what: str, low: int, high: int) -> int | None:
    return None if value is None else _int(value, what, low, high)


def _str(value: Any, what: str, most: int) -> str:
    if isinstance(value, str) and len(value) <= most:
        return value
    raise ApiFieldError(f"{what} must be a string of at most {most} characters")


def _optional_str(value: Any, what: str, most: int) -> str | None:
    return None if value is None else _str(value, what, most)
