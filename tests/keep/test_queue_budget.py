"""What a nil keep's own sockets queue beyond their kernels' buffers (``SendQueues`` in
``keep/net/direct.py``) is bounded in total: each may hold its initial window, more only within the
keep's budget; and it is sent as soon as the kernel takes it, by the queues' own thread, however
long the workload leaves the socket alone."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from motte.keep.net.direct import WINDOW, SendQueues, SocketCarrier
from motte.shared.channel import INITIAL_WINDOW
from motte.shared.endpoint import Endpoint
from motte.shared.transport import SocketTransport

BUDGET = 1 << 20
PEERS = 12


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    keep_end, host_end = socket.socketpair()
    endpoint = Endpoint(SocketTransport(keep_end), "keep", read_when_waiting=True).start()
    yield endpoint
    endpoint.close()
    host_end.close()


WRITTEN: dict[SocketCarrier, int] = {}  # what each carrier was given to write


def _stuffed(count: int, endpoint: Endpoint, budget: SendQueues) -> tuple[list[SocketCarrier], list[socket.socket]]:
    """``count`` carriers whose peers never read, each written to until its window closed."""
    carriers, peers = [], []
    for _ in range(count):
        mine, peer = socket.socketpair()
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # the kernel takes little
        carrier = SocketCarrier(endpoint, mine, budget)
        WRITTEN[carrier] = 0
        while (window := carrier.write_window()) > 0:
            carrier.write(b"x" * window)
            WRITTEN[carrier] += window
        carriers.append(carrier)
        peers.append(peer)
    return carriers, peers


def test_the_sockets_queue_within_the_budget_and_their_initial_windows(endpoint: Endpoint) -> None:
    budget = SendQueues(BUDGET)
    carriers, peers = _stuffed(PEERS, endpoint, budget)
    held = [len(carrier._queued) for carrier in carriers]
    assert budget.queued == sum(held)
    assert sum(held) <= BUDGET + PEERS * INITIAL_WINDOW  # not PEERS windows of WINDOW
    assert BUDGET // WINDOW <= sum(size > INITIAL_WINDOW for size in held) <= BUDGET // WINDOW + 1
    assert all(size > 0 for size in held[-3:])  # with the budget spent, each still gets its initial window
    for carrier in carriers:
        carrier.reset()
    for peer in peers:
        peer.close()
    assert budget.queued == 0  # a closed socket gives its share back


def test_what_is_queued_reaches_a_peer_that_reads_without_the_workload(endpoint: Endpoint) -> None:
    budget = SendQueues(BUDGET)
    carriers, peers = _stuffed(PEERS, endpoint, budget)
    written = [len(carrier._queued) for carrier in carriers]
    assert budget.queued == sum(written) > 0
    # The workload leaves the sockets alone (it waits elsewhere); the peers read: everything arrives.
    for carrier, peer in zip(carriers, peers, strict=True):
        peer.settimeout(10)
        got = 0
        while got < WRITTEN[carrier]:
            got += len(peer.recv(1 << 20))
        assert got == WRITTEN[carrier]
        with budget.lock:
            assert not carrier._queued
    assert budget.queued == 0
    assert all(carrier.write_window() > 0 for carrier in carriers)
    for carrier in carriers:
        carrier.reset()
    for peer in peers:
        peer.close()
