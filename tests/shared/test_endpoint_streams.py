"""The endpoint's support for many streams: routed opens, claimed streams, direct sends."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest

from motte.shared import netstreams
from motte.shared.channel_io import MAX_UNACCEPTED
from motte.shared.endpoint import Endpoint, StreamAborted


def _eventually(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_routed_opens_skip_the_accept_queue_and_may_be_refused(pair: tuple[Endpoint, Endpoint]) -> None:
    host, keep = pair
    early = host.open_stream("accepted", fd=3)  # before the route exists: waits in the accept queue
    host.send_control("marker")
    assert keep.recv_control(timeout=5) == {"op": "marker"}  # frames are ordered: the OPEN is in
    taken: list[tuple[int, dict[str, Any]]] = []

    def route(stream: int, meta: dict[str, Any]) -> str | None:
        if meta.get("fd") != 3:
            return "ECONNREFUSED: no such listener"
        taken.append((stream, meta))
        return None

    keep.route_opens("accepted", route)
    assert [s for s, _ in taken] == [early]  # handed over when the route was set up
    refused = host.open_stream("accepted", fd=9)
    other = host.open_stream("stdin", fd=0)
    assert _eventually(lambda: host.reset_reason(refused) is not None)
    assert host.reset_reason(refused) == "ECONNREFUSED: no such listener"
    with pytest.raises(StreamAborted):
        host.write(refused, b"x")
    assert keep.accept_stream(timeout=5) == (other, {"kind": "stdin", "fd": 0})  # unrouted kinds as before


def test_claimed_streams_go_to_the_observer_without_waking_waiters(pair: tuple[Endpoint, Endpoint]) -> None:
    host, keep = pair
    host.expect_opens("connect")
    claimed = keep.open_stream("connect", fd=3)
    plain = keep.open_stream("connect", fd=4)
    assert [host.accept_stream(timeout=5)[0] for _ in range(2)] == [claimed, plain]
    seen: list[int] = []
    inside: list[bytes | None] = []

    def observer(stream: int) -> None:
        if stream == 0:
            return  # the channel closed (at the end of the test)
        seen.append(stream)
        if keep.reset_reason(stream) is None:
            inside.append(keep.read_nowait(stream, 100))  # outside the endpoint's lock: may use it

    keep.observe(observer)
    keep.claim(claimed)
    host.write(claimed, b"for the observer")
    host.write(plain, b"for a reader")
    assert _eventually(lambda: inside == [b"for the observer"])
    assert seen == [claimed]
    assert keep.read(plain, 100, timeout=5) == b"for a reader"
    host.reset(claimed, netstreams.failure("ECONNREFUSED", "gone"))
    assert _eventually(lambda: len(seen) == 2)
    assert keep.reset_reason(claimed) == "ECONNREFUSED: gone"
    assert netstreams.failure_errno(keep.reset_reason(claimed)) == "ECONNREFUSED"


def test_direct_and_threaded_sends_keep_every_stream_in_order(pair: tuple[Endpoint, Endpoint]) -> None:
    # Several threads write at once, small and large: small writes usually go out directly from
    # the writing thread, large ones through the writer thread. No frame may overtake another.
    host, keep = pair
    streams = [host.open_stream("data", n=i) for i in range(6)]
    payloads = {s: os.urandom(300_000 + 7919 * i) for i, s in enumerate(streams)}

    def send(stream: int) -> None:
        data = payloads[stream]
        offset = 0
        size = 1
        while offset < len(data):
            host.write(stream, data[offset : offset + size])
            offset += size
            size = size * 3 % 70_000 + 1
        host.eof(stream)

    received: dict[int, bytearray] = {s: bytearray() for s in streams}

    def receive(stream: int) -> None:
        while chunk := keep.read(stream, 1 << 20, timeout=20):
            received[stream] += chunk

    threads = [threading.Thread(target=f, args=(s,)) for s in streams for f in (send, receive)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(bytes(received[s]) == payloads[s] for s in streams)
    assert host.flush(5)


def test_failure_reasons_name_an_errno() -> None:
    assert netstreams.failure("EHOSTUNREACH", "cannot resolve") == "EHOSTUNREACH: cannot resolve"
    assert netstreams.failure("EWHATEVER", "x") == "ECONNRESET: x"  # only known names pass
    assert netstreams.failure_errno("ETIMEDOUT: no answer") == "ETIMEDOUT"
    assert netstreams.failure_errno(netstreams.CLOSED) == "ECONNRESET"
    assert netstreams.failure_errno(None) == "ECONNRESET"
    assert netstreams.failure_errno("EVIL\0: text") == "ECONNRESET"


def test_a_host_refuses_streams_of_a_kind_it_does_not_expect(pair: tuple[Endpoint, Endpoint]) -> None:
    host, keep = pair
    host.route_opens("connect", lambda stream, meta: None)
    host.expect_opens("bench")
    unknown = [keep.open_stream("mystery", n=n) for n in range(500)]
    routed, expected = keep.open_stream("connect"), keep.open_stream("bench")
    for stream in unknown:
        with pytest.raises(StreamAborted, match="no stream of kind 'mystery' is expected"):
            keep.write(stream, b"x" * (1 << 20), deadline=time.monotonic() + 5)  # waits for credit, then the reset
    assert host.accept_stream(timeout=5) == (expected, {"kind": "bench"})
    keep.write(routed, b"taken")
    assert host.read(routed, 100, timeout=5) == b"taken"
    with host._lock:  # nothing is held for the refused streams
        assert set(host._inboxes) == {routed, expected}
        assert host._state.committed == 2 * host._state.initial_window


def test_a_keep_holds_a_bounded_queue_of_streams_nobody_accepted(pair: tuple[Endpoint, Endpoint]) -> None:
    host, keep = pair
    streams = [host.open_stream("wasm") for _ in range(MAX_UNACCEPTED + 1)]
    with pytest.raises(StreamAborted, match="wait to be accepted already"):
        host.write(streams[-1], b"x" * (1 << 20), deadline=time.monotonic() + 5)
    assert [keep.accept_stream(timeout=5)[0] for _ in range(MAX_UNACCEPTED)] == streams[:-1]
