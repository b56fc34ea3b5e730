"""Misbehaving peers end only their own connection; the keep and every other connection go on."""

from __future__ import annotations

import os
import socket
import ssl
import struct
import threading
import time

import pytest

from tests.net.conftest import Served, connect, free_port, listen_toml, recv_exactly, tls_client

pytestmark = pytest.mark.timeout(240)  # a kvm keep: see PATIENCE


def _closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """True once the server closed (EOF or reset); after a TLS alert the socket also ends."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except (ConnectionResetError, ssl.SSLError):
        pass
    except TimeoutError:
        return False
    return True


def test_bad_clients_end_only_their_own_connection(serve, backend: str) -> None:
    port = free_port()
    server: Served = serve("net_echo", listen_toml(port, name="api"), "7", backend=backend)
    server.expect("listening")
    started = time.monotonic()
    # 1. Connects and never says anything: the handshake times out inside the keep (10 s).
    silent = socket.create_connection(("127.0.0.1", port))
    silent_closed: list[float] = []
    watcher = threading.Thread(target=lambda: _closed_by_server(silent, 30) and silent_closed.append(time.monotonic()))
    watcher.start()
    # 2. Speaks plaintext HTTP to the TLS port.
    garbage = socket.create_connection(("127.0.0.1", port))
    garbage.sendall(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n" + os.urandom(3000))
    assert _closed_by_server(garbage, 10)
    # 3. Offers only TLS 1.2: the keep speaks TLS 1.3 only.
    old = tls_client()
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        old.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
    # 4. Vanishes mid-stream: sends part of a message, then resets the connection.
    vanishing = connect(port)
    vanishing.sendall(os.urandom(200_000))
    vanishing.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    vanishing.close()
    # 5. A port probe: connects and leaves without a byte (no TLS error worth a warning).
    socket.create_connection(("127.0.0.1", port)).close()
    # 6. Meanwhile a good client is served as if nothing happened, before and after all that.
    good = connect(port)
    for _ in range(3):
        message = os.urandom(50_000)
        good.sendall(message)
        assert recv_exactly(good, len(message)) == message
    good.close()
    late = connect(port)
    late.sendall(b"still here")
    assert recv_exactly(late, 10) == b"still here"
    late.close()
    watcher.join(30)
    assert silent_closed, "the silent client was never disconnected"
    assert 9.0 <= silent_closed[0] - started <= 20.0  # the 10 s handshake timeout, not sooner
    server.expect("served 7")
    assert server.wait() == 0
    warnings = server.stderr
    # The host says which connections failed and why (the keep sends the reason with its RESET).
    assert "TLS handshake failed: http request" in warnings  # the plaintext client
    assert "TLS handshake failed: unsupported protocol" in warnings  # the TLS 1.2 client
    assert "TLS handshake not finished within 10 s" in warnings  # the silent one
    lines = warnings.splitlines()
    assert len(lines) == 3  # the vanished client and the probe are no errors: peers may leave
    assert all(line.startswith("motte: warning: files[3] (listen 'api'): connection from 127.0.0.1:") for line in lines)
