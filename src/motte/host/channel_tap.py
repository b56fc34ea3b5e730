"""A keep's channel transport with a tap: every byte the host sends to or receives from the keep.

For tests that check what the host can see (a deploy must show it nothing but ciphertext and
metadata) and for debugging; a backend wraps its transport only when its launch asks for a tap.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from motte.shared.transport import SocketTransport, Transport

#: ``tap(event, stream, data)`` as the network relay's tap (:data:`motte.host.relay.Tap`); here the
#: event is ``"channel-to-keep"`` or ``"channel-from-keep"`` and the stream 0: the whole channel,
#: frames and all.
Tap = Callable[[str, int, bytes], None]
TO_KEEP = "channel-to-keep"
FROM_KEEP = "channel-from-keep"


class TappedTransport:
    """A :class:`~motte.shared.transport.Transport` that shows ``tap`` what passes through it."""

    def __init__(self, inner: SocketTransport, tap: Tap):
        self._inner = inner
        self._tap = tap

    def recv(self, size: int) -> bytes:
        data = self._inner.recv(size)
        if data:
            self._tap(FROM_KEEP, 0, data)
        return data

    def fileno(self) -> int:
        return self._inner.fileno()

    def send_buffers(self, buffers: list[bytes | memoryview]) -> None:
        self._inner.send_buffers(buffers)
        self._tap(TO_KEEP, 0, b"".join(buffers))

    def send_nowait(self, buffers: list[bytes | memoryview]) -> int:
        sent = self._inner.send_nowait(buffers)
        if sent:
            self._tap(TO_KEEP, 0, b"".join(buffers)[:sent])  # what went out: the rest is sent again later
        return sent

    def close(self) -> None:
        self._inner.close()


def channel_transport(sock: socket.socket, tap: Tap | None) -> Transport:
    """The host's transport over a keep's channel socket, tapped if ``tap`` is given."""
    transport = SocketTransport(sock)
    return transport if tap is None else TappedTransport(transport, tap)
