"""A WebSocket client (RFC 6455), sans-I/O: the opening handshake, frames both ways,
fragmentation, ping and pong, the closing handshake. The tenant's session with a keep travels
over it, through the host agent; :mod:`motte.tenant.agent_client` does the socket I/O.

It is written here, not taken from a library, because ``motte deploy`` must start fast. Measured
(Python 3.11, imports only): aiohttp about 180 ms; wsproto 1.3 with h11 about 36 ms in a bare
interpreter, 15 ms on top of the standard library modules motte loads anyway; this module about
1 ms on top of those.

Client side only: every frame it sends is masked with a fresh key (RFC 6455 section 5.3), every
frame it receives must be unmasked. No extension or subprotocol is negotiated, so the reserved
bits must be clear. A message is at most ``max_message`` bytes: a frame that would make it
larger is refused (1009) from its header, before its payload is read.
"""

from __future__ import annotations

import base64
import enum
import functools
import hashlib
import os
import struct
from collections.abc import Callable, Mapping
from typing import NamedTuple

from motte.shared.errors import MotteError

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
MAX_HEAD = 16 << 10  # bytes of a handshake answer's status line and headers
MAX_CONTROL = 125  # payload bytes of a control frame

CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_NO_STATUS = 1005  # (never sent: a close frame without a code)
CLOSE_ABNORMAL = 1006  # (never sent: the connection ended without a close frame)
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009
#: codes a close frame may carry (RFC 6455 section 7.4; 1012-1014 from the IANA registry)
_SENDABLE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})

_FIN = 0x80
_RESERVED = 0x70
_OPCODE = 0x0F
_MASKED = 0x80


class Opcode(enum.IntEnum):
    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class WebSocketError(MotteError):
    """The server broke the protocol; ``code`` is the close code to answer with."""

    def __init__(self, message: str, code: int = CLOSE_PROTOCOL_ERROR):
        super().__init__(message)
        self.code = code


class Response(NamedTuple):
    """The server's answer to the opening handshake (its body, if any, starts in ``rest``)."""

    status: int
    reason: str
    headers: dict[str, str]  # names in lower case; a repeated header's values joined by ", "
    rest: bytes  # what came after the head: the first frames, or the start of a refusal's body


class Message(NamedTuple):
    """A whole data message (its fragments joined)."""

    data: bytes
    text: bool = False


class Closed(NamedTuple):
    """The server's close frame: its code (1005 when it carried none) and reason."""

    code: int
    reason: str = ""


Event = Message | Closed


class Handshake:
    """The client's opening handshake: :meth:`request`, then :meth:`receive` the answer until it
    is whole, then :meth:`accept` it (a 101 whose Sec-WebSocket-Accept matches the key)."""

    def __init__(self, host: str, path: str, headers: Mapping[str, str] | None = None, *,
                 random: Callable[[int], bytes] = os.urandom):
        self.host = host
        self.path = path
        self.headers = dict(headers or {})
        self.key = base64.b64encode(random(16)).decode("ascii")
        self._buffer = bytearray()

    def request(self) -> bytes:
        lines = [f"GET {self.path} HTTP/1.1", f"Host: {self.host}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {self.key}", "Sec-WebSocket-Version: 13"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def receive(self, data: bytes) -> Response | None:
        """Feed bytes of the answer; the answer once its head is whole, else None."""
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                raise WebSocketError(f"the handshake answer's head is larger than {MAX_HEAD} bytes")
            return None
        head = bytes(self._buffer[:end]).decode("latin-1")
        return _parse_head(head, bytes(self._buffer[end + 4 :]))

    def accept(self, response: Response) -> None:
        """Check that ``response`` opens the WebSocket this handshake asked for."""
        if response.status != 101:
            raise WebSocketError(f"the server refused the WebSocket: HTTP {response.status} {response.reason}")
        headers = response.headers
        if headers.get("upgrade", "").lower() != "websocket":
            raise WebSocketError("the handshake answer does not upgrade to websocket")
        if "upgrade" not in _tokens(headers.get("connection", "")):
            raise WebSocketError("the handshake answer lacks 'Connection: Upgrade'")
        if headers.get("sec-websocket-accept") != accept_value(self.key):
            raise WebSocketError("the handshake answer's Sec-WebSocket-Accept does not match the key")
        for name in ("sec-websocket-extensions", "sec-websocket-protocol"):
            if headers.get(name):
                raise WebSocketError(f"the server chose {name} '{headers[name][:60]}', which was not offered")


def accept_value(key: str) -> str:
    """The Sec-WebSocket-Accept that answers ``key``."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + GUID).digest()).decode("ascii")


class Connection:
    """An open WebSocket, client side: :meth:`send` and :meth:`close` give the bytes to write;
    :meth:`receive` takes the bytes read and gives the events; :meth:`outgoing` the bytes it must
    write of its own accord (pongs, the answer to the server's close)."""

    def __init__(self, *, max_message: int, random: Callable[[int], bytes] = os.urandom):
        self.max_message = max_message
        self._random = random
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_size = 0
        self._fragment_text: bool | None = None  # a fragmented message is being received
        self._outgoing = bytearray()
        self.close_sent = False
        self.close_received: Closed | None = None

    @property
    def closed(self) -> bool:
        """Both sides sent their close frame: only closing the TCP connection is left."""
        return self.close_sent and self.close_received is not None

    def send(self, data: bytes | memoryview, *, text: bool = False) -> bytes:
        """One data message, in one frame."""
        if self.close_sent:
            raise WebSocketError("the WebSocket is closing: nothing may be sent any more")
        return self._frame(Opcode.TEXT if text else Opcode.BINARY, data)

    def ping(self, data: bytes = b"") -> bytes:
        return self._frame(Opcode.PING, _control_payload(data))

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> bytes:
        """The close frame (``b""`` if one was sent already)."""
        if self.close_sent:
            return b""
        if code not in _SENDABLE and not 3000 <= code <= 4999:
            raise ValueError(f"{code} is not a close code a client may send")
        self.close_sent = True
        return self._frame(Opcode.CLOSE, _control_payload(struct.pack("!H", code) + reason.encode()))

    def outgoing(self) -> bytes:
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def receive(self, data: bytes) -> list[Event]:
        """Feed bytes read from the server; the whole messages and the close frame they held."""
        self._buffer += data
        events: list[Event] = []
        offset = 0
        while self.close_received is None:
            frame = self._next_frame(offset)
            if frame is None:
                break
            opcode, fin, start, end = frame
            offset = end
            with memoryview(self._buffer) as view:  # (one copy of the payload, not two)
                payload = bytes(view[start:end])
            event = self._take(opcode, fin, payload)
            if event is not None:
                events.append(event)
        del self._buffer[:offset]
        if self.close_received is not None:
            self._buffer.clear()  # nothing may follow the close frame
        return events

    # ---- receiving ----

    def _next_frame(self, offset: int) -> tuple[Opcode, bool, int, int] | None:
        """(opcode, fin, payload start, payload end) of the frame at ``offset``, if it is whole."""
        buffer = self._buffer
        if len(buffer) - offset < 2:
            return None
        first, second = buffer[offset], buffer[offset + 1]
        if first & _RESERVED:
            raise WebSocketError("a frame has reserved bits set, and no extension was negotiated")
        try:
            opcode = Opcode(first & _OPCODE)
        except ValueError:
            raise WebSocketError(f"a frame has the unknown opcode {first & _OPCODE:#x}") from None
        if second & _MASKED:
            raise WebSocketError("the server masked a frame (a server's frames are never masked)")
        fin = bool(first & _FIN)
        length, start = second & 0x7F, offset + 2
        if length == 126:
            if len(buffer) - start < 2:
                return None
            (length,) = struct.unpack_from("!H", buffer, start)
            start += 2
        elif length == 127:
            if len(buffer) - start < 8:
                return None
            (length,) = struct.unpack_from("!Q", buffer, start)
            start += 8
            if length >> 63:
                raise WebSocketError("a frame's length has its most significant bit set")
        self._check_header(opcode, fin, length)
        end = start + length
        return (opcode, fin, start, end) if len(buffer) >= end else None

    def _check_header(self, opcode: Opcode, fin: bool, length: int) -> None:
        if opcode >= Opcode.CLOSE:
            if not fin:
                raise WebSocketError("a control frame is fragmented")
            if length > MAX_CONTROL:
                raise WebSocketError(f"a control frame carries {length} bytes (at most {MAX_CONTROL})")
            return
        if opcode is Opcode.CONTINUATION and self._fragment_text is None:
            raise WebSocketError("a continuation frame came with no fragmented message to continue")
        if opcode is not Opcode.CONTINUATION and self._fragment_text is not None:
            raise WebSocketError("a new message began before the fragmented one ended")
        if self._fragment_size + length > self.max_message:
            raise WebSocketError(f"a message is larger than {self.max_message} bytes", CLOSE_TOO_BIG)

    def _take(self, opcode: Opcode, fin: bool, payload: bytes) -> Event | None:
        if opcode is Opcode.PING:
            if not self.close_sent:
                self._outgoing += self._frame(Opcode.PONG, payload)
            return None
        if opcode is Opcode.PONG:
            return None
        if opcode is Opcode.CLOSE:
            return self._closed_by_server(payload)
        if opcode is not Opcode.CONTINUATION:
            self._fragment_text = opcode is Opcode.TEXT
        self._fragments.append(payload)
        self._fragment_size += len(payload)
        if not fin:
            return None
        data = self._fragments[0] if len(self._fragments) == 1 else b"".join(self._fragments)
        text = bool(self._fragment_text)
        self._fragments, self._fragment_size, self._fragment_text = [], 0, None
        if text:
            _utf8(data, "a text message")
        return Message(data, text)

    def _closed_by_server(self, payload: bytes) -> Closed:
        if len(payload) == 1:
            raise WebSocketError("a close frame carries one byte (a code takes two)")
        if not payload:
            closed = Closed(CLOSE_NO_STATUS)
        else:
            (code,) = struct.unpack_from("!H", payload)
            if code not in _SENDABLE and not 3000 <= code <= 4999:
                raise WebSocketError(f"a close frame carries the invalid code {code}")
            closed = Closed(code, _utf8(payload[2:], "a close reason"))
        self.close_received = closed
        if not self.close_sent:  # answer it (RFC 6455 section 5.5.1): with its code, if it had one
            self._outgoing += self.close(CLOSE_NORMAL if closed.code == CLOSE_NO_STATUS else closed.code)
        return closed

    # ---- sending ----

    def _frame(self, opcode: Opcode, payload: bytes | memoryview) -> bytes:
        length = len(payload)
        if length < 126:
            head = struct.pack("!BB", _FIN | opcode, _MASKED | length)
        elif length < 1 << 16:
            head = struct.pack("!BBH", _FIN | opcode, _MASKED | 126, length)
        else:
            head = struct.pack("!BBQ", _FIN | opcode, _MASKED | 127, length)
        key = self._random(4)
        return head + key + mask(payload, key)


def mask(payload: bytes | memoryview, key: bytes) -> bytearray:
    """``payload`` XOR the repeated 4-byte ``key``: each of the four byte lanes through a
    translation table (hundreds of MB/s, where a byte loop in Python does a few)."""
    data = payload if isinstance(payload, bytes) else bytes(payload)  # (a strided memoryview copies slowly)
    out = bytearray(len(data))
    for lane in range(4):
        out[lane::4] = data[lane::4].translate(_xor_table(key[lane]))
    return out


_IDENTITY = int.from_bytes(bytes(range(256)), "big")


@functools.lru_cache(maxsize=256)
def _xor_table(byte: int) -> bytes:
    return (_IDENTITY ^ int.from_bytes(bytes([byte]) * 256, "big")).to_bytes(256, "big")


def _control_payload(data: bytes) -> bytes:
    if len(data) > MAX_CONTROL:
        raise ValueError(f"a control frame carries at most {MAX_CONTROL} bytes")
    return data


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise WebSocketError(f"{what} is not UTF-8", CLOSE_INVALID_DATA) from None


def _tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",")}


def _parse_head(head: str, rest: bytes) -> Response:
    status_line, *lines = head.split("\r\n")
    version, _, status_reason = status_line.partition(" ")
    status_text, _, reason = status_reason.partition(" ")
    if not version.startswith("HTTP/1.") or not (status_text.isdigit() and len(status_text) == 3):
        raise WebSocketError(f"the handshake answer is not HTTP/1.1: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise WebSocketError(f"the handshake answer has a malformed header line: {line[:80]!r}")
        key = name.lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return Response(int(status_text), reason, headers, rest)
