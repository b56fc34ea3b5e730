"""An endpoint that reads when waiting (the keep's side): the waiting thread reads the transport
itself, the reader thread steps aside while anyone waits and takes over once nobody has."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from motte.shared.endpoint import READER_GRACE, Endpoint, Timeout
from motte.shared.transport import SocketTransport


class RecordingTransport(SocketTransport):
    """A real socket transport that notes which thread took each read from it."""

    def __init__(self, sock: socket.socket):
        super().__init__(sock)
        self.readers: list[str] = []

    def recv(self, size: int) -> bytes:
        data = super().recv(size)
        self.readers.append(threading.current_thread().name)
        return data


@pytest.fixture
def pair() -> Iterator[tuple[Endpoint, Endpoint, RecordingTransport]]:
    a, b = socket.socketpair()
    transport = RecordingTransport(b)
    host = Endpoint(SocketTransport(a), "host", window=1 << 16).start()
    keep = Endpoint(transport, "keep", window=1 << 16, name="keep", read_when_waiting=True).start()
    host.send_hello()
    keep.send_hello()
    host.await_hello(5)
    keep.await_hello(5)
    yield host, keep, transport
    host.close()
    keep.close()


def test_a_waiting_thread_reads_its_own_data(pair: tuple[Endpoint, Endpoint, RecordingTransport]) -> None:
    host, keep, transport = pair
    stream = host.open_stream("test")
    opened, _ = keep.accept_stream(5)

    def request_soon(text: bytes) -> None:
        # As a client does: the request comes while the keep already waits for it.
        threading.Timer(0.002, host.write, args=(stream, text)).start()

    request_soon(b"warm-up")  # the reader thread may hold the transport from before: it reads this
    assert keep.read(opened, 100, timeout=5) == b"warm-up"
    start = len(transport.readers)
    for round_trip in range(50):
        request_soon(b"ping %d" % round_trip)
        assert keep.read(opened, 100, timeout=5) == b"ping %d" % round_trip
    # The reads came to the thread that waited for them; the reader thread stood aside (it may take
    # one back only if this thread stopped waiting for READER_GRACE, as a loaded machine can make it).
    readers = transport.readers[start:]
    assert readers.count("MainThread") >= len(readers) - 2, readers


def test_the_reader_thread_takes_over_when_nobody_waits(pair: tuple[Endpoint, Endpoint, RecordingTransport]) -> None:
    host, keep, transport = pair
    time.sleep(READER_GRACE * 3)  # nobody waits: the reader thread holds the transport again
    reads_before = len(transport.readers)
    host.send_control("note", text="while the keep computes")
    deadline = time.monotonic() + 5
    while "keep-reader" not in transport.readers[reads_before:]:
        assert time.monotonic() < deadline, "the reader thread never read"
        time.sleep(0.01)
    assert keep.recv_control(0) == {"op": "note", "text": "while the keep computes"}  # already there


def test_a_thread_that_polls_in_a_loop_does_not_stop_the_reading(
        pair: tuple[Endpoint, Endpoint, RecordingTransport]) -> None:
    host, keep, _ = pair
    host.expect_opens("test")
    stream = keep.open_stream("test")
    host.accept_stream(5)
    keep.write(stream, b"x")
    host.send_control("first")
    assert keep.recv_control(5)["op"] == "first"  # this thread waited last, just now
    # wait() on a writable stream returns at once: the poller never blocks, so never reads.
    polls = 0
    sender = threading.Timer(READER_GRACE * 3, lambda: host.send_control("arrived"))
    sender.start()
    deadline = time.monotonic() + 5
    while not keep.wait((), 0.0, condition=lambda: bool(keep._controls)):
        assert keep.wait((), 1.0, writable=(stream,))
        polls += 1
        assert time.monotonic() < deadline, "the control message never arrived"
    sender.join()
    assert polls > 0
    assert keep.recv_control(0)["op"] == "arrived"


def test_a_second_waiter_takes_over_when_the_reading_one_leaves(
        pair: tuple[Endpoint, Endpoint, RecordingTransport]) -> None:
    host, keep, transport = pair
    first = host.open_stream("first")
    second = host.open_stream("second")
    opened = dict((meta["kind"], sid) for sid, meta in (keep.accept_stream(5), keep.accept_stream(5)))
    got: dict[str, bytes] = {}

    def wait_for(kind: str) -> None:
        got[kind] = keep.read(opened[kind], 100, timeout=10)

    threads = [threading.Thread(target=wait_for, args=(kind,), name=f"waiter-{kind}") for kind in opened]
    for thread in threads:
        thread.start()
    time.sleep(0.05)  # both wait; one of them reads the transport
    host.write(first, b"one")
    time.sleep(0.05)
    host.write(second, b"two")
    for thread in threads:
        thread.join(10)
    assert got == {"first": b"one", "second": b"two"}
    # The reader thread may have held the transport before anyone waited, and so read "one";
    # from then on a waiter reads.
    assert transport.readers[-1] == "waiter-second"


def test_a_wait_times_out_and_a_closed_channel_ends_it(pair: tuple[Endpoint, Endpoint, RecordingTransport]) -> None:
    host, keep, _ = pair
    started = time.monotonic()
    with pytest.raises(Timeout):
        keep.recv_control(timeout=0.2)
    assert 0.15 < time.monotonic() - started < 2.0
    closer = threading.Timer(0.1, host.close)
    closer.start()
    with pytest.raises(Exception, match="closed"):
        keep.recv_control(timeout=10)
    closer.join()


def test_an_endpoint_that_reads_when_waiting_takes_no_observer(
        pair: tuple[Endpoint, Endpoint, RecordingTransport]) -> None:
    _, keep, _ = pair
    with pytest.raises(ValueError, match="observer"):
        keep.observe(lambda stream: None)
