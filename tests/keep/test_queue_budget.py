"""What a nil keep's own sockets queue beyond their kernels' buffers is bounded in total
(``QueueBudget`` in ``keep/net/direct.py``): each may hold its initial window, more only within the
keep's budget, and a socket whose bytes the kernel takes gives its share back."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from motte.keep.net.direct import WINDOW, QueueBudget, SocketCarrier
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


def _stuffed(count: int, endpoint: Endpoint, budget: QueueBudget) -> tuple[list[SocketCarrier], list[socket.socket]]:
    """``count`` carriers whose peers never read, each written to until its window closed."""
    carriers, peers = [], []
    for _ in range(count):
        mine, peer = socket.socketpair()
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # the kernel takes little
        carrier = SocketCarrier(endpoint, mine, budget)
        while (window := carrier.write_window()) > 0:
            carrier.write(b"x" * window)
        carriers.append(carrier)
        peers.append(peer)
    return carriers, peers


def test_the_sockets_queue_within_the_budget_and_their_initial_windows(endpoint: Endpoint) -> None:
    budget = QueueBudget(BUDGET)
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


def test_a_socket_whose_peer_reads_gives_its_share_back(endpoint: Endpoint) -> None:
    budget = QueueBudget(BUDGET)
    carriers, peers = _stuffed(PEERS, endpoint, budget)
    reader, full = peers[0], len(carriers[0]._queued)
    reader.setblocking(False)
    drained = 0
    while carriers[0]._queued:
        try:
            drained += len(reader.recv(1 << 20))
        except BlockingIOError:
            pass
        carriers[0].readable()  # a poll for input sends what is queued (nobody else does)
    assert drained >= full
    assert budget.queued == sum(len(carrier._queued) for carrier in carriers)
    assert carriers[0].write_window() > 0
    for carrier in carriers:
        carrier.reset()
    for peer in peers:
        peer.close()
