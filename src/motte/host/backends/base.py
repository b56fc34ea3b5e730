"""The interface every keep backend implements."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

from motte.shared.endpoint import Endpoint

Progress = Callable[[str], None]


@dataclass(frozen=True)
class LaunchSpec:
    """What the host knows about the keep before it starts (the workload comes later, by channel)."""

    memory_bytes: int  # the workload's memory cap; VM backends size the guest from it
    vcpus: int = 1
    boot_timeout: float = 60.0  # seconds until the keep must have said HELLO
    accel: str = "auto"  # VM backends: auto | kvm | tcg


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


class Backend(abc.ABC):
    name: str

    @abc.abstractmethod
    def launch(self, spec: LaunchSpec, progress: Progress | None = None) -> KeepHandle:
        """Start a keep and return once its channel has completed the HELLO exchange."""
