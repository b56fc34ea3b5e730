"""What an endpoint costs in wake-ups: its reader thread sleeps through the peer's reads, and a
thread blocked on one stream sleeps through the others' frames."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from motte.shared.endpoint import Endpoint
from motte.shared.errors import MotteError
from motte.shared.transport import SocketTransport


@contextmanager
def connected() -> Iterator[tuple[Endpoint, Endpoint]]:
    """A host endpoint and a keep endpoint (reading when waiting) on a real socketpair, past HELLO."""
    a, b = socket.socketpair()
    host = Endpoint(SocketTransport(a), "host").start()
    keep = Endpoint(SocketTransport(b), "keep", read_when_waiting=True).start()
    try:
        for side in (host, keep):
            side.send_hello()
        for side in (host, keep):
            side.await_hello(5)
        yield host, keep
    finally:
        host.close()
        keep.close()


def _voluntary_switches(thread: threading.Thread) -> int:
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    for line in status.splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in /proc status")


@pytest.fixture
def host_and_peer() -> Iterator[tuple[Endpoint, socket.socket]]:
    """A host endpoint on one end of a real socketpair; the other end is read by the test."""
    a, b = socket.socketpair()
    host = Endpoint(SocketTransport(a), "host", window=1 << 20).start()
    host.send_hello()
    yield host, b
    host.close()
    b.close()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc to count a thread's wake-ups")
def test_the_reader_thread_sleeps_while_the_peer_reads(host_and_peer: tuple[Endpoint, socket.socket]) -> None:
    # A thread blocked in recv() on a Unix socket is also woken whenever the peer reads from the
    # other end (the kernel reports "writable" on the same wait queue). The reader thread waits in
    # poll() for input only, so the peer's reads do not wake it: each wake-up would cost the peer
    # a cross-CPU interrupt on every message.
    host, peer = host_and_peer
    reader = host._reader
    time.sleep(0.1)  # the reader thread is blocked, waiting for the first byte from the peer
    before = _voluntary_switches(reader)
    for _ in range(200):
        host.send_control("ping")  # sent by this thread; the peer takes each message at once
        peer.recv(4096)
    woken = _voluntary_switches(reader) - before
    assert woken <= 5, f"the reader thread woke {woken} times for 200 reads by the peer"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc to count a thread's wake-ups")
def test_a_thread_blocked_on_one_stream_sleeps_through_the_others() -> None:
    # The host has a thread per served directory, output pumps and a control loop, each blocked on
    # its own stream: a frame for one stream must wake its thread only.
    with connected() as (host, keep):
        host.expect_opens("quiet", "busy")
        quiet, busy = keep.open_stream("quiet"), keep.open_stream("busy")
        opened = dict((meta["kind"], stream) for stream, meta in (host.accept_stream(5), host.accept_stream(5)))
        got: list[bytes] = []
        sleeper = threading.Thread(target=lambda: got.append(host.read(opened["quiet"], 100, timeout=30)))
        sleeper.start()
        time.sleep(0.1)  # blocked now
        before = _voluntary_switches(sleeper)
        for index in range(200):
            keep.write(busy, b"frame %d" % index)
            assert host.read(opened["busy"], 100, timeout=5) == b"frame %d" % index
        woken = _voluntary_switches(sleeper) - before
        keep.write(quiet, b"at last")
        sleeper.join(5)
        assert got == [b"at last"]
        assert woken <= 5, f"a thread blocked on another stream woke {woken} times for 200 frames"


def test_reads_blocked_on_their_streams_end_when_the_channel_closes() -> None:
    with connected() as (host, keep):
        host.expect_opens("one", "two")
        keep.open_stream("one")
        keep.open_stream("two")
        streams = [host.accept_stream(5)[0], host.accept_stream(5)[0]]
        outcomes: list[str] = []

        def reader(stream: int) -> None:
            try:
                host.read(stream, 100, timeout=30)
                outcomes.append("data")
            except MotteError as exc:
                outcomes.append(type(exc).__name__)

        threads = [threading.Thread(target=reader, args=(stream,)) for stream in streams]
        for thread in threads:
            thread.start()
        time.sleep(0.1)  # both blocked, each on its own stream
        keep.close()  # the channel ends: both readers learn it at once, not after 30 s
        for thread in threads:
            thread.join(5)
            assert not thread.is_alive()
        assert outcomes == ["ChannelClosed", "ChannelClosed"]
