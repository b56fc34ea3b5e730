"""A long-running TLS server in a keep, run by containerd: the image's Enarx.toml declares the listen
socket, the keep's host side binds it in the container's network namespace (the host's with
``--net-host``, a named one with ``--with-ns``, a new one otherwise), and nothing is left once the
task is killed and deleted."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from motte.host.oci.netns import join_network_namespace
from tests.net.conftest import connect, free_port, listen_toml, recv_exactly
from tests.oci.containerd import NIL, Containerd, alive, children, unavailable
from tests.workloads import workload

pytestmark = [pytest.mark.skipif(unavailable() is not None, reason=unavailable() or ""),
              pytest.mark.skipif(not Path("/usr/sbin/ip").exists() and not Path("/sbin/ip").exists(),
                                 reason="needs iproute2's ip")]
T = TypeVar("T")


def echo_image(containerd: Containerd, port: int) -> str:
    """net_echo serving for ever, its Enarx.toml (a TLS listen socket on ``port``) beside it."""
    return containerd.import_image(f"docker.io/motte/net_echo:{port}", {
        "net_echo.wasm": workload("net_echo").read_bytes(),
        "Enarx.toml": listen_toml(port).encode(),
    }, ["/net_echo.wasm"])


def in_namespace(namespace: str | None, action: Callable[[], T]) -> T:
    """``action()`` in the network namespace at ``namespace`` (None: this process's), on a thread of
    its own that joins it: the sockets it makes stay in that namespace."""
    done: list[T | BaseException] = []

    def attempt() -> None:
        try:
            if namespace is not None:
                join_network_namespace(namespace)
            done.append(action())
        except BaseException as exc:
            done.append(exc)

    thread = threading.Thread(target=attempt)
    thread.start()
    thread.join()
    if isinstance(done[0], BaseException):
        raise done[0]
    return done[0]


def tls_from(namespace: str | None, port: int) -> ssl.SSLSocket:
    """A TLS connection to 127.0.0.1:``port`` made in ``namespace`` (retried while refused: the keep
    may not be listening yet)."""
    return in_namespace(namespace, lambda: connect(port))


def refused(namespace: str | None, port: int) -> bool:
    """Whether 127.0.0.1:``port`` refuses a connection in ``namespace`` (None: the host's)."""

    def attempt() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        except ConnectionRefusedError:
            return True
        return False

    return in_namespace(namespace, attempt)


def listening_ports(namespace_of: int | str = "self") -> set[int]:
    """The TCP ports listening in the network namespace of a process (default: this one's)."""
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{namespace_of}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


def echo_round_trip(client: ssl.SSLSocket) -> None:
    assert client.version() == "TLSv1.3"
    for size in (1, 1000, 200_000):
        message = os.urandom(size)
        client.sendall(message)
        assert recv_exactly(client, size) == message


@contextlib.contextmanager
def served(containerd: Containerd, image: str, container_id: str, *flags: str) -> Iterator[int]:
    """``ctr run -d`` the server; its init pid. On leaving, the task is killed and deleted and its
    keep must be gone."""
    started = containerd.ctr(*containerd.run_args(), "-d", *NIL, *flags, image, container_id)
    assert started.returncode == 0, started.stderr.decode()
    task = containerd.task(container_id)
    assert task is not None and task[1] == "RUNNING", task
    init_pid = task[0]
    keep_pids = children(init_pid)
    assert keep_pids, "the init process holds the keep"
    try:
        yield init_pid
    finally:
        containerd.stop(container_id)
    assert not any(alive(pid) for pid in [init_pid, *keep_pids]), "the keep ended with its container"


def test_tls_echo_server_on_the_hosts_network_until_killed(containerd: Containerd) -> None:
    port = free_port()
    with served(containerd, echo_image(containerd, port), "tls-host", "--net-host"):
        with tls_from(None, port) as first, tls_from(None, port) as second:
            echo_round_trip(first)
            echo_round_trip(second)
        assert port in listening_ports()
    assert refused(None, port) and port not in listening_ports(), "nothing listens once the task is deleted"


@pytest.fixture
def named_netns() -> Iterator[str]:
    """A network namespace of this test's own (``ip netns add``), its loopback up: its path."""
    name = f"motte-oci-test-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)
        yield f"/var/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)


def test_the_keep_listens_in_the_namespace_it_is_given(containerd: Containerd, named_netns: str) -> None:
    """As a Kubernetes pod's containers are: config.json names the pod's namespace (CNI's)."""
    port = free_port()
    with served(containerd, echo_image(containerd, port), "tls-named", "--with-ns", f"network:{named_netns}"):
        with tls_from(named_netns, port) as client:
            echo_round_trip(client)
        assert refused(None, port), "the keep's port is not the host's"
    assert refused(named_netns, port), "nothing listens there once the task is deleted"


def test_without_net_host_the_container_gets_a_namespace_of_its_own(containerd: Containerd) -> None:
    port = free_port()
    with served(containerd, echo_image(containerd, port), "tls-own") as init_pid:
        own = f"/proc/{init_pid}/ns/net"
        assert os.readlink(own) != os.readlink("/proc/self/ns/net")
        with tls_from(own, port) as client:
            echo_round_trip(client)
        assert port in listening_ports(init_pid) and refused(None, port)
