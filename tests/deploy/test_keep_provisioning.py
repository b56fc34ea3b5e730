"""The keep's side of ``motte deploy`` on a real nil keep: the tenant's session through a relay
that sees only ciphertext, the evidence bound to the session, the workload's output and exit
reaching the tenant only."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from motte.host.backends import get_backend
from motte.host.backends.base import KeepHandle, LaunchSpec
from motte.host.backends.nil import NilBackend
from motte.shared.control import Provision
from motte.shared.provision import Frame, ProvisionError, Secret
from motte.tenant.deploy.package import load_package
from motte.tenant.deploy.policy import load_tenant_policy
from motte.tenant.deploy.session import Limits, deploy
from motte.tenant.deploy.verify import KeepRefused
from tests.deploy.harness import Host, SessionChannel
from tests.workloads import workload

DEV = load_tenant_policy("allow_unattested = true\n")
STRICT = load_tenant_policy("")
MEMORY = 256 << 20


@pytest.fixture
def keep() -> Iterator[KeepHandle]:
    handle = NilBackend().launch(LaunchSpec(memory_bytes=MEMORY))
    try:
        yield handle
    finally:
        handle.close()


@pytest.fixture
def any_keep(backend: str) -> Iterator[KeepHandle]:
    """A keep of each backend this host runs (kvm: a micro-VM under TCG here)."""
    handle = get_backend(backend).launch(LaunchSpec(memory_bytes=MEMORY))
    try:
        yield handle
    finally:
        handle.close()


STDIO = '[[files]]\nkind = "stdin"\n[[files]]\nkind = "stdout"\n[[files]]\nkind = "stderr"\n'


def package_dir(tmp_path: Path, name: str, toml: str = "") -> Path:
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "main.wasm").write_bytes(workload(name).read_bytes())
    if toml:
        (folder / "Enarx.toml").write_text(toml)
    return folder


def test_deploy_runs_the_workload_and_only_the_tenant_sees_it(any_keep: KeepHandle, tmp_path: Path) -> None:
    host = Host(any_keep, Provision(wait_ms=30_000, memory_limit=MEMORY))
    tap: list[bytes] = []
    package = load_package(package_dir(tmp_path, "args_env", 'args = ["one"]\n[env]\nPLAIN = "visible"\n' + STDIO))
    out: list[tuple[Frame, bytes]] = []
    outcome = deploy(host.session(tap), package, DEV, Limits(MEMORY),
                                 secrets=(Secret("env", "API_KEY", b"s3cr3t-value"),),
                                 output=lambda frame, data: out.append((frame, data)))
    assert outcome.exit is not None and outcome.exit.status == 0
    stdout = b"".join(data for frame, data in out if frame is Frame.STDOUT)
    assert b"argv[1]=one\n" in stdout and b"env:API_KEY=s3cr3t-value\n" in stdout
    assert outcome.started.workload_sha256 == package.wasm_sha256
    end = host.join()
    assert end.exit is not None and (end.exit.status, end.exit.reason, end.exit.message) == (0, "exit", "")
    relayed = b"".join(tap)
    for secret in (b"s3cr3t-value", b"argv[1]=one", package.wasm[100:164], b"visible"):
        assert secret not in relayed


def test_a_strict_policy_refuses_an_unattested_keep_and_sends_nothing(keep: KeepHandle, tmp_path: Path) -> None:
    host = Host(keep, Provision(wait_ms=2_000, memory_limit=MEMORY))
    tap: list[bytes] = []
    package = load_package(package_dir(tmp_path, "hello"))
    with pytest.raises(KeepRefused, match="unattested_refused"):
        deploy(host.session(tap), package, STRICT, Limits(MEMORY), output=lambda f, d: None)
    assert sum(map(len, tap)) < 8192  # the handshake and the challenge, never the workload
    end = host.join()
    assert end.exit is not None and end.exit.reason == "error"


def test_limits_other_than_asked_are_caught(keep: KeepHandle, tmp_path: Path) -> None:
    from motte.tenant.deploy.session import LaunchMismatch

    host = Host(keep, Provision(wait_ms=30_000, memory_limit=MEMORY // 2))
    package = load_package(package_dir(tmp_path, "hello"))
    with pytest.raises(LaunchMismatch, match="launch terms other than the tenant's"):
        deploy(host.session(), package, DEV, Limits(MEMORY), output=lambda f, d: None)


def test_file_secrets_are_read_only_files_in_keep_memory(keep: KeepHandle, tmp_path: Path) -> None:
    host = Host(keep, Provision(wait_ms=30_000, memory_limit=MEMORY))
    toml = 'args = ["/run/secrets/db-password", "/run/secrets/missing"]\n' + STDIO
    package = load_package(package_dir(tmp_path, "secrets", toml))
    out: list[bytes] = []
    secrets = (Secret("file", "db-password", b"hunter2"), Secret("file", "tls.key", b"KEY"))
    outcome = deploy(host.session(), package, DEV, Limits(MEMORY), secrets=secrets,
                                 output=lambda frame, data: out.append(data))
    assert outcome.exit is not None and outcome.exit.status == 0
    assert b"".join(out).decode().splitlines() == [
        "/run/secrets/db-password: hunter2",
        "write /run/secrets/db-password: errno=69",  # EROFS
        "/run/secrets/missing: errno=44",  # ENOENT
        "write /run/secrets/missing: errno=44",
        "list: db-password,tls.key",
    ]


class DyingChannel:
    """The tenant's channel, with the keep process killed once the workload is on its way."""

    def __init__(self, inner: object, keep: KeepHandle):
        self.inner = inner
        self.keep = keep
        self.sent = 0
        self.killed = False

    def send(self, data: bytes) -> None:
        self.inner.send(data)  # type: ignore[attr-defined]
        self.sent += len(data)
        if self.sent > 64 << 10 and not self.killed:  # the workload is flowing: the keep dies
            pid = self.keep.memory_pid()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            self.killed = True

    def receive(self) -> bytes:
        return self.inner.receive()  # type: ignore[attr-defined,no-any-return]


def test_a_keep_that_dies_mid_provisioning_is_one_clear_error(keep: KeepHandle, tmp_path: Path) -> None:
    host = Host(keep, Provision(wait_ms=30_000, memory_limit=MEMORY))
    big = tmp_path / "big.wasm"
    big.write_bytes(workload("hello").read_bytes() + custom_section(4 << 20))
    ended = r"^the connection to the keep ended \(the keep or the host agent went away\)$"
    with pytest.raises(ProvisionError, match=ended):
        deploy(DyingChannel(host.session(), keep), load_package(big), DEV, Limits(MEMORY), output=lambda f, d: None)
    end = host.join()
    assert end.state == "failed" and end.error is not None and "without reporting an exit" in end.error
    assert keep.wait(timeout=5) is not None


def custom_section(size: int) -> bytes:
    """A wasm custom section of ``size`` payload bytes (valid after any module's sections)."""
    name = b"\x04pad"
    body = name + b"\0" * size
    length = bytearray()
    n = len(body)
    while True:
        byte = n & 0x7F
        n >>= 7
        length.append(byte | (0x80 if n else 0))
        if not n:
            break
    return b"\x00" + bytes(length) + body


def test_a_keep_nobody_provisions_exits_at_its_wait(keep: KeepHandle) -> None:
    end = Host(keep, Provision(wait_ms=300, memory_limit=MEMORY)).join()
    assert end.state == "exited" and end.exit is not None
    assert (end.exit.status, end.exit.reason) == (125, "error")
    assert keep.wait(timeout=10) is not None  # the keep process is gone


def test_detach_leaves_the_workload_running_and_its_output_goes_nowhere(keep: KeepHandle, tmp_path: Path) -> None:
    host = Host(keep, Provision(wait_ms=30_000, memory_limit=MEMORY))
    tap: list[bytes] = []
    package = load_package(package_dir(tmp_path, "writer", 'args = ["64"]\n' + STDIO))
    outcome = deploy(host.session(tap), package, DEV, Limits(MEMORY), output=lambda f, d: None, detach=True)
    assert outcome.exit is None and outcome.started.workload_sha256 == package.wasm_sha256
    seen = sum(map(len, tap))
    end = host.join()
    assert end.exit is not None and (end.exit.status, end.exit.reason) == (0, "exit")
    assert sum(map(len, tap)) == seen  # nothing more reached the tenant's connection


class SlowTenant(SessionChannel):
    """A tenant that takes its time over each message it receives: meanwhile the workload's output
    uses up the stream's credit, and the keep's output waits for more."""

    def receive(self) -> bytes:
        data = super().receive()
        time.sleep(0.3)
        return data


def test_a_detach_gets_through_while_the_output_waits_for_credit(keep: KeepHandle, tmp_path: Path) -> None:
    # The Detach arrives while the workload's output waits for credit the tenant will never give:
    # the session's reader must still take it (the output used to wait holding the lock it needs).
    host = Host(keep, Provision(wait_ms=30_000, memory_limit=MEMORY))
    package = load_package(package_dir(tmp_path, "writer", 'args = ["64"]\n' + STDIO))
    outcome = deploy(SlowTenant(host.driver.open_session()), package, DEV, Limits(MEMORY),
                     output=lambda f, d: None, detach=True)
    assert outcome.exit is None
    end = host.join(30)
    assert end.exit is not None and (end.exit.status, end.exit.reason) == (0, "exit")


def test_secrets_are_found_behind_an_enarx_socket_at_fd_3(keep: KeepHandle, tmp_path: Path) -> None:
    # libc looks for preopened directories from fd 3 up and stops at the first fd that is none;
    # the socket at fd 3 must not hide /run/secrets after it.
    from tests.net.conftest import free_port

    listen = f'[[files]]\nkind = "listen"\nprot = "tcp"\nname = "api"\naddr = "127.0.0.1"\nport = {free_port()}\n'
    toml = 'args = ["/run/secrets/token"]\n' + STDIO + listen
    host = Host(keep, Provision(wait_ms=30_000, memory_limit=MEMORY))
    out: list[bytes] = []
    outcome = deploy(host.session(), load_package(package_dir(tmp_path, "secrets", toml)), DEV, Limits(MEMORY),
                     secrets=(Secret("file", "token", b"t0k"),), output=lambda frame, data: out.append(data))
    assert outcome.exit is not None and outcome.exit.status == 0
    assert b"".join(out).decode().splitlines()[0] == "/run/secrets/token: t0k"
