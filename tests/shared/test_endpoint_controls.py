"""Control messages the peer sends and nobody reads are bounded in number and in bytes: past the
bound the peer has broken the protocol and the channel closes, instead of this side holding them."""

from __future__ import annotations

import threading
import time

from motte.shared.channel import ProtocolError
from motte.shared.channel_io import MAX_UNREAD_CONTROL_BYTES, MAX_UNREAD_CONTROLS
from motte.shared.endpoint import ChannelClosed, Endpoint


def _closed_with(endpoint: Endpoint, timeout: float = 10.0) -> BaseException | None:
    deadline = time.monotonic() + timeout
    while endpoint.closed is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return endpoint.closed


def test_more_unread_control_messages_than_the_bound_close_the_channel(pair: tuple[Endpoint, Endpoint]) -> None:
    host, keep = pair
    for i in range(MAX_UNREAD_CONTROLS):
        host.send_control("noise", i=i)
    host.flush(timeout=10)
    time.sleep(0.2)
    assert keep.closed is None  # up to the bound, they wait
    host.send_control("noise", i=MAX_UNREAD_CONTROLS)
    error = _closed_with(keep)
    assert isinstance(error, ProtocolError)
    assert f"more than {MAX_UNREAD_CONTROLS} control messages" in str(error)


def test_more_unread_control_bytes_than_the_bound_close_the_channel(pair: tuple[Endpoint, Endpoint]) -> None:
    host, keep = pair
    blob = "x" * ((1 << 20) - 100)  # each message just under the 1 MiB a control frame may carry
    sent = 0
    try:
        while sent <= MAX_UNREAD_CONTROL_BYTES:
            host.send_control("noise", blob=blob)
            sent += len(blob)
    except ChannelClosed:
        pass
    error = _closed_with(keep)
    assert isinstance(error, ProtocolError)
    assert f"more than {MAX_UNREAD_CONTROL_BYTES} bytes of control messages" in str(error)


def test_control_messages_read_as_they_come_are_not_limited(pair: tuple[Endpoint, Endpoint]) -> None:
    host, keep = pair
    total = 3 * MAX_UNREAD_CONTROLS
    received: list[int] = []

    def read_all() -> None:
        for _ in range(total):
            received.append(keep.recv_control(timeout=10)["i"])

    reader = threading.Thread(target=read_all)
    reader.start()
    for i in range(total):
        while i - len(received) >= MAX_UNREAD_CONTROLS // 2:  # a reader that keeps up: never near the bound
            time.sleep(0.001)
        host.send_control("tick", i=i)
    reader.join(timeout=30)
    assert received == list(range(total))
    assert keep.closed is None
