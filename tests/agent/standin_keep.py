"""A stand-in for an empty keep, in a process of its own, until the real one can be provisioned:
it takes the host's ``provision`` and then echoes every stream the host opens, until its channel
closes. ``python -m tests.agent.standin_keep FD`` (FD: its end of the channel)."""

from __future__ import annotations

import socket
import sys
import threading

from motte.keep.__main__ import die_with_parent
from motte.shared.control import Conversation, Provision
from motte.shared.endpoint import ChannelClosed, Endpoint
from motte.shared.errors import MotteError
from motte.shared.transport import SocketTransport


def echo(endpoint: Endpoint, stream: int) -> None:
    try:
        while data := endpoint.read(stream, 1 << 20):
            endpoint.write(stream, data)
        endpoint.eof(stream)
    except MotteError:
        pass  # the host reset the stream, or the channel closed


def main(fd: int) -> int:
    die_with_parent()
    endpoint = Endpoint(SocketTransport(socket.socket(fileno=fd)), "keep", name="standin").start()
    endpoint.hello(timeout=30, backend="standin")
    try:
        provision = Conversation("keep").received(endpoint.recv_control())
    except ChannelClosed:
        return 0  # closed unprovisioned (a warm keep the agent did not need)
    assert isinstance(provision, Provision)
    while True:
        try:
            stream, _ = endpoint.accept_stream()
        except ChannelClosed:
            return 0
        threading.Thread(target=echo, args=(endpoint, stream), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
