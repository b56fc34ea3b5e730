"""Lending an endpoint's reading to another thread's event loop (the host's network relay)."""

from __future__ import annotations

import select
import socket
import threading

from motte.host.relay import Relay
from motte.shared.endpoint import Endpoint
from motte.shared.transport import SocketTransport


def readable(fd: int, timeout: float = 5.0) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(int(timeout * 1000)))


def reader_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.endswith("-reader")]


def test_a_lent_endpoint_is_read_by_pump_only_until_reclaimed(pair: tuple[Endpoint, Endpoint]) -> None:
    host, keep = pair
    fd = host.lend_reading()
    assert not host._reader.is_alive()  # the reader thread has ended
    keep.send_control("first")
    assert readable(fd)  # the message waits in the socket: no thread of the endpoint reads it
    assert not host._controls
    assert host.pump()
    assert host.recv_control(timeout=1) == {"op": "first"}
    host.reclaim_reading()
    keep.send_control("second")
    assert host.recv_control(timeout=5) == {"op": "second"}  # the reader thread reads again


def test_pump_reports_the_end_of_the_channel(pair: tuple[Endpoint, Endpoint]) -> None:
    host, keep = pair
    fd = host.lend_reading()
    seen: list[int] = []
    host.observe(seen.append)
    keep.close()
    assert readable(fd)
    assert not host.pump()
    assert seen == [0] and host.closed is not None
    host.reclaim_reading()  # closed: no reader thread is started


def test_a_relay_started_after_the_keep_went_away_reads_nothing_and_stops() -> None:
    a, b = socket.socketpair()
    endpoint = Endpoint(SocketTransport(a), "host", name="gone").start()
    b.close()
    endpoint.close()
    assert endpoint.lend_reading() == -1
    relay = Relay(warn=print, tap=None, on_round=lambda: None, on_stop=lambda: None)
    relay.start(endpoint)
    relay.stop(0.1)
    assert "gone-reader" not in reader_threads()
