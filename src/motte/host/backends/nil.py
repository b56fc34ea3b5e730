"""The ``nil`` backend: the keep runtime in a child process of the host. No isolation at all.

It exists for development and as the baseline: the child runs exactly the in-keep code a VM keep
runs, and talks to the host only over the channel (a socketpair), so every protocol path is
exercised without a hypervisor.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Mapping, Sequence

from motte.host.backends.base import Backend, Check, KeepHandle, LaunchSpec, Progress
from motte.host.channel_tap import channel_transport
from motte.host.nil_process import spawn_nil_keep, take_prespawned
from motte.shared.endpoint import Endpoint
from motte.shared.errors import MotteError
from motte.shared.socket_handover import MAX_SOCKETS, send_sockets


class NilKeep(KeepHandle):
    backend = "nil"
    isolation = "a child process of the host: no isolation, no memory protection, no attestation"

    def __init__(self, pid: int, endpoint: Endpoint, handover: socket.socket | None = None):
        self.pid = pid
        self.endpoint = endpoint
        self.handover = handover
        self._status: int | None = None
        self._closed = False

    def memory_pid(self) -> int | None:
        return self.pid

    def wait(self, timeout: float | None = None) -> int | None:
        if self._status is not None:
            return self._status
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while True:
            try:
                pid, status = os.waitpid(self.pid, 0 if deadline is None else os.WNOHANG)
            except ChildProcessError:
                self._status = -1  # already reaped elsewhere
                return self._status
            if pid == self.pid:
                self._status = os.waitstatus_to_exitcode(status)
                return self._status
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def take_listen_sockets(self, sockets: Mapping[int, socket.socket]) -> bool:
        if self.handover is None or not 0 < len(sockets) <= MAX_SOCKETS:
            return False
        try:
            send_sockets(self.handover, sockets)
        except OSError:
            return False  # the keep is gone: the launch fails on the channel
        return True

    def close(self, grace: float = 2.0) -> None:
        if self._closed:
            return
        self._closed = True
        self.endpoint.close()
        if self.handover is not None:
            self.handover.close()
        if self.wait(grace) is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.wait()


class NilBackend(Backend):
    name = "nil"

    def data(self, *, probe: bool = False) -> list[Check]:
        import importlib.util  # only 'motte platform info' asks; a launch does not

        wasmtime = importlib.util.find_spec("wasmtime") is not None
        return [
            Check("wasmtime", wasmtime, "importable" if wasmtime else "not installed: pip install wasmtime"),
            Check("isolation", True, "none: the keep is a child process of the host (development only)", False),
        ]

    def summary(self, checks: Sequence[Check]) -> str:
        return "yes: no isolation" if self.have(checks) else "no: wasmtime missing"

    def launch(self, spec: LaunchSpec, progress: Progress | None = None) -> KeepHandle:
        try:
            pid, host_sock, handover = take_prespawned() or spawn_nil_keep()
        except OSError as exc:
            raise MotteError(f"cannot start the nil keep: {exc}") from exc
        endpoint = Endpoint(channel_transport(host_sock, spec.channel_tap), "host", name="nil-keep").start()
        keep = NilKeep(pid, endpoint, handover)
        try:
            endpoint.hello(timeout=spec.boot_timeout)
        except MotteError as exc:
            keep.close(grace=0)
            raise MotteError(f"the nil keep did not start: {exc}") from exc
        return keep
