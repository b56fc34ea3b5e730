"""The tenant's WebSocket client (RFC 6455), sans-I/O: the opening handshake, the framing both
ways, fragmentation, ping and pong, the closing handshake, and every way a server can break the
protocol; then its I/O edge (the agent client's session) against a scripted server on a real
socket pair."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from motte.tenant.agent_client import KeepSession, SessionClosed
from motte.tenant.websocket import (
    MAX_HEAD,
    Closed,
    Connection,
    Handshake,
    Message,
    Opcode,
    Response,
    WebSocketError,
    accept_value,
    mask,
)

RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3's example, and its answer
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def server_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, masked: bool = False,
                 length: int | None = None) -> bytes:
    """A frame as a server sends it (unmasked), or broken as a test needs it."""
    size = len(payload) if length is None else length
    first = (0x80 if fin else 0) | rsv | opcode
    if size < 126:
        head = struct.pack("!BB", first, size | (0x80 if masked else 0))
    elif size < 1 << 16:
        head = struct.pack("!BBH", first, 126 | (0x80 if masked else 0), size)
    else:
        head = struct.pack("!BBQ", first, 127 | (0x80 if masked else 0), size)
    return head + (b"\0\0\0\0" if masked else b"") + payload


def client_frames(data: bytes) -> list[tuple[int, bool, bytes]]:
    """The client's frames in ``data``, unmasked: (opcode, fin, payload). Each must be masked."""
    frames, rest = split_frames(data)
    assert rest == b"", "a partial frame"
    return frames


def split_frames(data: bytes) -> tuple[list[tuple[int, bool, bytes]], bytes]:
    """The whole client frames at the start of ``data``, and what is left."""
    frames = []
    while len(data) >= 2:
        first, second = data[0], data[1]
        assert second & 0x80, "a client frame must be masked"
        size, offset = second & 0x7F, 2
        if size == 126:
            (size,) = struct.unpack_from("!H", data, 2) if len(data) >= 4 else (1 << 64,)
            offset = 4
        elif size == 127:
            (size,) = struct.unpack_from("!Q", data, 2) if len(data) >= 10 else (1 << 64,)
            offset = 10
        if len(data) < offset + 4 + size:
            break
        key = data[offset : offset + 4]
        frames.append((first & 0x0F, bool(first & 0x80), bytes(mask(data[offset + 4 : offset + 4 + size], key))))
        data = data[offset + 4 + size :]
    return frames, data


def answer(key: str, **extra: str) -> bytes:
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Accept": accept_value(key), **extra}
    return ("HTTP/1.1 101 Switching Protocols\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            + "\r\n").encode()


# ---- the opening handshake ----

def test_the_accept_value_is_the_rfcs() -> None:
    assert accept_value(RFC_KEY) == RFC_ACCEPT


def test_the_request_asks_for_a_websocket_with_a_fresh_key() -> None:
    handshake = Handshake("localhost", "/v1/keeps/ab/session", {"Authorization": "Bearer t"})
    request = handshake.request().decode()
    assert request.startswith("GET /v1/keeps/ab/session HTTP/1.1\r\nHost: localhost\r\n")
    assert f"Sec-WebSocket-Key: {handshake.key}\r\n" in request and "Sec-WebSocket-Version: 13\r\n" in request
    assert "Upgrade: websocket\r\n" in request and "Authorization: Bearer t\r\n" in request
    assert request.endswith("\r\n\r\n") and Handshake("h", "/").key != handshake.key


def test_an_answer_in_pieces_with_frames_after_it() -> None:
    handshake = Handshake("h", "/")
    whole = answer(handshake.key) + server_frame(Opcode.BINARY, b"first")
    head_end = whole.index(b"\r\n\r\n") + 4
    for index in range(head_end - 1):
        assert handshake.receive(whole[index : index + 1]) is None
    response = handshake.receive(whole[head_end - 1 :])
    assert response is not None and response.status == 101 and response.headers["upgrade"] == "websocket"
    handshake.accept(response)
    assert Connection(max_message=100).receive(response.rest) == [Message(b"first")]


@pytest.mark.parametrize(("raw", "error"), [
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", "HTTP 404 Not Found"),
    (b"HTTP/1.1 101 OK\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ACCEPT\r\n\r\n",
     "does not upgrade to websocket"),
    (b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: ACCEPT\r\n\r\n", "Connection: Upgrade"),
    (b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
     b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n", "does not match the key"),
    (b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ACCEPT\r\n"
     b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n", "which was not offered"),
    (b"SPDY/3 101 OK\r\n\r\n", "not HTTP/1.1"),
    (b"HTTP/1.1 101 OK\r\nbroken header\r\n\r\n", "malformed header line"),
])
def test_a_wrong_answer_is_refused(raw: bytes, error: str) -> None:
    handshake = Handshake("h", "/")
    with pytest.raises(WebSocketError, match=error):
        response = handshake.receive(raw.replace(b"ACCEPT", accept_value(handshake.key).encode()))
        assert response is not None
        handshake.accept(response)


def test_a_refusal_keeps_its_body_and_an_endless_head_is_refused() -> None:
    response = Handshake("h", "/").receive(b"HTTP/1.1 409 Conflict\r\nContent-Length: 9\r\n\r\n{\"a\": 1}\n")
    assert response == Response(409, "Conflict", {"content-length": "9"}, b'{"a": 1}\n')
    with pytest.raises(WebSocketError, match=f"larger than {MAX_HEAD} bytes"):
        Handshake("h", "/").receive(b"HTTP/1.1 101 OK\r\nX: " + b"y" * MAX_HEAD)


# ---- frames ----

@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 1 << 20])
def test_sent_frames_are_masked_and_sized_minimally(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    keys = iter([b"\x01\x02\x03\x04", b"\xff\x00\xa5\x5a", b"\x10\x20\x30\x40"])
    connection = Connection(max_message=1 << 21, random=lambda n: next(keys))
    for frame in (connection.send(payload), connection.send(payload, text=True)):
        assert frame[1] & 0x7F == (size if size < 126 else 126 if size < 1 << 16 else 127)
        header = 2 + (0 if size < 126 else 2 if size < 1 << 16 else 8)
        assert len(frame) == header + 4 + size and (size < 4 or frame[header + 4 :] != payload)
    assert client_frames(connection.send(payload)) == [(Opcode.BINARY, True, payload)]


def test_a_fragmented_message_with_a_ping_between_its_fragments_byte_by_byte() -> None:
    connection = Connection(max_message=100)
    stream = (server_frame(Opcode.TEXT, "héllo ".encode(), fin=False) + server_frame(Opcode.PING, b"are you there")
              + server_frame(Opcode.CONTINUATION, b"wor", fin=False) + server_frame(Opcode.CONTINUATION, b"ld")
              + server_frame(Opcode.PONG, b"unasked") + server_frame(Opcode.BINARY, b""))
    events = [event for byte in stream for event in connection.receive(bytes([byte]))]
    assert events == [Message("héllo world".encode(), text=True), Message(b"")]
    assert client_frames(connection.outgoing()) == [(Opcode.PONG, True, b"are you there")]
    assert connection.outgoing() == b""


def test_several_frames_in_one_read() -> None:
    connection = Connection(max_message=1 << 17)
    big = bytes(70000)
    events = connection.receive(server_frame(Opcode.BINARY, b"a") + server_frame(Opcode.BINARY, big)
                                + server_frame(Opcode.BINARY, b"c")[:1])
    assert events == [Message(b"a"), Message(big)]
    assert connection.receive(server_frame(Opcode.BINARY, b"c")[1:]) == [Message(b"c")]


@pytest.mark.parametrize(("frames", "error", "code"), [
    (server_frame(Opcode.BINARY, b"x", masked=True), "the server masked a frame", 1002),
    (server_frame(Opcode.BINARY, b"x", rsv=0x40), "reserved bits", 1002),
    (server_frame(0x3, b"x"), "unknown opcode 0x3", 1002),
    (server_frame(0xB, b"x"), "unknown opcode 0xb", 1002),
    (server_frame(Opcode.PING, b"x", fin=False), "control frame is fragmented", 1002),
    (server_frame(Opcode.PING, bytes(126)), "control frame carries 126 bytes", 1002),
    (server_frame(Opcode.CONTINUATION, b"x"), "no fragmented message to continue", 1002),
    (server_frame(Opcode.BINARY, b"x", fin=False) + server_frame(Opcode.BINARY, b"y"), "before the fragmented one",
     1002),
    (server_frame(Opcode.BINARY, b"", length=1 << 63)[:10], "most significant bit", 1002),
    (server_frame(Opcode.TEXT, b"\xff\xfe"), "text message is not UTF-8", 1007),
    (server_frame(Opcode.CLOSE, b"\x03"), "one byte", 1002),
    (server_frame(Opcode.CLOSE, struct.pack("!H", 1005)), "invalid code 1005", 1002),
    (server_frame(Opcode.CLOSE, struct.pack("!H", 999)), "invalid code 999", 1002),
    (server_frame(Opcode.CLOSE, struct.pack("!H", 1000) + b"\xc3"), "close reason is not UTF-8", 1007),
])
def test_a_server_that_breaks_the_protocol(frames: bytes, error: str, code: int) -> None:
    with pytest.raises(WebSocketError, match=error) as broken:
        Connection(max_message=100).receive(frames)
    assert broken.value.code == code


def test_a_message_too_large_is_refused_from_its_header() -> None:
    connection = Connection(max_message=1000)
    assert connection.receive(server_frame(Opcode.BINARY, bytes(600), fin=False)) == []
    with pytest.raises(WebSocketError, match="larger than 1000 bytes") as too_big:
        connection.receive(server_frame(Opcode.CONTINUATION, b"", length=401)[:4])  # the header, no payload
    assert too_big.value.code == 1009
    with pytest.raises(WebSocketError, match="larger than 1000 bytes"):
        Connection(max_message=1000).receive(server_frame(Opcode.BINARY, b"", length=1 << 40)[:10])


# ---- closing ----

def test_the_server_closes_first_and_is_answered_with_its_code() -> None:
    connection = Connection(max_message=100)
    events = connection.receive(server_frame(Opcode.BINARY, b"last") + server_frame(
        Opcode.CLOSE, struct.pack("!H", 4002) + "the keep reset it: é".encode()) + server_frame(Opcode.BINARY, b"x"))
    assert events == [Message(b"last"), Closed(4002, "the keep reset it: é")]
    assert client_frames(connection.outgoing()) == [(Opcode.CLOSE, True, struct.pack("!H", 4002))]
    assert connection.closed and connection.receive(b"more bytes after the close") == []
    with pytest.raises(WebSocketError, match="closing"):
        connection.send(b"late")


def test_a_close_without_a_code_and_a_client_that_closes_first() -> None:
    connection = Connection(max_message=100)
    assert connection.receive(server_frame(Opcode.CLOSE)) == [Closed(1005)]
    assert client_frames(connection.outgoing()) == [(Opcode.CLOSE, True, struct.pack("!H", 1000))]
    connection = Connection(max_message=100)
    assert client_frames(connection.close(1000, "bye")) == [(Opcode.CLOSE, True, struct.pack("!H", 1000) + b"bye")]
    assert connection.close() == b"" and not connection.closed
    assert connection.receive(server_frame(Opcode.PING, b"late ping")) == []
    assert connection.outgoing() == b""  # no pong once closing
    assert connection.receive(server_frame(Opcode.CLOSE, struct.pack("!H", 1000))) == [Closed(1000)]
    assert connection.closed and connection.outgoing() == b""
    with pytest.raises(ValueError, match="not a close code"):
        Connection(max_message=1).close(1006)


# ---- the I/O edge, on a real socket pair ----

@pytest.fixture
def wire() -> Iterator[tuple[KeepSession, socket.socket]]:
    """A session over one end of a socket pair; the test plays the agent on the other."""
    client, server = socket.socketpair()
    session = KeepSession(client, Connection(max_message=1 << 20), idle_timeout=5)
    try:
        yield session, server
    finally:
        server.close()  # first: the session's close need not wait for an answer
        session.close()


def read_frames(sock: socket.socket, count: int) -> list[tuple[int, bool, bytes]]:
    """The next ``count`` frames the client sent (and no more)."""
    data = b""
    sock.settimeout(5)
    while len(split_frames(data)[0]) < count:
        data += sock.recv(1 << 20)
    return client_frames(data)


def test_a_session_answers_pings_joins_fragments_and_sends_in_messages(
        wire: tuple[KeepSession, socket.socket]) -> None:
    session, agent = wire
    agent.sendall(server_frame(Opcode.PING, b"hb") + server_frame(Opcode.BINARY, b"part one, ", fin=False)
                  + server_frame(Opcode.CONTINUATION, b"part two"))
    assert session.receive() == b"part one, part two"
    assert read_frames(agent, 1) == [(Opcode.PONG, True, b"hb")]
    big = bytes(range(256)) * 8192  # 2 MiB: two messages of the agent's largest size
    sender = threading.Thread(target=session.send, args=(big,))
    sender.start()
    frames = read_frames(agent, 2)
    sender.join(5)
    assert [len(payload) for (_, _, payload) in frames] == [1 << 20, 1 << 20]
    assert b"".join(payload for (_, _, payload) in frames) == big
    session.send_eof()
    assert read_frames(agent, 1) == [(Opcode.BINARY, True, b"")]


def test_a_session_ended_by_the_keep_says_why_and_answers_the_close(wire: tuple[KeepSession, socket.socket]) -> None:
    session, agent = wire
    agent.sendall(server_frame(Opcode.CLOSE, struct.pack("!H", 4002) + b"the keep reset the connection: boom\x1b"))
    with pytest.raises(SessionClosed, match=r"the keep reset the connection: boom\\x1b$"):
        session.receive()
    with pytest.raises(SessionClosed, match="boom"):  # and stays so
        session.receive()
    assert read_frames(agent, 1) == [(Opcode.CLOSE, True, struct.pack("!H", 4002))]


def test_a_session_closes_in_order(wire: tuple[KeepSession, socket.socket]) -> None:
    session, agent = wire
    agent.sendall(server_frame(Opcode.BINARY, b"") + server_frame(Opcode.CLOSE, struct.pack("!H", 1000)))
    assert session.receive() == b"" and session.receive() == b""
    closer = threading.Thread(target=session.close)
    closer.start()
    assert read_frames(agent, 1) == [(Opcode.CLOSE, True, struct.pack("!H", 1000))]
    closer.join(5)
    assert not closer.is_alive()


def test_a_server_that_masks_is_closed_with_1002(wire: tuple[KeepSession, socket.socket]) -> None:
    session, agent = wire
    agent.sendall(server_frame(Opcode.BINARY, b"x", masked=True))
    with pytest.raises(SessionClosed, match="broke the WebSocket protocol: the server masked a frame"):
        session.receive()
    assert read_frames(agent, 1) == [(Opcode.CLOSE, True, struct.pack("!H", 1002))]
    assert agent.recv(10) == b""  # and the connection closed


def test_a_connection_that_drops_or_goes_silent(wire: tuple[KeepSession, socket.socket]) -> None:
    session, agent = wire
    agent.shutdown(socket.SHUT_WR)
    with pytest.raises(SessionClosed, match="the connection to the host agent broke: it closed the connection"):
        session.receive()
    client, server = socket.socketpair()
    with server:
        silent = KeepSession(client, Connection(max_message=10), idle_timeout=0.2)
        with pytest.raises(SessionClosed, match=r"sent nothing for 0.2 s, not even its heartbeat"):
            silent.receive()
        silent.close()
