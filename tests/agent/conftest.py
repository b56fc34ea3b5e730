"""Host agent fixtures: a real agent on loopback or a Unix socket in a thread of its own, and the
keeps it launches: real nil keep processes, a stand-in keep process that echoes (until the real
empty keep can be provisioned), or the test itself playing the keep over an endpoint pair."""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from motte.host.agent.app import HostAgent
from motte.host.agent.keeps import AgentLimits, AgentTap
from motte.host.agent.server import serve
from motte.host.backends.base import Backend, Check, KeepHandle, LaunchSpec, Progress
from motte.host.backends.nil import NilBackend
from tests.conftest import ROOT, endpoint_pair
from tests.net.conftest import wait_until
from tests.serving import serving


class Log:
    """The agent's event lines, for the test to read."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str) -> None:
        self.lines.append(text)


class PairKeep(KeepHandle):
    """A keep whose other end is the test: ``keep_side`` is the keep's endpoint of the pair."""

    backend = "pair"
    isolation = "none: the test plays the keep"

    def __init__(self) -> None:
        self._pair = endpoint_pair()
        self.endpoint, self.keep_side = self._pair.__enter__()
        self.closed = threading.Event()

    def memory_pid(self) -> int | None:
        return None

    def wait(self, timeout: float | None = None) -> int | None:
        ended = wait_until(lambda: self.closed.is_set() or self.keep_side.closed is not None, timeout or 1e9)
        return 0 if ended else None

    def close(self, grace: float = 2.0) -> None:
        if not self.closed.is_set():
            self.closed.set()
            self._pair.__exit__(None, None, None)


class PairBackend(Backend):
    """Launches :class:`PairKeep`s; the test takes each from :attr:`launched` and plays it."""

    name = "pair"

    def __init__(self) -> None:
        self.launched: queue.Queue[PairKeep] = queue.Queue()

    def data(self, *, probe: bool = False) -> list[Check]:
        return [Check("pair", True, "the test plays the keep")]

    def summary(self, checks: Sequence[Check]) -> str:
        return "yes: the test plays the keep"

    def launch(self, spec: LaunchSpec, progress: Progress | None = None) -> KeepHandle:
        keep = PairKeep()
        self.launched.put(keep)
        return keep

    def next_keep(self) -> PairKeep:
        return self.launched.get(timeout=10)


def spawn_standin() -> tuple[int, socket.socket, None]:
    """A stand-in keep process on a socketpair (the nil backend's spawn, with another program; it
    takes no listen sockets)."""
    host_sock, keep_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    try:
        process = subprocess.Popen([sys.executable, "-m", "tests.agent.standin_keep", str(keep_sock.fileno())],
                                   pass_fds=(keep_sock.fileno(),), stdin=subprocess.DEVNULL, env=env, cwd=ROOT)
    finally:
        keep_sock.close()
    process.returncode = 0  # the NilKeep handle reaps it by pid
    return process.pid, host_sock, None


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Backend:
    """The nil backend, launching stand-in keeps that echo what their tenants send."""
    monkeypatch.setattr("motte.host.backends.nil.spawn_nil_keep", spawn_standin)
    return NilBackend()


@contextlib.contextmanager
def running(agent: HostAgent, *, unix: Path | None = None) -> Iterator[str]:
    """Serve ``agent`` on 127.0.0.1:<free port> (or ``unix``) in a thread; yields its URL. The
    agent is stopped at the end, as by SIGTERM."""
    with serving(lambda stop, on_ready: serve(agent, host="127.0.0.1", port=0, unix=unix, on_ready=on_ready,
                                              stop=stop), "agent", join_timeout=60) as url:
        yield url


AgentFactory = Callable[..., HostAgent]


@pytest.fixture
def make_agent() -> AgentFactory:
    def make(backends: dict[str, Backend], *, log: Log | None = None, tap: AgentTap | None = None,
             token: str | None = None, **limits: Any) -> HostAgent:
        return HostAgent(backends, limits=AgentLimits(**limits), token=token, log=log or Log(), tap=tap)

    return make


def gone(pid: int) -> bool:
    """Whether no process ``pid`` exists (reaped, not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False
