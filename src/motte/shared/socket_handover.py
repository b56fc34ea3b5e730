"""Handing a nil keep its listen sockets: one message, on a socketpair of its own beside the channel.

The host binds the sockets (a port in use fails the run before the keep starts) and sends them,
before the launch, as one message: the WASI fds they are, as 32-bit little-endian integers, with
the sockets themselves attached (``SCM_RIGHTS``) in the same order. The keep takes the message, if
there is one, when it sets up the workload's sockets (see :mod:`motte.keep.net.direct`). The
channel itself cannot carry descriptors: its reader takes bytes in bulk, and would drop them.
"""

from __future__ import annotations

import array
import os
import socket
import stat
import struct
from collections.abc import Mapping

from motte.shared.errors import MotteError

#: The most descriptors one message may carry on Linux (SCM_MAX_FD): more listen sockets are relayed.
MAX_SOCKETS = 253


class HandoverError(MotteError):
    """What the host handed over is not what it says."""


def send_sockets(channel: socket.socket, sockets: Mapping[int, socket.socket]) -> None:
    """Send ``sockets`` (WASI fd -> listening socket) over ``channel``, in one message."""
    if not 0 < len(sockets) <= MAX_SOCKETS:
        raise ValueError(f"hand over 1 to {MAX_SOCKETS} sockets, not {len(sockets)}")
    fds = list(sockets)
    socket.send_fds(channel, [struct.pack(f"<{len(fds)}I", *fds)], [sockets[fd].fileno() for fd in fds])


def receive_sockets(channel: socket.socket) -> dict[int, socket.socket]:
    """The listening sockets the host sent on ``channel`` (WASI fd -> socket); empty if it sent none.

    The host sends them before the launch, so they are here by the time the keep asks."""
    # (socket.recv_fds drops its flags before Python 3.12: recvmsg itself, without waiting)
    fds = array.array("i")
    try:
        payload, ancillary, _flags, _address = channel.recvmsg(
            4 * MAX_SOCKETS, socket.CMSG_SPACE(MAX_SOCKETS * fds.itemsize),
            socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
    except (BlockingIOError, InterruptedError):
        return {}
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    received = [socket.socket(fileno=fd) for fd in fds]
    try:
        if len(payload) != 4 * len(received) or not received:
            raise HandoverError(f"the host handed over {len(received)} sockets with a {len(payload)}-byte message")
        wasi_fds = struct.unpack(f"<{len(received)}I", payload)
        for sock in received:
            if not stat.S_ISSOCK(os.fstat(sock.fileno()).st_mode) or sock.type != socket.SOCK_STREAM \
                    or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                raise HandoverError("the host handed over something that is not a listening stream socket")
        if len(set(wasi_fds)) != len(wasi_fds):
            raise HandoverError("the host handed over two sockets for one fd")
    except Exception:
        for sock in received:
            sock.close()
        raise
    return dict(zip(wasi_fds, received, strict=True))

