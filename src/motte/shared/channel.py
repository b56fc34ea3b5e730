"""The host <-> keep channel protocol, sans-I/O.

One byte stream (a socketpair for ``nil``, a virtio serial port for VM keeps) carries frames::

    +-----------+--------+--------+-------------+----------------+
    | stream u32| type u8| flags u8| length u32 | payload        |
    +-----------+--------+--------+-------------+----------------+

Stream 0 is the control stream (HELLO and CONTROL frames, JSON payloads; the CONTROL messages and
their order are in :mod:`motte.shared.control`). Other streams carry
bytes (the workload image, stdio, network connections). The side that opens a stream picks its
id: the host uses odd ids, the keep even ones, so both can open streams without a race.

Flow control is per stream and credit based: a sender may have at most the credit its receiver
granted in flight; the receiver returns credit (CREDIT frames) as its consumer reads. A stream
starts with a small credit (the ``window`` its receiver announced in HELLO) and grows, up to the
receiver's per-stream window, only while its consumer reads and the receiver's budget for buffered
data has room. So a slow reader can make neither side buffer without bound, per stream or in
total, and a stream its consumer reads never stalls for want of budget.

Stream ids are not remembered once closed: each side opens ids in increasing order (wrapping
around after 2^31), so a frame for a closed stream is recognised by its id alone.

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
_CREDIT_FORMAT = struct.Struct("!I")
MAX_PAYLOAD = 1 << 20  # one frame carries at most 1 MiB
MAX_CONTROL_PAYLOAD = MAX_PAYLOAD  # a launch carries CA bundles of up to 128 KiB each
MAX_STREAM_ID = (1 << 31) - 1
MAX_STREAMS = 4096  # open streams per side at once
INITIAL_WINDOW = 16 << 10  # the credit every stream starts with (announced in HELLO), in bytes
DEFAULT_WINDOW = 1 << 20  # the credit a stream may grow to while its consumer reads
MAX_WINDOW = 64 << 20
MAX_REFUSED = MAX_STREAMS  # frames for streams that never existed, refused before the peer is cut off
CONTROL_STREAM = 0
#: What one side may buffer of received stream data in total (see :func:`buffer_budget`).
MIN_BUFFER_BUDGET = 2 << 20
MAX_BUFFER_BUDGET = 32 << 20
DEFAULT_BUFFER_BUDGET = MAX_BUFFER_BUDGET

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
# Module constants for the per-frame code: an enum member's attribute lookup costs ten times more.
_OPEN, _DATA, _EOF, _RESET, _CREDIT = FrameType.OPEN, FrameType.DATA, FrameType.EOF, FrameType.RESET, FrameType.CREDIT


class ProtocolError(MotteError):
    """The peer broke the channel protocol (malformed or out-of-order frame)."""


# Records are NamedTuples, not dataclasses: this module is on the keep's start-up path, and a
# dataclass costs about 0.5 ms to define, a NamedTuple a fifth of that.


class Frame(NamedTuple):
    stream: int
    type: FrameType
    payload: bytes = b""
    flags: int = 0


def buffer_budget(memory_limit: int) -> int:
    """The bytes of received stream data one side of a keep's channel may buffer in total: an
    eighth of the keep's memory limit, within 2 and 32 MiB (the keep's and the host's side each)."""
    return max(MIN_BUFFER_BUDGET, min(memory_limit // 8, MAX_BUFFER_BUDGET))


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
        return [Frame(stream, frame_type, payload) for stream, frame_type, payload in self.split(data)]

    def split(self, data: bytes) -> list[tuple[int, FrameType, bytes]]:
        """:meth:`feed`, giving each frame as a plain (stream, type, payload) tuple: the channel's
        own receiving does not make a Frame of each."""
        if type(data) is not bytes:
            data = bytes(data)  # pieces of it are kept: they must not change under us
        frames: list[tuple[int, FrameType, bytes]] = []
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
                frames.append((stream, frame_type, b"".join(self._pieces)))
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
                frames.append((stream, frame_type, data[offset : offset + length]))
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
    def idle(self) -> bool:
        """No partial frame is held: the next byte fed starts a frame."""
        return not self._head and self._frame is None

    @property
    def pending(self) -> int:
        """Bytes held of a frame not yet complete."""
        return len(self._head) + sum(len(piece) for piece in self._pieces) + (HEADER_SIZE if self._frame else 0)


# ---- events ---------------------------------------------------------------------------------


class Hello(NamedTuple):
    info: dict[str, Any]


class Control(NamedTuple):
    message: dict[str, Any]
    size: int  # the encoded message's length: what holding it unread costs


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
    __slots__ = ("limit", "local_eof", "recv_window", "remote_eof", "send_window", "unacked")

    def __init__(self, send_window: int, recv_window: int):
        self.send_window = send_window  # bytes this side may still send
        self.recv_window = recv_window  # bytes the peer may still send
        # What this side has committed to the stream: the peer's credit, plus what arrived and
        # the consumer has not taken yet, plus what it took and was not yet granted again.
        self.limit = recv_window
        self.unacked = 0  # bytes consumed and not yet granted again
        self.local_eof = False
        self.remote_eof = False


class ChannelState:
    """One side of the channel. Feed it received bytes; collect bytes to send with ``outgoing``.

    ``window`` is the credit a stream may grow to. ``budget`` bounds what all streams together
    hold (the credit the peer has, plus what arrived and the consumers have not taken): a stream
    grows beyond its initial credit only while the total is within it. Every open stream keeps its
    initial credit, so the total is at most ``budget`` plus the initial credit of each open stream.
    """

    def __init__(self, role: Role, window: int = DEFAULT_WINDOW, budget: int = DEFAULT_BUFFER_BUDGET):
        if not 0 < window <= MAX_WINDOW:
            raise ValueError("window out of range")
        self.role = role
        self.window = window
        self.initial_window = min(window, INITIAL_WINDOW)
        self.budget = budget
        self.committed = 0  # the limits of all open streams
        self._decoder = FrameDecoder()
        self._out: list[bytes | memoryview] = []
        self._streams: dict[int, _Stream] = {}
        self._first_id = 1 if role == "host" else 2
        self._next_id = self._first_id
        self._ids_wrapped = False  # this side's ids went round: any id of its parity may have been used
        self._peer_highest = 0  # the highest id the peer opened; its ids below are used (or skipped)
        self._refused = 0  # frames for streams that never existed
        self._hello_sent = False
        self._hello_received = False
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
        hello = {"protocol": PROTOCOL_VERSION, "role": self.role, "window": self.initial_window, **info}
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
        while stream > MAX_STREAM_ID or stream in self._streams:
            if stream > MAX_STREAM_ID:
                # Round again. An id is free once closed here: the peer has then seen its end
                # (or will, before this OPEN), and a late frame of its old use would have to
                # trail 2^30 streams behind.
                stream = self._first_id
                self._ids_wrapped = True
            else:
                stream += 2
        self._next_id = stream + 2
        self._add_stream(stream)
        self._emit(stream, FrameType.OPEN, _dump_json({"kind": kind, **meta}))
        return stream

    def _add_stream(self, stream: int) -> None:
        # Each direction starts with the credit its receiver announced in HELLO.
        self._streams[stream] = _Stream(send_window=self._peer_window, recv_window=self.initial_window)
        self.committed += self.initial_window

    def _drop_stream(self, stream: int, state: _Stream) -> None:
        del self._streams[stream]
        self.committed -= state.limit

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
        # Payloads go out as (views of) the caller's buffer: the caller must not reuse it.
        if count == len(data) and count <= MAX_PAYLOAD:  # the common case: one frame of all of it
            if count:
                self._out += (HEADER.pack(stream, _DATA, 0, count), data)
        else:
            view = memoryview(data)
            for offset in range(0, count, MAX_PAYLOAD):
                self._emit(stream, _DATA, view[offset : min(count, offset + MAX_PAYLOAD)])
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
        state = self._streams.get(stream)
        if state is not None:
            self._drop_stream(stream, state)
            self._emit(stream, FrameType.RESET, reason.encode()[:1024])

    def consumed(self, stream: int, count: int) -> bool:
        """The local consumer took ``count`` bytes of ``stream``: grant them again, once a quarter
        of the stream's credit is due (one CREDIT frame per quarter, not per read), with more on
        top while the stream is below its window and the budget has room. True if a CREDIT
        frame is now to be sent."""
        state = self._streams.get(stream)
        if state is None or state.remote_eof:
            return False
        state.unacked += count
        if state.unacked < state.limit >> 2:
            return False
        grant, state.unacked = state.unacked, 0
        growth = min(state.limit, self.window - state.limit, self.budget - self.committed)
        if growth > 0:  # a stream that is read grows (doubling), while the budget allows
            state.limit += growth
            self.committed += growth
            grant += growth
        state.recv_window += grant
        self._emit(stream, _CREDIT, _CREDIT_FORMAT.pack(grant))
        return True

    # ---- receiving ----

    def receive_data(self, data: bytes) -> tuple[int, bytes] | None:
        """The common case of :meth:`receive`, without its events: if ``data`` is one whole DATA
        frame on an open stream within the stream's credit (and no partial frame is held), take it
        and return its (stream, payload), as a :class:`Data` event would give them. Otherwise take
        nothing and return None: :meth:`receive` then takes ``data``, and judges it."""
        if len(data) < HEADER_SIZE or not self._decoder.idle:
            return None
        stream, kind, flags, length = HEADER.unpack_from(data)
        if kind != _DATA or flags or len(data) != HEADER_SIZE + length or length > MAX_PAYLOAD:
            return None
        state = self._streams.get(stream)
        if state is None or state.remote_eof or length > state.recv_window:
            return None
        state.recv_window -= length
        return stream, data[HEADER_SIZE:]

    def receive(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        for stream, frame_type, payload in self._decoder.split(data):
            event = self._handle(stream, frame_type, payload)
            if event is not None:
                events.append(event)
        return events

    def _handle(self, stream: int, frame_type: FrameType, payload: bytes) -> Event | None:
        """The event one frame makes, if any (a plain function, not a generator: it runs per frame)."""
        state = self._streams.get(stream)  # (never stream 0; and none is open before HELLO)
        if state is not None and frame_type is _DATA:  # the common case first
            if state.remote_eof:
                raise ProtocolError(f"DATA on stream {stream} after EOF")
            if len(payload) > state.recv_window:
                raise ProtocolError(
                    f"stream {stream}: peer sent {len(payload)} bytes with only {state.recv_window} bytes of credit"
                )
            state.recv_window -= len(payload)
            return Data(stream, payload)
        if stream == CONTROL_STREAM:
            return self._handle_control(frame_type, payload)
        if not self._hello_received:
            raise ProtocolError(f"{frame_type.name} frame before HELLO")
        if frame_type is _OPEN:
            return self._handle_open(stream, payload)
        if state is None:
            return self._refuse(stream, frame_type)
        if frame_type is _EOF:
            if payload:
                raise ProtocolError("EOF frame with a payload")
            state.remote_eof = True
            self._forget_if_done(stream, state)
            return StreamEnded(stream)
        if frame_type is _RESET:
            self._drop_stream(stream, state)
            return StreamReset(stream, payload.decode("utf-8", "replace"))
        if frame_type is _CREDIT:
            if len(payload) != 4:
                raise ProtocolError("CREDIT frame must carry 4 bytes")
            (count,) = _CREDIT_FORMAT.unpack(payload)
            if state.send_window + count > MAX_WINDOW:
                raise ProtocolError(f"stream {stream}: credit beyond {MAX_WINDOW} bytes")
            state.send_window += count
            return CreditGranted(stream, state.send_window)
        raise ProtocolError(f"{frame_type.name} frame on data stream {stream}")

    def _handle_control(self, frame_type: FrameType, payload: bytes) -> Event:
        if frame_type is FrameType.HELLO:
            if self._hello_received:
                raise ProtocolError("second HELLO")
            info = _load_json(payload, "HELLO")
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
        if frame_type is FrameType.CONTROL:
            if not self._hello_received:
                raise ProtocolError("CONTROL frame before HELLO")
            message = _load_json(payload, "CONTROL")
            if not isinstance(message.get("op"), str):
                raise ProtocolError("CONTROL message without an 'op' string")
            return Control(message, len(payload))
        raise ProtocolError(f"{frame_type.name} frame on the control stream")

    def _handle_open(self, stream: int, payload: bytes) -> Event:
        if stream % 2 == self._first_id % 2:  # the keep opens even ids, the host odd
            raise ProtocolError(f"peer opened stream {stream} with this side's parity")
        if stream in self._streams:
            raise ProtocolError(f"stream {stream} opened twice")
        if len(self._streams) >= MAX_STREAMS:
            raise ProtocolError(f"too many open streams (limit {MAX_STREAMS})")
        meta = _load_json(payload, "OPEN")
        if not isinstance(meta.get("kind"), str):
            raise ProtocolError(f"OPEN of stream {stream} without a 'kind' string")
        self._peer_highest = max(self._peer_highest, stream)
        self._add_stream(stream)
        return StreamOpened(stream, meta)

    def _refuse(self, stream: int, frame_type: FrameType) -> Event | None:
        """A frame for a stream that is not open. Late frames on a closed stream are normal
        (crossing RESET/EOF) and dropped; a stream that never existed gets a RESET. Neither ends
        the channel, but a peer that keeps sending on streams that never existed is cut off."""
        if frame_type is _RESET or frame_type is _CREDIT:
            return None
        if stream % 2 == self._first_id % 2:
            existed = self._ids_wrapped or stream < self._next_id
        else:
            existed = stream <= self._peer_highest
        if existed:
            return None
        self._refused += 1
        if self._refused > MAX_REFUSED:
            raise ProtocolError(f"the peer sent frames on more than {MAX_REFUSED} streams that never existed")
        self._emit(stream, _RESET, b"unknown stream")
        return StreamRefused(stream, frame_type)

    def _forget_if_done(self, stream: int, state: _Stream) -> None:
        if state.local_eof and state.remote_eof:
            self._drop_stream(stream, state)


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
    # (No length check here: the decoder bounds every payload by MAX_PAYLOAD, which is MAX_CONTROL_PAYLOAD.)
    try:
        value = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # (a UnicodeDecodeError is a ValueError)
        raise ProtocolError(f"{what} payload is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} payload is not a JSON object")
    return value
