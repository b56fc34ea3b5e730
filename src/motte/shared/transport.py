"""Byte transports under the channel: what an :class:`~motte.shared.endpoint.Endpoint` reads and
writes (a socket, or a raw fd such as a VM keep's virtio port), and the scatter-gather send both use."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Protocol

READ_SIZE = 256 << 10
_DONTWAIT = int(socket.MSG_DONTWAIT)  # (a plain int: the flag is an enum member)


class Transport(Protocol):
    def recv(self, size: int) -> bytes: ...
    def fileno(self) -> int:
        """For ``poll`` (an endpoint with ``read_when_waiting`` waits for input with a timeout)."""
    def send_buffers(self, buffers: list[bytes | memoryview]) -> None:
        """Send all the buffers, in order (scatter-gather: no joining copy)."""
    def close(self) -> None: ...


def drop_sent(buffers: list[bytes | memoryview], sent: int) -> list[bytes | memoryview]:
    """What is left of ``buffers`` after the first ``sent`` bytes went out."""
    index = 0
    while index < len(buffers) and sent >= len(buffers[index]):
        sent -= len(buffers[index])
        index += 1
    rest = buffers[index:]
    if rest and sent:
        rest[0] = memoryview(rest[0])[sent:]
    return rest


def send_vectored(send: Callable[[list[memoryview]], int], buffers: list[bytes | memoryview]) -> None:
    """Send all ``buffers`` in order with a scatter-gather ``send`` (sendmsg, writev), resuming short sends."""
    views = [memoryview(b) for b in buffers if len(b)]  # an empty one would never be "sent"
    index = 0
    while index < len(views):
        sent = send(views[index : index + 512])  # IOV_MAX is 1024 on Linux
        while sent and index < len(views):
            length = len(views[index])
            if sent >= length:
                sent -= length
                index += 1
            else:
                views[index] = views[index][sent:]
                sent = 0


class ReceiveBuffer:
    """Receives into one reused buffer and returns a copy of what came.

    ``recv(256 KiB)`` allocates a fresh 256 KiB object per call, which glibc serves with
    mmap/mremap/munmap (and the kernel with page faults): three system calls more per small
    message than a copy of the bytes that actually arrived.
    """

    def __init__(self, size: int = READ_SIZE):
        self._buffer = bytearray(size)
        self._view = memoryview(self._buffer)

    def recv(self, receive_into: Callable[[memoryview], int], size: int) -> bytes:
        count = receive_into(self._view[: min(size, len(self._buffer))])
        return bytes(self._view[:count])


class SocketTransport:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._received = ReceiveBuffer()

    def recv(self, size: int) -> bytes:
        return self._received.recv(self.sock.recv_into, size)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send_buffers(self, buffers: list[bytes | memoryview]) -> None:
        send_vectored(self.sock.sendmsg, buffers)

    def send_nowait(self, buffers: list[bytes | memoryview]) -> int:
        """Send what the socket takes without blocking; how many bytes that was."""
        try:
            return self.sock.sendmsg(buffers if len(buffers) <= 512 else buffers[:512], (), _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return 0

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
