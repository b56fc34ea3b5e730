"""Fixtures of the channel tests."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from motte.shared.endpoint import Endpoint
from motte.shared.transport import SocketTransport


@pytest.fixture
def pair() -> Iterator[tuple[Endpoint, Endpoint]]:
    a, b = socket.socketpair()
    host = Endpoint(SocketTransport(a), "host", window=1 << 16).start()
    keep = Endpoint(SocketTransport(b), "keep", window=1 << 16).start()
    host.send_hello()
    keep.send_hello()
    host.await_hello(5)
    keep.await_hello(5)
    yield host, keep
    host.close()
    keep.close()
