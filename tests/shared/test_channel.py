"""The host <-> keep channel protocol, sans-I/O."""

from __future__ import annotations

import struct

import pytest
from tests.shared.channel_states import state_pair as pair

from motte.shared.channel import (
    HEADER,
    MAX_PAYLOAD,
    ChannelState,
    Control,
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
    encode_frame,
)


def test_frames_round_trip_through_the_decoder_in_any_split() -> None:
    frames = [
        Frame(0, FrameType.CONTROL, b'{"op":"x"}'), Frame(3, FrameType.DATA, b"a" * 1000), Frame(3, FrameType.EOF)
    ]
    wire = b"".join(encode_frame(f) for f in frames)
    for split in (1, 7, 10, 500, len(wire)):
        decoder = FrameDecoder()
        got: list[Frame] = []
        for i in range(0, len(wire), split):
            got += decoder.feed(wire[i : i + split])
        assert got == frames
        assert decoder.pending == 0


def test_a_large_frame_split_over_many_reads_arrives_whole() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, the largest frame
    frames = [Frame(5, FrameType.DATA, payload), Frame(5, FrameType.DATA, b"tail"), Frame(5, FrameType.EOF)]
    wire = b"".join(encode_frame(f) for f in frames)
    for split in (4099, 65536, 262144, 262144 + 7):
        decoder = FrameDecoder()
        got: list[Frame] = []
        fed = 0
        for i in range(0, len(wire), split):
            piece = bytearray(wire[i : i + split])  # a reused receive buffer: changed after feed
            got += decoder.feed(piece)
            piece[:] = b"\xff" * len(piece)
            fed += split
            if fed < len(payload):
                assert decoder.pending == min(fed, len(wire))
        assert got == frames
        assert decoder.pending == 0


def test_streams_carry_data_eof_and_control() -> None:
    host, keep = pair()
    stream = host.open_stream("stdin", fd=0)
    assert stream % 2 == 1  # the host opens odd ids
    host.send_data(stream, b"hello")
    host.send_eof(stream)
    host.send_control("launch", value=1)
    events = keep.receive(host.outgoing_bytes())
    assert events == [
        StreamOpened(stream, {"kind": "stdin", "fd": 0}),
        Data(stream, b"hello"),
        StreamEnded(stream),
        Control({"op": "launch", "value": 1}, len(b'{"op":"launch","value":1}')),
    ]
    assert keep.open_stream("out") % 2 == 0  # the keep opens even ids


def test_credit_bounds_what_a_sender_may_queue_and_is_returned_by_the_reader() -> None:
    host, keep = pair(window=1000)
    stream = host.open_stream("stdin")
    assert host.send_data(stream, b"x" * 5000) == 1000  # only the window is taken
    assert host.send_data(stream, b"x") == 0
    keep.receive(host.outgoing_bytes())
    assert not keep.consumed(stream, 200)  # credit goes back a quarter of the window at a time
    assert keep.outgoing_bytes() == b""
    assert keep.consumed(stream, 400)
    (event,) = host.receive(keep.outgoing_bytes())
    assert event == CreditGranted(stream, 600)  # no more than the window: it cannot grow
    assert host.send_data(stream, b"y" * 700) == 600


def test_a_peer_that_ignores_credit_breaks_the_protocol() -> None:
    host, keep = pair(window=100)
    stream = host.open_stream("stdin")
    keep.receive(host.outgoing_bytes())
    rogue = encode_frame(Frame(stream, FrameType.DATA, b"z" * 101))
    with pytest.raises(ProtocolError, match="credit"):
        keep.receive(rogue)


def test_a_frame_for_an_unknown_stream_is_refused_without_ending_the_channel() -> None:
    host, keep = pair()
    (event,) = keep.receive(encode_frame(Frame(99, FrameType.DATA, b"?")))
    assert event == StreamRefused(99, FrameType.DATA)
    (reset,) = FrameDecoder().feed(keep.outgoing_bytes())
    assert reset == Frame(99, FrameType.RESET, b"unknown stream")
    assert host.receive(encode_frame(reset)) == []  # a RESET for a stream one never had is ignored
    stream = host.open_stream("stdin")  # the channel still works
    host.send_data(stream, b"ok")
    assert keep.receive(host.outgoing_bytes())[1] == Data(stream, b"ok")


def test_reset_aborts_a_stream() -> None:
    host, keep = pair()
    stream = host.open_stream("conn")
    keep.receive(host.outgoing_bytes())
    keep.reset_stream(stream, "EPIPE")
    assert host.receive(keep.outgoing_bytes()) == [StreamReset(stream, "EPIPE")]
    with pytest.raises(ProtocolError):
        host.send_data(stream, b"late")


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (HEADER.pack(1, FrameType.DATA, 0, MAX_PAYLOAD + 1), "exceeds the maximum"),
        (HEADER.pack(0, 99, 0, 0), "unknown frame type"),
        (HEADER.pack(0, FrameType.CONTROL, 1, 0), "flags"),
        (encode_frame(Frame(0, FrameType.CONTROL, b"not json")), "not JSON"),
        (encode_frame(Frame(0, FrameType.CONTROL, b"[1]")), "not a JSON object"),
        (encode_frame(Frame(0, FrameType.HELLO, b'{"protocol":1,"role":"keep","window":1}')), "second HELLO"),
    ],
)
def test_malformed_frames_raise_protocol_errors(wire: bytes, reason: str) -> None:
    _, keep = pair()
    with pytest.raises(ProtocolError, match=reason):
        keep.receive(wire)


def test_a_short_credit_frame_is_refused() -> None:
    host, keep = pair()
    stream = host.open_stream("x")
    keep.receive(host.outgoing_bytes())
    with pytest.raises(ProtocolError, match="4 bytes"):
        keep.receive(encode_frame(Frame(stream, FrameType.CREDIT, b"\0\0")))


def test_a_peer_of_another_protocol_version_is_refused_with_a_hint() -> None:
    keep = ChannelState("keep")
    with pytest.raises(ProtocolError, match="protocol 2") as info:
        keep.receive(encode_frame(Frame(0, FrameType.HELLO, b'{"protocol":2,"role":"host","window":10}')))
    assert info.value.hint and "same motte version" in info.value.hint


def test_data_before_hello_is_refused() -> None:
    keep = ChannelState("keep")
    with pytest.raises(ProtocolError, match="before HELLO"):
        keep.receive(encode_frame(Frame(1, FrameType.OPEN, b'{"kind":"x"}')))


def test_credit_payload_is_a_big_endian_u32() -> None:
    host, keep = pair()
    stream = host.open_stream("x")
    host.send_data(stream, b"x" * 0x4000)
    keep.receive(host.outgoing_bytes())
    keep.consumed(stream, 0x4000)
    wire = keep.outgoing_bytes()
    assert wire[HEADER.size :] == struct.pack("!I", 0x8000)  # what was taken, and as much again
