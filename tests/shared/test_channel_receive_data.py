"""ChannelState.receive_data, the common case of receiving: it takes what receive would take as
one Data event, and leaves everything else (and every judgement of it) to receive."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from tests.shared.channel_states import raw_frame
from tests.shared.channel_states import state_pair as pair

from motte.shared.channel import MAX_PAYLOAD, ChannelState, FrameType, ProtocolError


def opened(window: int = 100) -> tuple[ChannelState, ChannelState, int]:
    host, keep = pair(window=window)
    stream = host.open_stream("conn")
    keep.receive(host.outgoing_bytes())
    return host, keep, stream


def test_one_whole_data_frame_is_taken_as_receive_would_take_it() -> None:
    host, keep, stream = opened(window=1000)
    host.send_data(stream, b"request")
    assert keep.receive_data(host.outgoing_bytes()) == (stream, b"request")
    host.send_data(stream, b"x" * 993)  # the rest of the credit: the first frame counted
    assert keep.receive_data(host.outgoing_bytes()) == (stream, b"x" * 993)
    host.send_data(stream, b"y" * 101)  # beyond the credit: no longer in the common case
    assert keep.receive_data(raw_frame(stream, FrameType.DATA, b"y")) is None


def two_frames(host: ChannelState, stream: int) -> bytes:
    host.send_data(stream, b"a")
    host.send_data(stream, b"b")
    return host.outgoing_bytes()


def control(host: ChannelState, stream: int) -> bytes:
    host.send_control("ping")
    return host.outgoing_bytes()


def eof(host: ChannelState, stream: int) -> bytes:
    host.send_eof(stream)
    return host.outgoing_bytes()


def unknown_stream(host: ChannelState, stream: int) -> bytes:
    return raw_frame(stream + 2, FrameType.DATA, b"?")


@pytest.mark.parametrize("make_wire", [two_frames, control, eof, unknown_stream])
def test_other_frames_are_left_to_receive(make_wire: Callable[[ChannelState, int], bytes]) -> None:
    host, keep, stream = opened()
    twin_host, twin, _ = opened()
    wire = make_wire(host, stream)
    assert make_wire(twin_host, stream) == wire
    assert keep.receive_data(wire) is None
    assert keep.receive(wire) == twin.receive(wire)  # as if receive_data had not looked
    assert keep.outgoing_bytes() == twin.outgoing_bytes()


def test_the_rest_of_a_partial_frame_is_left_to_receive() -> None:
    host, keep, stream = opened()
    host.send_data(stream, b"abc")
    wire = host.outgoing_bytes()
    assert keep.receive(wire[:-1]) == []
    assert keep.receive_data(wire[-1:]) is None
    assert keep.receive_data(wire) is None  # a whole frame, but the decoder holds part of one
    keep.receive(wire[-1:])


BROKEN = [raw_frame(1, FrameType.DATA, b"z" * 101), raw_frame(1, FrameType.DATA, b"z", flags=1)]


@pytest.mark.parametrize("wire", BROKEN, ids=["beyond the credit", "unknown flags"])
def test_a_broken_frame_is_left_to_receive_to_reject(wire: bytes) -> None:
    _, keep, stream = opened()
    assert stream == 1
    assert keep.receive_data(wire) is None
    with pytest.raises(ProtocolError):
        keep.receive(wire)


def test_a_frame_longer_than_the_maximum_is_left_to_receive_to_reject() -> None:
    _, keep, stream = opened(window=8 * MAX_PAYLOAD)
    for _ in range(5):
        keep.consumed(stream, MAX_PAYLOAD)  # the stream's credit grows to several frames' length
    largest = raw_frame(stream, FrameType.DATA, b"z" * MAX_PAYLOAD)
    assert keep.receive_data(largest) == (stream, b"z" * MAX_PAYLOAD)
    assert keep.receive_data(largest) is not None  # (credit for more than one byte more is left)
    wire = raw_frame(stream, FrameType.DATA, b"z" * (MAX_PAYLOAD + 1))
    assert keep.receive_data(wire) is None
    with pytest.raises(ProtocolError, match="exceeds"):
        keep.receive(wire)
