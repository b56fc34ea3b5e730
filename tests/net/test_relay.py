"""What the host relays: ciphertext only for TLS, and never more than the flow control allows."""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from collections import defaultdict

import pytest

from motte.host.net import KEEP_BACKLOG
from motte.host.relay import Poller
from tests.net.conftest import InThread, Served, connect, free_port, listen_toml, recv_all, recv_exactly

pytestmark = pytest.mark.timeout(240)  # a kvm keep: see PATIENCE


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.relayed: dict[str, bytearray] = defaultdict(bytearray)
        self.opened = 0
        self.open_now = 0
        self.most_open = 0

    def __call__(self, event: str, stream: int, data: bytes) -> None:
        with self.lock:
            if event == "open":
                self.opened += 1
                self.open_now += 1
                self.most_open = max(self.most_open, self.open_now)
            elif event == "close":
                self.open_now -= 1
            else:
                self.relayed[event] += data


def _echo_through_the_keep(backend: str, prot: str, secret: bytes) -> Recorder:
    port = free_port()
    recorder = Recorder()
    run = InThread(backend, "net_echo", listen_toml(port, prot=prot), "1", tap=recorder)
    try:
        assert run.line() == "listening"
        client = connect(port, prot=prot)
        client.sendall(secret)
        assert recv_exactly(client, len(secret)) == secret
        client.close()
        assert run.line() == "served 1"
        result = run.join()
        assert getattr(result, "status", None) == 0
    finally:
        run.close()
    return recorder


def test_the_host_never_sees_the_plaintext_of_a_tls_stream(backend: str) -> None:
    secret = b"".join(b"TOP-SECRET-%06d|" % i + os.urandom(16).hex().encode() for i in range(4000))
    recorder = _echo_through_the_keep(backend, "tls", secret)
    inbound, outbound = recorder.relayed["to-keep"], recorder.relayed["from-keep"]
    # The host relayed the whole exchange (in both directions, with TLS overhead)...
    assert len(inbound) > len(secret) and len(outbound) > len(secret)
    # ...and no piece of the application data appears in it, not even the 8-byte marker.
    for relayed in (inbound, outbound):
        assert b"TOP-SECRET" not in relayed
        assert all(secret[i : i + 32] not in relayed for i in range(0, len(secret), 997))


def test_the_recorder_does_see_plaintext_when_the_config_says_tcp(backend: str) -> None:
    # The control: the same recording of a prot = "tcp" stream finds the data, so the test above
    # would fail if TLS did not end inside the keep.
    secret = b"TOP-SECRET-" + os.urandom(1000).hex().encode()
    recorder = _echo_through_the_keep(backend, "tcp", secret)
    assert bytes(recorder.relayed["to-keep"]) == secret
    assert bytes(recorder.relayed["from-keep"]) == secret


def test_connections_the_workload_does_not_accept_wait_in_a_bounded_queue(backend: str) -> None:
    port = free_port()
    recorder = Recorder()
    run = InThread(backend, "net_flow", listen_toml(port, prot="tcp"), "idle", "2500", tap=recorder)
    clients: list[socket.socket] = []
    refused = 0
    try:
        for _ in range(400):
            sock = socket.socket()
            sock.setblocking(False)
            if sock.connect_ex(("127.0.0.1", port)) not in (0, 115):  # EINPROGRESS
                refused += 1
            clients.append(sock)
        assert run.line() == "idle done"
        result = run.join()
        assert getattr(result, "status", None) == 0
        # The workload never accepted: over the whole run (2.5 s of it idle, with 400 clients
        # waiting) the host handed the keep its backlog and no more; the rest waited in the
        # kernel's queue.
        assert recorder.opened == KEEP_BACKLOG
    finally:
        for sock in clients:
            sock.close()
        run.close()


def test_a_slow_reader_stalls_the_writing_workload_not_the_memory(serve, backend: str) -> None:
    port = free_port()
    server: Served = serve("net_flow", listen_toml(port), "send", "48", backend=backend)
    client = connect(port, timeout=server.patience)
    time.sleep(2.0)  # not reading: the keep's blocking writes must stop
    sent = [int(line.split()[1]) for line in server.lines_so_far() if line.startswith("sent ")]
    # At most the stream window (1 MiB), the relay's one chunk and the kernels' socket buffers.
    assert max(sent, default=0) < 16, sent
    data = recv_all(client)
    pattern = bytes(range(256)) * 256
    assert len(data) == 48 << 20
    assert data == pattern * (len(data) // len(pattern))
    assert server.wait() == 0
    assert server.lines_so_far()[-1] == "done"


@pytest.mark.parametrize("prot", ["tls", "tcp"])
def test_a_fast_sender_is_held_back_while_the_workload_does_not_read(serve, backend: str, prot: str) -> None:
    port = free_port()
    server: Served = serve("net_flow", listen_toml(port, prot=prot), "hold", "1500", backend=backend)
    client = connect(port, prot=prot, timeout=server.patience)
    client.sendall(b"!")  # the workload reads this byte, then nothing while it holds
    client.setblocking(False)
    block = os.urandom(64 << 10)
    pushed = 1
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            pushed += client.send(block)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            time.sleep(0.01)
    # The host reads from the client only as far as the keep's credit reaches (1 MiB window).
    assert pushed < 24 << 20, pushed
    client.setblocking(True)
    total = 32 << 20
    while pushed < total:
        pushed += client.send(block[: min(len(block), total - pushed)])
    if isinstance(client, ssl.SSLSocket):
        client = client.unwrap()  # close_notify: the keep's reads end cleanly
    client.shutdown(socket.SHUT_WR)
    assert recv_all(client) == b""
    assert server.wait() == 0
    assert server.lines_so_far() == [f"received {total}"]


def test_the_relay_poller_lets_go_of_a_descriptor_closed_while_registered() -> None:
    # The channel's socket is closed by the endpoint when the keep ends, while the relay thread
    # still has it registered: unregistering it then must not fail the relay thread.
    poller = Poller()
    left, right = socket.socketpair()
    try:
        fd = left.fileno()
        poller.register(fd, 1, lambda _mask: None)
        left.close()
        poller.unregister(fd)
        assert poller.poll(0) == []
    finally:
        right.close()
        poller.close()
