"""The host <-> keep channel protocol, sans-I/O.

One byte stream (a socketpair for ``nil``, a virtio serial port for VM keeps) carries frames::

    +-----------+--------+--------+-------------+----------------+
    | stream u32| type u8| flags u8| length u32 | payload        |
    +-----------+--------+--------+-------------+----------------+

Stream 0 is the control stream (HELLO and CONTROL frames, JSON payloads; the CONTROL messages and
their order are in :mod:`motte.shared.control`). Other streams carry
bytes (the workload image, stdio, network connections). The side that opens a stream picks its
id: the host uses odd ids, the keep even ones, so both can open streams without a race.

Flow control is per stream and credit based: a sender may have at most ``window`` unacknowledged
bytes in flight; the receiver returns credit (CREDIT frames) as its consumer reads. So a slow
reader can make neither side buffer without bound.

Everything here is pure: :class:`ChannelState` takes bytes in and gives events and bytes out, in
the manner of ``h11``. Every length is bounded and every malformed input raises
:class:`ProtocolError`, never another exception.
"""

from __future__ import annotations

import json
import struct
from enum import IntEnum
from typing import Any, Literal, NamedTuple

from motte.shared.errors import MotteError

PROTOCOL_VERSION = 1
HEADER = struct.Struct("!IBBI")
HEADER_SIZE = HEADER.size
MAX_PAYLOAD = 1 << 20  # one frame carries at most 1 MiB
MAX_CONTROL_PAYLOAD = MAX_PAYLOAD  # a launch carries CA bundles of up to 128 KiB each
MAX_STREAM_ID = (1 << 31) - 1
MAX_STREAMS = 4096  # open streams per side at once
DEFAULT_WINDOW = 1 << 20  # initial credit per stream, in bytes
MAX_WINDOW = 64 << 20
CONTROL_STREAM = 0

Role = Literal["host", "keep"]


class FrameType(IntEnum):
    HELLO = 1  # stream 0: JSON {"protocol": N, "role": ..., ...}
    CONTROL = 2  # stream 0: a JSON object with an "op" key
    OPEN = 3  # opens a stream: JSON {"kind": ..., ...}
    DATA = 4  # bytes on an open stream, within the sender's credit
    EOF = 5  # the sender will send no more on this stream (half close)
    RESET = 6  # the stream is aborted, both directions; payload: UTF-8 reason
    CREDIT = 7  # payload u32: the receiver grants that many more bytes


_FRAME_TYPES = {member.value: member for member in FrameType}  # a dict: FrameType(n) costs ~1 µs a frame


class ProtocolError(MotteError):
    """The peer broke the channel protocol (malformed or out-of-order frame)."""


# Records are NamedTuples, not dataclasses: this module is on the keep's start-up path, and a
# dataclass costs about 0.5 ms to define, a NamedTuple a fifth of that.


class Frame(NamedTuple):
    stream: int
    type: FrameType
    payload: bytes = b""
    flags: int = 0


def encode_header(stream: int, kind: FrameType, length: int) -> bytes:
    if not 0 <= stream <= MAX_STREAM_ID:
        raise ValueError(f"stream id {stream} out of range")
    if length > MAX_PAYLOAD:
        raise ValueError(f"payload of {length} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(stream, kind, 0, length)


def encode_frame(frame: Frame) -> bytes:
    return encode_header(frame.stream, frame.type, len(frame.payload)) + frame.payload


class FrameDecoder:
    """Splits a byte stream into frames.

    Holds at most one partial frame: the start of a header, or the pieces of a payload that has
    not wholly arrived. A payload split over many reads (bulk data: a frame may be 1 MiB, a read
    256 KiB) is joined once when it is complete; its pieces are views of the bytes fed, so
    ``feed`` must be given bytes that do not change afterwards (``bytes``, not a reused buffer).
    """

    def __init__(self) -> None:
        self._head = bytearray()  # the start of a header (fewer than HEADER_SIZE bytes)
        self._frame: tuple[int, FrameType] | None = None  # a frame whose payload is still coming
        self._pieces: list[memoryview] = []  # its payload so far
        self._missing = 0  # bytes of it still to come

    def feed(self, data: bytes) -> list[Frame]:
        if type(data) is not bytes:
            data = bytes(data)  # pieces of it are kept: they must not change under us
        frames: list[Frame] = []
        offset = 0
        end_of_data = len(data)
        while offset < end_of_data:
            if self._frame is not None:
                take = min(self._missing, end_of_data - offset)
                self._pieces.append(memoryview(data)[offset : offset + take])
                offset += take
                self._missing -= take
                if self._missing:
                    break
                stream, frame_type = self._frame
                frames.append(Frame(stream, frame_type, b"".join(self._pieces)))
                self._frame = None
                self._pieces = []
                continue
            if self._head or end_of_data - offset < HEADER_SIZE:
                take = min(HEADER_SIZE - len(self._head), end_of_data - offset)
                self._head += data[offset : offset + take]
                offset += take
                if len(self._head) < HEADER_SIZE:
                    break
                header = self._parse_header(bytes(self._head), 0)
                self._head.clear()
            else:
                header = self._parse_header(data, offset)  # the common case: parse in place
                offset += HEADER_SIZE
            stream, frame_type, length = header
            if end_of_data - offset >= length:
                frames.append(Frame(stream, frame_type, data[offset : offset + length]))
                offset += length
            else:
                self._frame = (stream, frame_type)
                self._missing = length
        return frames

    @staticmethod
    def _parse_header(source: bytes, offset: int) -> tuple[int, FrameType, int]:
        stream, kind, flags, length = HEADER.unpack_from(source, offset)
        if stream > MAX_STREAM_ID:
            raise ProtocolError(f"frame for stream id {stream} beyond the maximum {MAX_STREAM_ID}")
        if length > MAX_PAYLOAD:
            raise ProtocolError(f"frame length {length} exceeds the maximum {MAX_PAYLOAD}")
        frame_type = _FRAME_TYPES.get(kind)
        if frame_type is None:
            raise ProtocolError(f"unknown frame type {kind}")
        if flags != 0:
            raise ProtocolError(f"unknown frame flags {flags:#x}")
        return stream, frame_type, length

    @property
    def pending(self) -> int:
        """Bytes held of a frame not yet complete."""
        return len(self._head) + sum(len(piece) for piece in self._pieces) + (HEADER_SIZE if self._frame else 0)


# ---- events ---------------------------------------------------------------------------------


class Hello(NamedTuple):
    info: dict[str, Any]


class Control(NamedTuple):
    message: dict[str, Any]


class StreamOpened(NamedTuple):
    stream: int
    meta: dict[str, Any]


class Data(NamedTuple):
    stream: int
    data: bytes


class StreamEnded(NamedTuple):
    """The peer half-closed the stream: it will send no more bytes on it."""

    stream: int


class StreamReset(NamedTuple):
    stream: int
    reason: str


class CreditGranted(NamedTuple):
    stream: int
    window: int  # bytes the local side may now send


class StreamRefused(NamedTuple):
    """The peer sent a frame for a stream that is not open here: answered with RESET, not fatal."""

    stream: int
    frame_type: FrameType


Event = Hello | Control | StreamOpened | Data | StreamEnded | StreamReset | CreditGranted | StreamRefused


class _Stream:
    __slots__ = ("local_eof", "recv_window", "remote_eof", "send_window")

    def __init__(self, send_window: int, recv_window: int):
        self.send_window = send_window  # bytes this side may still send
        self.recv_window = recv_window  # bytes the peer may still send
        self.local_eof = False
        self.remote_eof = False


class ChannelState:
    """One side of the channel. Feed it received bytes; collect bytes to send with ``outgoing``."""

    def __init__(self, role: Role, window: int = DEFAULT_WINDOW):
        if not 0 < window <= MAX_WINDOW:
            raise ValueError("window out of range")
        self.role = role
        self.window = window
        self._decoder = FrameDecoder()
        self._out: list[bytes | memoryview] = []
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1 if role == "host" else 2
        self._hello_sent = False
        self._hello_received = False
        self._closed_ids: set[int] = set()
        self._peer_window = 0

    # ---- sending ----

    def outgoing(self) -> list[bytes | memoryview]:
        """The buffers to send, in order (headers and payloads, uncopied: use writev/sendmsg)."""
        buffers, self._out = self._out, []
        return buffers

    def outgoing_bytes(self) -> bytes:
        return b"".join(self.outgoing())

    def _emit(self, stream: int, kind: FrameType, payload: bytes | memoryview = b"") -> None:
        self._out.append(encode_header(stream, kind, len(payload)))
        if payload:
            self._out.append(payload)

    def send_hello(self, **info: Any) -> None:
        self._hello_sent = True
        hello = {"protocol": PROTOCOL_VERSION, "role": self.role, "window": self.window, **info}
        self._emit(CONTROL_STREAM, FrameType.HELLO, _dump_json(hello))

    @property
    def ready(self) -> bool:
        """Both HELLOs are exchanged: streams may be opened."""
        return self._hello_sent and self._hello_received

    def send_control(self, op: str, **fields: Any) -> None:
        self._emit(CONTROL_STREAM, FrameType.CONTROL, _dump_json({"op": op, **fields}))

    def open_stream(self, kind: str, **meta: Any) -> int:
        if not self.ready:
            raise ProtocolError("stream opened before the HELLO exchange")
        if len(self._streams) >= MAX_STREAMS:
            raise ProtocolError(f"too many open streams (limit {MAX_STREAMS})")
        stream = self._next_id
        if stream > MAX_STREAM_ID:
            raise ProtocolError("stream ids exhausted")
        self._next_id += 2
        self._streams[stream] = _Stream(send_window=self._peer_window, recv_window=self.window)
        self._emit(stream, FrameType.OPEN, _dump_json({"kind": kind, **meta}))
        return stream

    def send_window(self, stream: int) -> int:
        state = self._streams.get(stream)
        return 0 if state is None or state.local_eof else state.send_window

    def is_open(self, stream: int) -> bool:
        return stream in self._streams

    def send_data(self, stream: int, data: bytes | memoryview) -> int:
        """Queue as much of ``data`` as the credit allows; return how many bytes were taken."""
        state = self._streams.get(stream)
        if state is None:
            raise ProtocolError(f"send on stream {stream}, which is not open")
        if state.local_eof:
            raise ProtocolError(f"send on stream {stream} after EOF")
        count = min(len(data), state.send_window)
        view = memoryview(data)
        for offset in range(0, count, MAX_PAYLOAD):
            # Payloads go out as views of the caller's buffer: the caller must not reuse it.
            self._emit(stream, FrameType.DATA, view[offset : min(count, offset + MAX_PAYLOAD)])
        state.send_window -= count
        return count

    def send_eof(self, stream: int) -> None:
        state = self._streams.get(stream)
        if state is None or state.local_eof:
            return
        state.local_eof = True
        self._emit(stream, FrameType.EOF)
        self._forget_if_done(stream, state)

    def reset_stream(self, stream: int, reason: str = "") -> None:
        if self._streams.pop(stream, None) is not None:
            self._closed_ids.add(stream)
            self._emit(stream, FrameType.RESET, reason.encode()[:1024])

    def grant_credit(self, stream: int, count: int) -> None:
        """The local consumer has taken ``count`` bytes: let the peer send that many more."""
        state = self._streams.get(stream)
        if state is None or state.remote_eof or count <= 0:
            return
        state.recv_window += count
        self._emit(stream, FrameType.CREDIT, struct.pack("!I", count))

    # ---- receiving ----

    def receive(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        for frame in self._decoder.feed(data):
            event = self._handle(frame)
            if event is not None:
                events.append(event)
        return events

    def _handle(self, frame: Frame) -> Event | None:
        """The event one frame makes, if any (a plain function, not a generator: it runs per frame)."""
        if frame.stream == CONTROL_STREAM:
            return self._handle_control(frame)
        if not self._hello_received:
            raise ProtocolError(f"{frame.type.name} frame before HELLO")
        if frame.type is FrameType.OPEN:
            return self._handle_open(frame)
        state = self._streams.get(frame.stream)
        if state is None:
            # Late frames on a stream we already closed are normal (crossing RESET/EOF); frames
            # for a stream that never existed get a RESET. Neither ends the channel.
            if frame.stream not in self._closed_ids and frame.type not in (FrameType.RESET, FrameType.CREDIT):
                self._closed_ids.add(frame.stream)
                self._emit(frame.stream, FrameType.RESET, b"unknown stream")
                return StreamRefused(frame.stream, frame.type)
            return None
        if frame.type is FrameType.DATA:
            if state.remote_eof:
                raise ProtocolError(f"DATA on stream {frame.stream} after EOF")
            if len(frame.payload) > state.recv_window:
                raise ProtocolError(
                    f"stream {frame.stream}: peer sent {len(frame.payload)} bytes with only "
                    f"{state.recv_window} bytes of credit"
                )
            state.recv_window -= len(frame.payload)
            return Data(frame.stream, frame.payload)
        elif frame.type is FrameType.EOF:
            if frame.payload:
                raise ProtocolError("EOF frame with a payload")
            state.remote_eof = True
            self._forget_if_done(frame.stream, state)
            return StreamEnded(frame.stream)
        elif frame.type is FrameType.RESET:
            del self._streams[frame.stream]
            self._closed_ids.add(frame.stream)
            return StreamReset(frame.stream, frame.payload.decode("utf-8", "replace"))
        elif frame.type is FrameType.CREDIT:
            if len(frame.payload) != 4:
                raise ProtocolError("CREDIT frame must carry 4 bytes")
            (count,) = struct.unpack("!I", frame.payload)
            if state.send_window + count > MAX_WINDOW:
                raise ProtocolError(f"stream {frame.stream}: credit beyond {MAX_WINDOW} bytes")
            state.send_window += count
            return CreditGranted(frame.stream, state.send_window)
        else:
            raise ProtocolError(f"{frame.type.name} frame on data stream {frame.stream}")

    def _handle_control(self, frame: Frame) -> Event:
        if frame.type is FrameType.HELLO:
            if self._hello_received:
                raise ProtocolError("second HELLO")
            info = _load_json(frame.payload, "HELLO")
            if info.get("protocol") != PROTOCOL_VERSION:
                raise ProtocolError(
                    f"peer speaks channel protocol {info.get('protocol')!r}, this side {PROTOCOL_VERSION}",
                    hint="run the same motte version on the host and in the keep image",
                )
            if info.get("role") == self.role or info.get("role") not in ("host", "keep"):
                raise ProtocolError(f"peer claims role {info.get('role')!r}")
            window = info.get("window")
            if not isinstance(window, int) or isinstance(window, bool) or not 0 < window <= MAX_WINDOW:
                raise ProtocolError(f"HELLO with a bad window {window!r}")
            self._peer_window = window
            self._hello_received = True
            return Hello(info)
        if frame.type is FrameType.CONTROL:
            if not self._hello_received:
                raise ProtocolError("CONTROL frame before HELLO")
            message = _load_json(frame.payload, "CONTROL")
            if not isinstance(message.get("op"), str):
                raise ProtocolError("CONTROL message without an 'op' string")
            return Control(message)
        raise ProtocolError(f"{frame.type.name} frame on the control stream")

    def _handle_open(self, frame: Frame) -> Event:
        peer_parity = 0 if self.role == "host" else 1  # the keep opens even ids, the host odd
        if frame.stream % 2 != peer_parity:
            raise ProtocolError(f"peer opened stream {frame.stream} with this side's parity")
        if frame.stream in self._streams or frame.stream in self._closed_ids:
            raise ProtocolError(f"stream {frame.stream} opened twice")
        if len(self._streams) >= MAX_STREAMS:
            raise ProtocolError(f"too many open streams (limit {MAX_STREAMS})")
        meta = _load_json(frame.payload, "OPEN")
        if not isinstance(meta.get("kind"), str):
            raise ProtocolError(f"OPEN of stream {frame.stream} without a 'kind' string")
        # Each direction starts with the window its receiver announced in HELLO.
        self._streams[frame.stream] = _Stream(send_window=self._peer_window, recv_window=self.window)
        return StreamOpened(frame.stream, meta)

    def _forget_if_done(self, stream: int, state: _Stream) -> None:
        if state.local_eof and state.remote_eof:
            del self._streams[stream]
            self._closed_ids.add(stream)


def canonical_json(value: dict[str, Any]) -> bytes:
    """The one encoding of a JSON payload: keys sorted, no spaces, ASCII only (non-ASCII as
    ``\\uXXXX``), no NaN or infinity. Messages that are hashed carry no floats."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _dump_json(value: dict[str, Any]) -> bytes:
    data = canonical_json(value)
    if len(data) > MAX_CONTROL_PAYLOAD:
        raise ValueError(f"control message of {len(data)} bytes exceeds {MAX_CONTROL_PAYLOAD}")
    return data


def _load_json(payload: bytes, what: str) -> dict[str, Any]:
    if len(payload) > MAX_CONTROL_PAYLOAD:
        raise ProtocolError(f"{what} payload of {len(payload)} bytes exceeds {MAX_CONTROL_PAYLOAD}")
    try:
        value = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"{what} payload is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} payload is not a JSON object")
    return value
