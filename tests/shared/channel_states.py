"""Channel states for the sans-I/O tests: a connected pair, and frames a hostile peer may send."""

from __future__ import annotations

import json

from motte.shared.channel import HEADER, ChannelState, FrameType, Hello


def state_pair(window: int = 1 << 16, budget: int | None = None) -> tuple[ChannelState, ChannelState]:
    """A host state and a keep state past the HELLO exchange."""
    if budget is None:
        host, keep = ChannelState("host", window), ChannelState("keep", window)
    else:
        host, keep = ChannelState("host", window, budget), ChannelState("keep", window, budget)
    host.send_hello()
    keep.send_hello(backend="nil")
    assert isinstance(keep.receive(host.outgoing_bytes())[0], Hello)
    (hello,) = host.receive(keep.outgoing_bytes())
    assert isinstance(hello, Hello) and hello.info["backend"] == "nil"
    return host, keep


def raw_frame(stream: int, kind: int, payload: bytes = b"", *, flags: int = 0, length: int | None = None) -> bytes:
    """A frame as a peer may write it: any stream id, type, flags, and a length that may lie."""
    return HEADER.pack(stream, kind, flags, len(payload) if length is None else length) + payload


def open_frame(stream: int, kind: str = "x") -> bytes:
    return raw_frame(stream, FrameType.OPEN, json.dumps({"kind": kind}).encode())
