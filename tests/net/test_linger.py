"""A workload that answers and closes without reading all the client sent: the client still gets
the whole answer (the host closes gracefully instead of resetting the connection)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.net.conftest import Served, connect, free_port, listen_toml, recv_all


def _send_ignoring_errors(client: socket.socket, data: bytes) -> None:
    try:
        client.sendall(data)
    except OSError:
        pass  # the server closed: the rest is not wanted


def test_an_answer_survives_the_unread_rest_of_a_request(serve, backend: str) -> None:
    # Plain TCP: the client writes and reads at once from two threads, which an ssl socket does
    # not allow; what the host does on close is the same for TLS.
    prot = "tcp"
    port = free_port()
    server: Served = serve("http_hello", listen_toml(port, prot=prot), "3", backend=backend)
    server.expect("listening", timeout=120)
    for _ in range(3):
        client = connect(port, prot=prot)
        # The server reads only the head; the body behind it, more than the stream's window and
        # the socket buffers hold, stays unread when it closes.
        body = b"x" * (8 << 20)
        client.sendall(b"POST / HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(body))
        sender = threading.Thread(target=_send_ignoring_errors, args=(client, body), daemon=True)
        sender.start()
        try:
            answer = recv_all(client)
        except ConnectionResetError:
            pytest.fail("the connection was reset: the answer was lost")
        sender.join(30)
        assert answer.startswith(b"HTTP/1.0 200 OK"), answer[:100]
        assert answer.endswith(b"Hello from a motte keep!\n")
        client.close()
    server.expect("served 3", timeout=60)
    assert server.wait(timeout=60) == 0


def test_a_lingering_connection_is_cut_off_when_the_client_never_stops(serve, backend: str) -> None:
    """The host drains a connection the keep closed only for a while: a client that keeps sending
    is cut off, and the keep serves on."""
    port = free_port()
    server: Served = serve("http_hello", listen_toml(port, prot="tcp"), backend=backend)  # serves for ever
    server.expect("listening", timeout=120)
    client = connect(port, prot="tcp")
    client.sendall(b"GET / HTTP/1.0\r\n\r\n")
    answer = b""
    client.settimeout(30)
    while not answer.endswith(b"keep!\n"):
        answer += client.recv(4096)
    give_up = time.monotonic() + 60
    with pytest.raises(OSError):  # reset once the host stops draining (LINGER seconds)
        while time.monotonic() < give_up:
            client.sendall(b"y" * 65536)
    client.close()
    again = connect(port, prot="tcp")
    again.sendall(b"GET / HTTP/1.0\r\n\r\n")
    assert recv_all(again).endswith(b"keep!\n")


def test_the_port_is_closed_to_new_clients_once_the_run_ended(serve, backend: str) -> None:
    port = free_port()
    server: Served = serve("http_hello", listen_toml(port, prot="tcp"), "1", backend=backend)
    server.expect("listening", timeout=120)
    client = connect(port, prot="tcp")
    client.sendall(b"GET / HTTP/1.0\r\n\r\n")
    assert recv_all(client).endswith(b"keep!\n")
    client.close()
    assert server.wait(timeout=60) == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_the_keeps_last_bytes_reach_a_slow_client_after_the_keep_ended(serve, backend: str) -> None:
    """The workload writes, closes and exits while the host still holds bytes the client has not
    taken: they still go out (within the run's closing grace), then the connection closes."""
    port = free_port()
    server: Served = serve("net_flow", listen_toml(port), "send", "6", backend=backend)
    client = connect(port, timeout=server.patience)
    data = bytearray()
    while chunk := client.recv(64 << 10):
        data += chunk
        time.sleep(0.001)  # a slow reader: the host always holds bytes the keep sent
    assert len(data) == 6 << 20
    assert server.wait() == 0
