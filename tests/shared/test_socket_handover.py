"""Handing listen sockets to a nil keep (``shared/socket_handover.py``), on real sockets."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from motte.shared.socket_handover import MAX_SOCKETS, HandoverError, receive_sockets, send_sockets


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    host, keep = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with host, keep:
        yield host, keep


def listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_the_keep_gets_each_socket_under_its_fd_and_can_accept_on_it(pair: tuple[socket.socket, socket.socket]) -> None:
    host, keep = pair
    first, second = listening(), listening()
    with first, second:
        send_sockets(host, {3: first, 5: second})
        received = receive_sockets(keep)
    assert sorted(received) == [3, 5]
    with received[3], received[5]:
        # The same sockets: a client of the port the host bound reaches the keep's copy.
        with socket.create_connection(received[5].getsockname()) as client:
            accepted, _ = received[5].accept()
            with accepted:
                client.sendall(b"hi")
                assert accepted.recv(2) == b"hi"
        assert not received[3].get_inheritable()


def test_nothing_sent_is_no_sockets_and_does_not_wait(pair: tuple[socket.socket, socket.socket]) -> None:
    _, keep = pair
    assert receive_sockets(keep) == {}


def test_what_is_not_a_listening_socket_is_refused_and_closed(pair: tuple[socket.socket, socket.socket]) -> None:
    host, keep = pair
    unbound = socket.socket()
    with unbound:
        socket.send_fds(host, [struct.pack("<I", 3)], [unbound.fileno()])
    with pytest.raises(HandoverError, match="not a listening stream socket"):
        receive_sockets(keep)


def test_a_message_that_does_not_match_its_sockets_is_refused(pair: tuple[socket.socket, socket.socket]) -> None:
    host, keep = pair
    sock = listening()
    with sock:
        socket.send_fds(host, [struct.pack("<2I", 3, 4)], [sock.fileno()])
    with pytest.raises(HandoverError, match="1 sockets with a 8-byte message"):
        receive_sockets(keep)


def test_two_sockets_for_one_fd_are_refused(pair: tuple[socket.socket, socket.socket]) -> None:
    host, keep = pair
    first, second = listening(), listening()
    with first, second:
        socket.send_fds(host, [struct.pack("<2I", 3, 3)], [first.fileno(), second.fileno()])
    with pytest.raises(HandoverError, match="two sockets for one fd"):
        receive_sockets(keep)


def test_at_most_one_message_of_sockets(pair: tuple[socket.socket, socket.socket]) -> None:
    host, _ = pair
    with pytest.raises(ValueError, match=f"1 to {MAX_SOCKETS}"):
        send_sockets(host, {})
