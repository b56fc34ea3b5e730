"""Shared fixtures: the workloads built from tests/workloads, and the backends to run them on.

Every test that takes ``backend`` runs on each backend (one suite for all): ``nil`` always, ``kvm``
marked ``vm`` and skipped, with the reason, where this host cannot run a VM keep.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from motte.host.platform import kvm_usable
from motte.shared.endpoint import Endpoint
from motte.shared.transport import SocketTransport
from tests.stacks import python_stacks
from tests.workloads import workload

ROOT = Path(__file__).resolve().parents[1]

#: Every Hypothesis test draws from this seed, printed in the session's header, so that a failure
#: (in CI above all) replays exactly. ``MOTTE_HYPOTHESIS_SEED=<n>`` or ``--hypothesis-seed=<n>``
#: draws from another.
HYPOTHESIS_SEED = int(os.environ.get("MOTTE_HYPOTHESIS_SEED", "20261205"))


@pytest.hookimpl(tryfirst=True)  # before Hypothesis's plugin reads the option
def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("hypothesis_seed", None) is None:
        config.option.hypothesis_seed = str(HYPOTHESIS_SEED)


def pytest_report_header(config: pytest.Config) -> str:
    seed = config.getoption("hypothesis_seed", None)
    return f"hypothesis seed: {seed} (replay a failure with --hypothesis-seed={seed})"


def motte(*args: str, input: bytes | None = None, timeout: float = 120, env: dict[str, str] | None = None,
          cwd: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the motte CLI in a fresh process, as a user would. A run that does not end within
    ``timeout`` fails the test with the stacks of its threads (and its keep's)."""
    full_env = {**os.environ, **(env or {})}
    command = [sys.executable, "-m", "motte", *args]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=full_env, cwd=cwd) as process:
        try:
            stdout, stderr = process.communicate(input if input is not None else b"", timeout=timeout)
        except subprocess.TimeoutExpired:
            stacks = python_stacks(process.pid)
            process.kill()
            process.communicate()
            raise AssertionError(f"motte {' '.join(args)}: did not end within {timeout} s\n{stacks}") from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.fixture(scope="session")
def wasm() -> object:
    return lambda name: str(workload(name))


def _backends() -> list[object]:
    usable, reason = kvm_usable()
    kvm_marks = [pytest.mark.vm] + ([] if usable else [pytest.mark.skip(reason=f"kvm backend unavailable: {reason}")])
    return ["nil", pytest.param("kvm", marks=kvm_marks)]


@pytest.fixture(params=_backends())
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextlib.contextmanager
def endpoint_pair(window: int | None = None) -> Iterator[tuple[Endpoint, Endpoint]]:
    """A host endpoint and a keep endpoint on a real socketpair, past the HELLO exchange."""
    a, b = socket.socketpair()
    host = Endpoint(SocketTransport(a), "host", window=window).start()
    keep = Endpoint(SocketTransport(b), "keep", window=window).start()
    try:
        host.send_hello()
        keep.send_hello()
        host.await_hello(5)
        keep.await_hello(5)
        yield host, keep
    finally:
        host.close()
        keep.close()


def descendants(pid: int) -> set[int]:
    """The PIDs of ``pid``'s live descendants (a /proc walk)."""
    found: set[int] = set()
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found.add(child)
            pending.append(child)
    return found
