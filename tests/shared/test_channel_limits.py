"""Every limit of the channel protocol (shared/channel.py), one at a time: each test breaks one rule
and checks that exactly that rule catches it, so that removing any check fails a test here."""

from __future__ import annotations

import struct
import tracemalloc

import pytest
from tests.shared.channel_states import open_frame, raw_frame, state_pair

from motte.shared import channel
from motte.shared.channel import (
    HEADER_SIZE,
    INITIAL_WINDOW,
    MAX_CONTROL_PAYLOAD,
    MAX_PAYLOAD,
    MAX_REFUSED,
    MAX_STREAM_ID,
    MAX_STREAMS,
    MAX_WINDOW,
    ChannelState,
    CreditGranted,
    Data,
    Frame,
    FrameDecoder,
    FrameType,
    ProtocolError,
    StreamEnded,
    StreamOpened,
    StreamRefused,
    StreamReset,
    buffer_budget,
    encode_frame,
    encode_header,
)

# ---- frame bounds (the decoder) ----


def test_a_stream_id_beyond_the_maximum_is_refused() -> None:
    assert FrameDecoder().feed(raw_frame(MAX_STREAM_ID, FrameType.EOF)) == [Frame(MAX_STREAM_ID, FrameType.EOF)]
    for stream in (MAX_STREAM_ID + 1, 0xFFFFFFFF):
        with pytest.raises(ProtocolError, match="beyond the maximum"):
            FrameDecoder().feed(raw_frame(stream, FrameType.EOF))


def test_a_giant_length_is_refused_at_the_header_before_any_payload() -> None:
    assert FrameDecoder().feed(raw_frame(1, FrameType.DATA, length=MAX_PAYLOAD)) == []  # the largest: waits
    for length in (MAX_PAYLOAD + 1, 0xFFFFFFFF):
        decoder = FrameDecoder()
        with pytest.raises(ProtocolError, match="exceeds the maximum"):
            decoder.feed(raw_frame(1, FrameType.DATA, length=length)[:HEADER_SIZE])


def test_a_header_split_over_reads_is_checked_too() -> None:
    decoder = FrameDecoder()
    header = raw_frame(1, FrameType.DATA, length=MAX_PAYLOAD + 1)
    assert decoder.feed(header[:5]) == []
    with pytest.raises(ProtocolError, match="exceeds the maximum"):
        decoder.feed(header[5:])


@pytest.mark.parametrize("kind", [0, 8, 255])
def test_an_unknown_frame_type_is_refused(kind: int) -> None:
    with pytest.raises(ProtocolError, match="unknown frame type"):
        FrameDecoder().feed(raw_frame(1, kind))


@pytest.mark.parametrize("flags", [1, 0x80, 0xFF])
def test_frame_flags_must_be_zero(flags: int) -> None:
    with pytest.raises(ProtocolError, match="flags"):
        FrameDecoder().feed(raw_frame(1, FrameType.EOF, flags=flags))


def test_the_sender_cannot_encode_out_of_range_frames() -> None:
    assert len(encode_header(MAX_STREAM_ID, FrameType.DATA, MAX_PAYLOAD)) == HEADER_SIZE
    for stream in (-1, MAX_STREAM_ID + 1):
        with pytest.raises(ValueError, match="out of range"):
            encode_header(stream, FrameType.DATA, 0)
    with pytest.raises(ValueError, match="exceeds"):
        encode_header(1, FrameType.DATA, MAX_PAYLOAD + 1)


# ---- the HELLO exchange and the control stream ----


def test_nothing_but_hello_comes_first() -> None:
    for frame in (raw_frame(0, FrameType.CONTROL, b'{"op":"x"}'), open_frame(1), raw_frame(1, FrameType.DATA, b"x")):
        with pytest.raises(ProtocolError, match="before HELLO"):
            ChannelState("keep").receive(frame)


@pytest.mark.parametrize(
    ("hello", "reason"),
    [
        ({"protocol": 1, "role": "keep", "window": 1}, "role"),  # the same role as this side
        ({"protocol": 1, "role": "tenant", "window": 1}, "role"),
        ({"protocol": 1, "window": 1}, "role"),
        ({"protocol": 1, "role": "host"}, "bad window"),
        ({"protocol": 1, "role": "host", "window": 0}, "bad window"),
        ({"protocol": 1, "role": "host", "window": MAX_WINDOW + 1}, "bad window"),
        ({"protocol": 1, "role": "host", "window": True}, "bad window"),
        ({"protocol": 1, "role": "host", "window": 1.5}, "bad window"),
        ({"protocol": 0, "role": "host", "window": 1}, "protocol 0"),
    ],
)
def test_a_bad_hello_is_refused(hello: dict[str, object], reason: str) -> None:
    keep = ChannelState("keep")
    with pytest.raises(ProtocolError, match=reason):
        keep.receive(raw_frame(0, FrameType.HELLO, channel.canonical_json(hello)))


def test_the_largest_window_a_hello_may_announce_is_taken() -> None:
    keep = ChannelState("keep")
    (hello,) = keep.receive(raw_frame(0, FrameType.HELLO, b'{"protocol":1,"role":"host","window":%d}' % MAX_WINDOW))
    assert hello.info["window"] == MAX_WINDOW


def test_a_second_hello_is_refused() -> None:
    _, keep = state_pair()
    with pytest.raises(ProtocolError, match="second HELLO"):
        keep.receive(raw_frame(0, FrameType.HELLO, b'{"protocol":1,"role":"host","window":1}'))


@pytest.mark.parametrize("payload", [b'{"op":1}', b"{}", b'{"opx":"a"}'])
def test_a_control_message_needs_an_op_string(payload: bytes) -> None:
    _, keep = state_pair()
    with pytest.raises(ProtocolError, match="'op' string"):
        keep.receive(raw_frame(0, FrameType.CONTROL, payload))


@pytest.mark.parametrize(
    ("payload", "reason"),
    [(b"\xff\xfe", "not JSON"), (b"[" * 100_000 + b"]" * 100_000, "not JSON"), (b"3", "not a JSON object")],
)
def test_control_payloads_must_be_json_objects(payload: bytes, reason: str) -> None:
    _, keep = state_pair()
    with pytest.raises(ProtocolError, match=reason):
        keep.receive(raw_frame(0, FrameType.CONTROL, payload))


@pytest.mark.parametrize("kind", [FrameType.OPEN, FrameType.DATA, FrameType.EOF, FrameType.RESET, FrameType.CREDIT])
def test_the_control_stream_carries_hello_and_control_only(kind: FrameType) -> None:
    _, keep = state_pair()
    with pytest.raises(ProtocolError, match="control stream"):
        keep.receive(raw_frame(0, kind, b"{}"))


@pytest.mark.parametrize("kind", [FrameType.HELLO, FrameType.CONTROL])
def test_a_data_stream_carries_no_hello_or_control(kind: FrameType) -> None:
    _, keep = state_pair()
    keep.receive(open_frame(1))
    with pytest.raises(ProtocolError, match="on data stream 1"):
        keep.receive(raw_frame(1, kind, b'{"op":"x"}'))


def test_a_control_message_this_side_would_send_is_bounded() -> None:
    host, _ = state_pair()
    host.send_control("big", blob="x" * (MAX_CONTROL_PAYLOAD - 100))
    with pytest.raises(ValueError, match="control message of"):
        host.send_control("big", blob="x" * MAX_CONTROL_PAYLOAD)


# ---- opening streams ----


def test_a_peer_opens_only_ids_of_its_own_parity() -> None:
    host, keep = state_pair()
    with pytest.raises(ProtocolError, match="parity"):
        keep.receive(open_frame(2))  # the host opens odd ids
    with pytest.raises(ProtocolError, match="parity"):
        host.receive(open_frame(1))  # the keep opens even ids


def test_a_stream_that_is_open_cannot_be_opened_again() -> None:
    _, keep = state_pair()
    keep.receive(open_frame(5))
    with pytest.raises(ProtocolError, match="opened twice"):
        keep.receive(open_frame(5))


def test_a_closed_id_may_be_opened_again() -> None:
    # Closed ids are not remembered (that cost memory per connection, for ever): the opener
    # reuses an id only after going round all 2^30 of its ids, and an OPEN comes after every
    # frame of the id's earlier use.
    _, keep = state_pair()
    keep.receive(open_frame(5) + raw_frame(5, FrameType.RESET))
    assert keep.receive(open_frame(5)) == [StreamOpened(5, {"kind": "x"})]


@pytest.mark.parametrize("payload", [b'{"kind":7}', b'{"fd":3}', b"[]", b"nope"])
def test_an_open_needs_a_kind_string(payload: bytes) -> None:
    _, keep = state_pair()
    with pytest.raises(ProtocolError, match=r"kind|JSON"):
        keep.receive(raw_frame(1, FrameType.OPEN, payload))


def test_a_peer_may_have_at_most_max_streams_open() -> None:
    _, keep = state_pair()
    keep.receive(b"".join(open_frame(2 * index + 1) for index in range(MAX_STREAMS)))
    with pytest.raises(ProtocolError, match="too many open streams"):
        keep.receive(open_frame(2 * MAX_STREAMS + 1))


def test_this_side_may_have_at_most_max_streams_open() -> None:
    host, _ = state_pair()
    for _ in range(MAX_STREAMS):
        host.open_stream("x")
    with pytest.raises(ProtocolError, match="too many open streams"):
        host.open_stream("x")


def test_no_stream_opens_before_the_hello_exchange() -> None:
    host = ChannelState("host")
    host.send_hello()
    with pytest.raises(ProtocolError, match="before the HELLO exchange"):
        host.open_stream("x")


def test_a_window_out_of_range_is_refused() -> None:
    ChannelState("host", MAX_WINDOW)
    for window in (0, MAX_WINDOW + 1):
        with pytest.raises(ValueError, match="window"):
            ChannelState("host", window)


# ---- stream ids: not remembered, and reused after going round ----


def test_ids_go_round_and_a_listener_still_accepts_after_2_to_the_30_streams() -> None:
    host, keep = state_pair()
    host._next_id = MAX_STREAM_ID - 4  # as after 2^30 - 3 connections, each opened and closed
    long_lived = host.open_stream("accepted")  # MAX_STREAM_ID - 4: still open when the ids go round
    opened = [host.open_stream("accepted") for _ in range(2)]
    assert opened == [MAX_STREAM_ID - 2, MAX_STREAM_ID]
    keep.receive(host.outgoing_bytes())
    for stream in opened:
        host.reset_stream(stream, "closed")
    keep.receive(host.outgoing_bytes())
    again = [host.open_stream("accepted") for _ in range(3)]
    assert again == [1, 3, 5]
    events = keep.receive(host.outgoing_bytes())
    assert events == [StreamOpened(stream, {"kind": "accepted"}) for stream in again]
    host._next_id = long_lived
    assert host.open_stream("accepted") == long_lived + 2  # an id still open is skipped


def test_small_id_space_goes_round_many_times(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(channel, "MAX_STREAM_ID", 41)  # 21 host ids
    host, keep = state_pair()
    held = [host.open_stream("x") for _ in range(5)]  # stay open throughout: never reused
    for _ in range(200):
        stream = host.open_stream("x")
        assert stream not in held and stream <= 41
        host.send_data(stream, b"data")
        assert keep.receive(host.outgoing_bytes())[-1] == Data(stream, b"data")
        keep.reset_stream(stream, "done")
        assert host.receive(keep.outgoing_bytes()) == [StreamReset(stream, "done")]
    assert all(host.is_open(stream) and keep.is_open(stream) for stream in held)


def test_closed_streams_cost_no_memory() -> None:
    host, keep = state_pair()
    for _ in range(1000):  # warm up the allocator
        stream = host.open_stream("accepted")
        keep.receive(host.outgoing_bytes())
        keep.reset_stream(stream)
        host.receive(keep.outgoing_bytes())
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20_000):
            stream = host.open_stream("accepted")
            keep.receive(host.outgoing_bytes())
            keep.reset_stream(stream)
            host.receive(keep.outgoing_bytes())
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 16 << 10, f"20,000 closed streams kept {grown} bytes"
    assert host.committed == keep.committed == 0


# ---- frames for streams that are not open ----


def test_a_stream_that_never_existed_is_refused_each_time() -> None:
    _, keep = state_pair()
    for stream in (99, 4):  # one of the host's ids it never opened, and one of the keep's
        for _ in range(2):
            assert keep.receive(raw_frame(stream, FrameType.DATA, b"?")) == [StreamRefused(stream, FrameType.DATA)]
            assert FrameDecoder().feed(keep.outgoing_bytes()) == [Frame(stream, FrameType.RESET, b"unknown stream")]


@pytest.mark.parametrize("kind", [FrameType.RESET, FrameType.CREDIT])
def test_reset_and_credit_for_a_stream_that_never_existed_get_no_answer(kind: FrameType) -> None:
    _, keep = state_pair()
    assert keep.receive(raw_frame(99, kind, b"\0\0\0\1")) == []
    assert keep.outgoing_bytes() == b""


def test_late_frames_on_closed_streams_are_dropped_silently() -> None:
    host, keep = state_pair()
    keep.receive(open_frame(1))
    keep.reset_stream(1, "gone")
    mine = keep.open_stream("connect")
    host.receive(keep.outgoing_bytes())
    host.reset_stream(mine, "gone")
    keep.receive(host.outgoing_bytes())
    keep.outgoing_bytes()
    for stream in (1, mine):  # the host's, closed by the keep; the keep's, closed by the host
        for kind in (FrameType.DATA, FrameType.EOF):
            assert keep.receive(raw_frame(stream, kind, b"late" if kind is FrameType.DATA else b"")) == []
    assert keep.outgoing_bytes() == b""


def test_a_peer_that_keeps_writing_to_streams_that_never_existed_is_cut_off() -> None:
    _, keep = state_pair()
    keep.receive(b"".join(raw_frame(9, FrameType.EOF) for _ in range(MAX_REFUSED)))
    assert len(FrameDecoder().feed(keep.outgoing_bytes())) == MAX_REFUSED
    with pytest.raises(ProtocolError, match="never existed"):
        keep.receive(raw_frame(9, FrameType.EOF))


# ---- data and credit ----


def test_data_within_the_credit_is_taken_and_one_byte_more_is_refused() -> None:
    _, keep = state_pair(window=1 << 16)
    keep.receive(open_frame(1))
    assert keep.receive(raw_frame(1, FrameType.DATA, b"a" * (INITIAL_WINDOW - 1))) == [
        Data(1, b"a" * (INITIAL_WINDOW - 1))
    ]
    assert keep.receive(raw_frame(1, FrameType.DATA, b"b")) == [Data(1, b"b")]  # exactly the credit
    with pytest.raises(ProtocolError, match="only 0 bytes of credit"):
        keep.receive(raw_frame(1, FrameType.DATA, b"c"))


def test_data_after_eof_is_refused() -> None:
    _, keep = state_pair()
    assert keep.receive(open_frame(1) + raw_frame(1, FrameType.EOF)) == [StreamOpened(1, {"kind": "x"}),
                                                                          StreamEnded(1)]
    with pytest.raises(ProtocolError, match="after EOF"):
        keep.receive(raw_frame(1, FrameType.DATA, b"x"))


def test_an_eof_carries_no_payload() -> None:
    _, keep = state_pair()
    keep.receive(open_frame(1))
    with pytest.raises(ProtocolError, match="EOF frame with a payload"):
        keep.receive(raw_frame(1, FrameType.EOF, b"x"))


@pytest.mark.parametrize("payload", [b"", b"\0\0\0", b"\0\0\0\0\0"])
def test_a_credit_frame_carries_exactly_four_bytes(payload: bytes) -> None:
    host, _ = state_pair()
    stream = host.open_stream("x")
    with pytest.raises(ProtocolError, match="4 bytes"):
        host.receive(raw_frame(stream, FrameType.CREDIT, payload))


def test_credit_beyond_the_maximum_window_is_refused() -> None:
    host, _ = state_pair()
    stream = host.open_stream("x")
    room = MAX_WINDOW - host.send_window(stream)
    assert host.receive(raw_frame(stream, FrameType.CREDIT, struct.pack("!I", room))) == [
        CreditGranted(stream, MAX_WINDOW)
    ]
    with pytest.raises(ProtocolError, match="credit beyond"):
        host.receive(raw_frame(stream, FrameType.CREDIT, struct.pack("!I", 1)))
    _, keep = state_pair()
    keep.receive(open_frame(1))
    with pytest.raises(ProtocolError, match="credit beyond"):
        keep.receive(raw_frame(1, FrameType.CREDIT, b"\xff\xff\xff\xff"))  # a u32 that would wrap a C counter


def test_a_sender_sends_no_more_than_its_credit_and_splits_large_writes() -> None:
    host, keep = state_pair(window=4 << 20)
    stream = host.open_stream("x")
    keep.receive(host.outgoing_bytes())
    assert host.send_data(stream, b"x" * (INITIAL_WINDOW + 1)) == INITIAL_WINDOW
    assert host.send_data(stream, b"x") == 0
    keep.receive(host.outgoing_bytes())
    credit = INITIAL_WINDOW
    while credit < 4 << 20:  # the consumer reads it all: the stream's credit doubles, up to its window
        keep.consumed(stream, credit)
        host.receive(keep.outgoing_bytes())
        credit *= 2
        assert host.send_window(stream) == credit
        assert host.send_data(stream, b"y" * (8 << 20)) == credit
        frames = FrameDecoder().feed(host.outgoing_bytes())
        assert all(len(frame.payload) <= MAX_PAYLOAD for frame in frames)
        assert sum(len(frame.payload) for frame in frames) == credit
        keep.receive(b"".join(encode_frame(frame) for frame in frames))
    assert len(frames) == 4  # the 4 MiB window went out as four 1 MiB frames
    keep.consumed(stream, credit)
    host.receive(keep.outgoing_bytes())
    assert host.send_window(stream) == credit  # the window is reached: the credit grows no more


def test_no_send_on_a_stream_that_is_not_open_or_after_eof() -> None:
    host, _ = state_pair()
    with pytest.raises(ProtocolError, match="not open"):
        host.send_data(7, b"x")
    stream = host.open_stream("x")
    host.send_eof(stream)
    with pytest.raises(ProtocolError, match="after EOF"):
        host.send_data(stream, b"x")
    assert host.send_window(stream) == 0


def test_a_reset_reason_is_cut_to_1024_bytes() -> None:
    host, keep = state_pair()
    stream = host.open_stream("x")
    keep.receive(host.outgoing_bytes())
    keep.reset_stream(stream, "r" * 5000)
    assert host.receive(keep.outgoing_bytes()) == [StreamReset(stream, "r" * 1024)]


# ---- credit returned, and the budget for all streams together ----


def test_credit_returns_in_quarters_of_the_stream_credit() -> None:
    host, keep = state_pair(window=INITIAL_WINDOW)  # a window that cannot grow
    stream = host.open_stream("x")
    host.send_data(stream, b"x" * INITIAL_WINDOW)
    keep.receive(host.outgoing_bytes())
    quarter = INITIAL_WINDOW // 4
    assert not keep.consumed(stream, quarter - 1)
    assert keep.consumed(stream, 1)
    assert host.receive(keep.outgoing_bytes()) == [CreditGranted(stream, quarter)]


def test_a_stream_grows_only_while_read_and_only_within_the_budget() -> None:
    unit = INITIAL_WINDOW
    host, keep = state_pair(window=1 << 20, budget=4 * unit)
    first, second = host.open_stream("x"), host.open_stream("x")

    def read(stream: int, count: int) -> None:  # the host sends, the keep's consumer takes it all
        assert host.send_data(stream, b"r" * count) == count
        keep.receive(host.outgoing_bytes())
        keep.consumed(stream, count)
        host.receive(keep.outgoing_bytes())

    keep.receive(host.outgoing_bytes())
    assert keep.committed == 2 * unit
    read(first, unit)
    assert host.send_window(first) == 2 * unit  # read: its credit doubles, the budget has room
    read(first, 2 * unit)
    assert host.send_window(first) == 3 * unit and keep.committed == 4 * unit  # the budget's room only
    read(second, unit)
    assert host.send_window(second) == unit  # the budget is spent: no growth, but credit comes back
    keep.reset_stream(first)
    assert keep.committed == unit  # a closed stream gives its share back
    read(second, unit)
    assert host.send_window(second) == 2 * unit


def test_many_unread_streams_hold_their_initial_credit_only() -> None:
    host, keep = state_pair(window=1 << 20, budget=1 << 20)
    streams = [host.open_stream("accepted") for _ in range(200)]
    keep.receive(host.outgoing_bytes())
    for stream in streams:
        assert host.send_data(stream, b"z" * (2 << 20)) == INITIAL_WINDOW
    keep.receive(host.outgoing_bytes())
    assert keep.committed == 200 * INITIAL_WINDOW  # nothing was read: nothing grew


def test_credit_stops_at_the_peers_eof_and_on_unknown_streams() -> None:
    host, keep = state_pair()
    stream = host.open_stream("x")
    host.send_data(stream, b"x" * INITIAL_WINDOW)
    host.send_eof(stream)
    keep.receive(host.outgoing_bytes())
    assert not keep.consumed(stream, INITIAL_WINDOW)  # the host sends no more: no credit for it
    assert not keep.consumed(12345, INITIAL_WINDOW)
    assert keep.outgoing_bytes() == b""


def test_the_budget_follows_the_memory_limit() -> None:
    assert buffer_budget(64 << 20) == 8 << 20
    assert buffer_budget(1 << 20) == channel.MIN_BUFFER_BUDGET
    assert buffer_budget(1 << 40) == channel.MAX_BUFFER_BUDGET
