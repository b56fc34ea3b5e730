"""Helpers for the keep-networking tests: a ``motte run`` keep serving on a free port, TLS clients.

Servers run as ``motte run --backend B`` subprocesses (the way a user runs them), or through the
Python API where a test needs to see what the host relays (``InThread``); every test takes the
``backend`` fixture (tests/conftest.py), so each runs on nil and on kvm.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.stacks import python_stacks
from tests.workloads import workload

STDIO = '[[files]]\nkind = "stdin"\n[[files]]\nkind = "stdout"\n[[files]]\nkind = "stderr"\n'


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def listen_toml(port: int, prot: str = "tls", name: str = "test") -> str:
    return STDIO + f'[[files]]\nkind = "listen"\nprot = "{prot}"\naddr = "127.0.0.1"\nport = {port}\nname = "{name}"\n'


def connect_toml(host: str, port: int, prot: str = "tls", ca: str | None = None, name: str = "upstream") -> str:
    extra = f'ca = "{ca}"\n' if ca else ""
    entry = f'[[files]]\nkind = "connect"\nprot = "{prot}"\nhost = "{host}"\nport = {port}\nname = "{name}"\n'
    return STDIO + entry + extra


def tls_client() -> ssl.SSLContext:
    """A client that accepts the keep's self-signed certificate (it proves nothing: no Steward).

    It loads no trust store, since it verifies nothing: the system's CA certificates cost ~30 ms of
    CPU per context, and a test that makes one per connection then holds its clients' ClientHellos
    for seconds after their TCP connects, long enough for the keep's handshake deadline to reset them.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def connect(port: int, prot: str = "tls", timeout: float = 10.0) -> socket.socket:
    """A client connection; retried while refused, since the run may not have bound the port yet."""
    deadline = time.monotonic() + 30.0
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    if prot == "tls":
        return tls_client().wrap_socket(sock, server_hostname="localhost")
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        data = sock.recv(min(1 << 20, size - len(chunks)))
        if not data:
            break
        chunks += data
    return bytes(chunks)


def recv_all(sock: socket.socket) -> bytes:
    chunks = bytearray()
    while data := sock.recv(1 << 20):
        chunks += data
    return bytes(chunks)


#: How long to wait for a line (or the end) of a run, by backend. A kvm keep under TCG starts in
#: about a second from its snapshot, but the first one of a test session may build the keep image
#: and boot to make that snapshot (tens of seconds), and everything in the guest runs emulated.
PATIENCE = {"nil": 30.0, "kvm": 120.0}


class Served:
    """``motte run --backend B`` of a workload in the background, its stdout read line by line."""

    def __init__(self, tmp_path: Path, name: str, toml: str, *args: str, backend: str, options: tuple[str, ...] = ()):
        config = tmp_path / "Enarx.toml"
        config.write_text(toml)
        self.backend = backend
        self.patience = PATIENCE[backend]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "motte", "run", "--backend", backend, *options, "--wasmcfgfile", str(config),
             str(workload(name)), "--", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self._lines: queue.Queue[bytes] = queue.Queue()
        self._stderr = bytearray()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(b"")

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._stderr += line

    def line(self, timeout: float | None = None) -> str:
        """The next line of the workload's stdout ("" once it ended)."""
        timeout = self.patience if timeout is None else timeout
        try:
            return self._lines.get(timeout=timeout).decode().rstrip("\n")
        except queue.Empty:
            raise AssertionError(f"no output within {timeout} s; stderr: {self.stderr}") from None

    def lines_so_far(self) -> list[str]:
        out = []
        while True:
            try:
                raw = self._lines.get_nowait()
            except queue.Empty:
                return out
            if raw:  # b"" marks the end of the output
                out.append(raw.decode().rstrip("\n"))

    def expect(self, text: str, timeout: float | None = None) -> None:
        line = self.line(timeout)
        assert line == text, f"expected {text!r}, got {line!r}; stderr: {self.stderr}"

    @property
    def stderr(self) -> str:
        return self._stderr.decode(errors="replace")

    def wait(self, timeout: float | None = None) -> int:
        timeout = self.patience if timeout is None else timeout
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            stacks = python_stacks(self.process.pid)
            raise AssertionError(f"the run did not end within {timeout} s; stderr: {self.stderr}\n{stacks}") from None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(name: str, toml: str, *args: str, backend: str, options: tuple[str, ...] = ()) -> Served:
        served = Served(tmp_path, name, toml, *args, backend=backend, options=options)
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


class InThread:
    """A run through the Python API, for tests that tap what the host relays."""

    def __init__(self, backend: str, name: str, toml: str, *args: str,
                 tap: Callable[[str, int, bytes], None] | None = None):
        from motte.host.backends import get_backend
        from motte.host.backends.base import LaunchSpec
        from motte.host.session import HostStdio, RunRequest, prepare_network, run_workload
        from motte.outside.enarx_toml import parse_enarx_toml

        config = parse_enarx_toml(toml).with_extra(args=list(args))
        request = RunRequest(workload(name).read_bytes(), config, timeout=PATIENCE[backend] * 2)
        self.patience = PATIENCE[backend]
        network = prepare_network(request, tap)  # bound now: clients may connect once this returns
        self._out_r, out_w = os.pipe()
        self._null = os.open(os.devnull, os.O_RDWR)
        try:
            self.keep = get_backend(backend).launch(LaunchSpec(memory_bytes=256 << 20))
        except BaseException:  # the keep did not start: release what was set up for it
            if network is not None:
                network.close(grace=0)
            os.close(self._out_r)
            os.close(out_w)
            os.close(self._null)
            raise
        self.result: object = None
        stdio = HostStdio(stdin=self._null, stdout=out_w, stderr=self._null)

        def run() -> None:
            try:
                self.result = run_workload(self.keep, request, stdio, network=network)
            finally:
                os.close(out_w)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        self._reader = os.fdopen(self._out_r, "rb")

    def line(self) -> str:
        return self._reader.readline().decode().rstrip("\n")

    def join(self, timeout: float | None = None) -> object:
        self._thread.join(self.patience if timeout is None else timeout)
        assert not self._thread.is_alive(), "the run did not end"
        return self.result

    def close(self) -> None:
        self.keep.close(grace=0)
        self._thread.join(10)
        with contextlib.suppress(OSError):
            self._reader.close()
        os.close(self._null)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
