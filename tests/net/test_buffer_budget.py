"""A keep's buffered stream data is bounded in total, on both sides: a workload that accepts many
connections and never reads them makes neither the keep nor the host hold each connection's
window, and nothing dies (the clients wait, as a slow server makes them wait)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.conftest import descendants
from tests.net.conftest import Served, connect, free_port, listen_toml

pytestmark = pytest.mark.timeout(600)

CLIENTS = 200
EACH = 3 << 19  # 1.5 MiB, more than a stream's window (1 MiB)
BOUND = 48 << 20  # what the keep and the host may each grow by: 200 windows would be 200 MiB


def _resident(pids: set[int]) -> int:
    """Resident bytes of ``pids`` together (for a kvm keep, QEMU: the guest memory it touched)."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) << 10 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total


def _send_what_they_take(clients: list[socket.socket], seconds: float) -> int:
    """Each client sends up to EACH bytes until none can send more for a while (the sockets do not block)."""
    left = dict.fromkeys(clients, EACH)
    chunk = b"\xab" * (64 << 10)
    last_progress = time.monotonic()
    deadline = last_progress + seconds
    while left and time.monotonic() - last_progress < 2.0 and time.monotonic() < deadline:
        for client in list(left):
            try:
                sent = client.send(chunk[: left[client]])
            except BlockingIOError:
                continue
            left[client] -= sent
            last_progress = time.monotonic()
            if not left[client]:
                del left[client]
        time.sleep(0.001)
    return CLIENTS * EACH - sum(left.values())


def test_connections_nobody_reads_are_held_within_the_budget(serve, backend: str) -> None:
    port = free_port()
    server: Served = serve("net_flow", listen_toml(port, prot="tcp"), "hoard", str(CLIENTS), backend=backend,
                           options=("--max-memory", "64M"))
    server.expect("hoarding")
    clients = [connect(port, prot="tcp") for _ in range(CLIENTS)]
    for client in clients:
        client.setblocking(False)
    keep = descendants(server.process.pid)
    host = {server.process.pid}
    time.sleep(1.0)  # the workload takes its connections (it reads none of them)
    keep_before, host_before = _resident(keep), _resident(host)
    sent = _send_what_they_take(clients, seconds=60.0)
    time.sleep(1.0)  # what is in flight lands
    keep_grew, host_grew = _resident(keep) - keep_before, _resident(host) - host_before
    print(f"{sent >> 20} MiB sent; the keep grew by {keep_grew >> 20} MiB, the host by {host_grew >> 20} MiB")
    assert keep_grew < BOUND, f"the keep grew by {keep_grew >> 20} MiB ({sent >> 20} MiB sent)"
    assert host_grew < BOUND, f"the host grew by {host_grew >> 20} MiB ({sent >> 20} MiB sent)"
    for client in clients:  # nothing was reset or closed: the clients just wait
        with pytest.raises(BlockingIOError):
            client.recv(1)
    connect(port, prot="tcp").close()  # the sign to stop
    server.expect(f"hoarded {CLIENTS}")
    assert server.wait() == 0, server.stderr
    for client in clients:
        client.close()


@pytest.mark.parametrize("backend", ["nil"])  # (a kvm keep relays: the test above covers the channel)
def test_answers_nobody_reads_leave_a_nil_keep_bounded(serve, backend: str) -> None:
    # An echo server on the sockets the host handed over writes back to clients that never read:
    # the kernel holds most of it, the keep what its queue budget allows (tests/keep/
    # test_queue_budget.py), and nothing dies: the clients just wait.
    port = free_port()
    server: Served = serve("net_echo", listen_toml(port, prot="tcp"), backend=backend,
                           options=("--max-memory", "64M"))
    server.expect("listening")
    clients = [connect(port, prot="tcp") for _ in range(CLIENTS)]
    for client in clients:
        client.setblocking(False)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)  # (the kernel holds less for them)
    keep = descendants(server.process.pid)
    time.sleep(1.0)
    keep_before = _resident(keep)
    sent = _send_what_they_take(clients, seconds=60.0)
    time.sleep(1.0)
    keep_grew = _resident(keep) - keep_before
    print(f"{sent >> 20} MiB sent; the keep grew by {keep_grew >> 20} MiB")
    assert keep_grew < BOUND, f"the keep grew by {keep_grew >> 20} MiB ({sent >> 20} MiB sent)"
    assert server.process.poll() is None, server.stderr
    for client in clients:  # the answers wait for them
        assert client.recv(1 << 16)
        client.close()
