"""The interface every keep backend implements."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from motte.shared.endpoint import Endpoint

if TYPE_CHECKING:
    import socket

    from motte.host.channel_tap import Tap as ChannelTap

Progress = Callable[[str], None]


@dataclass(frozen=True)
class LaunchSpec:
    """What the host knows about the keep before it starts (the workload comes later, by channel)."""

    memory_bytes: int  # the workload's memory cap; VM backends size the guest from it
    vcpus: int = 1
    boot_timeout: float = 60.0  # seconds until the keep must have said HELLO
    accel: str = "auto"  # VM backends: auto | kvm | tcg
    #: sees every byte of the keep's channel (tests of what the host can see); see motte.host.channel_tap
    channel_tap: ChannelTap | None = field(default=None, compare=False, repr=False)


class KeepHandle(abc.ABC):
    """A running keep: its channel and its lifetime. ``close`` leaves nothing behind."""

    endpoint: Endpoint
    backend: str
    #: how this keep is isolated, in words a user reads (e.g. "a child process: no isolation")
    isolation: str

    @abc.abstractmethod
    def memory_pid(self) -> int | None:
        """The host process whose memory holds the keep's memory (for the secret-search demo)."""

    @abc.abstractmethod
    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the keep process to end; its exit status, or None on timeout."""

    @abc.abstractmethod
    def close(self, grace: float = 2.0) -> None:
        """End the keep (after ``grace`` seconds, by force) and remove every resource it held.

        Idempotent; safe to call from error paths."""

    def take_listen_sockets(self, sockets: Mapping[int, socket.socket]) -> bool:
        """Hand the workload's listen sockets (WASI fd -> bound socket) to the keep, which then
        accepts on them itself; False if this keep cannot take them (its connections are relayed).
        Only a nil keep can: a VM's only way out is its channel."""
        return False


@dataclass(frozen=True)
class Check:
    """One thing a backend needs from the host, and what this host has."""

    name: str
    ok: bool
    detail: str  # what was found; on failure, what is missing and what is needed
    required: bool = True  # False: reported for information, does not decide support


@dataclass(frozen=True)
class BackendReport:
    """Whether this host can run a backend, with every check behind it."""

    name: str
    supported: bool
    summary: str
    checks: list[Check]
    notes: list[str] = field(default_factory=list)  # about the host, for whoever reads the report


def failed(checks: Sequence[Check]) -> list[Check]:
    """The required checks that did not pass."""
    return [c for c in checks if c.required and not c.ok]


def unsupported(checks: Sequence[Check]) -> str:
    """The summary of a backend this host cannot run: the checks it failed."""
    return "no: " + "; ".join(c.name for c in failed(checks))


class BackendChecks(abc.ABC):
    """The checks behind whether this host can run one kind of keep (device nodes, CPU flags,
    kernel modules, QEMU, permissions...), as Enarx's ``Backend::data``/``have``. Each backend
    decides its own; ``motte platform info`` only collects them."""

    name: str

    @abc.abstractmethod
    def data(self, *, probe: bool = False) -> list[Check]:
        """Every check, with its result. Only reads, unless ``probe`` allows a slow probe."""

    def have(self, checks: Sequence[Check]) -> bool:
        """Whether this host can run the backend: every required check passed."""
        return not failed(checks)

    @abc.abstractmethod
    def summary(self, checks: Sequence[Check]) -> str:
        """One line: whether this host can run the backend, and the main reason."""

    def notes(self, checks: Sequence[Check]) -> list[str]:
        """What a user of this host should know beyond the checks."""
        return []

    def report(self, *, probe: bool = False) -> BackendReport:
        checks = self.data(probe=probe)
        return BackendReport(self.name, self.have(checks), self.summary(checks), checks, self.notes(checks))


class Backend(BackendChecks):
    """A kind of keep motte can launch."""

    @abc.abstractmethod
    def launch(self, spec: LaunchSpec, progress: Progress | None = None) -> KeepHandle:
        """Start a keep and return once its channel has completed the HELLO exchange."""
