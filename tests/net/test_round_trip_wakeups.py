"""A request and its answer wake each process no more often than relaying them needs.

Relaying a round trip through a nil keep takes, at the least, one wake-up of the host for the
client's request, one of the keep to answer it, and one of the host for the answer: three, where a
server on the host takes one. Every wake-up more is a thread switch (and on a VM often an
interrupt to the other CPU) on the round trip's critical path, so the test counts them: the
voluntary context switches of every thread of the host's ``motte run`` process and of its keep,
read from /proc, over a thousand TLS round trips. It counts, it does not time: other load on the
machine adds involuntary switches, which are not counted.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.net.conftest import Served, connect, free_port, listen_toml, recv_exactly

ROUND_TRIPS = 1000
MESSAGE = b"x" * 1024


def voluntary_switches(pid: int) -> int:
    """All threads of ``pid``: the times they went to sleep (a wake-up each, later)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as status:
                for line in status:
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            continue  # the thread ended meanwhile
    return total


def keep_pid(host_pid: int) -> int:
    children = subprocess.run(["pgrep", "-P", str(host_pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 1, f"expected one keep process under the host, found {children}"
    return int(children[0])


@pytest.mark.parametrize("backend", ["nil"])  # a kvm keep's vCPU threads are QEMU's: not comparable
def test_a_round_trip_costs_three_wakeups(tmp_path: Path, serve: Callable[..., Served], backend: str) -> None:
    port = free_port()
    server = serve("net_echo", listen_toml(port), "1", backend=backend)
    server.expect("listening")
    host, keep = server.process.pid, keep_pid(server.process.pid)
    client = connect(port)
    for _ in range(100):  # warm up: the handshake, the first reads and the reader thread's hand-over
        client.sendall(MESSAGE)
        assert recv_exactly(client, len(MESSAGE)) == MESSAGE
    host_before, keep_before = voluntary_switches(host), voluntary_switches(keep)
    for _ in range(ROUND_TRIPS):
        client.sendall(MESSAGE)
        assert recv_exactly(client, len(MESSAGE)) == MESSAGE
    host_wakeups = (voluntary_switches(host) - host_before) / ROUND_TRIPS
    keep_wakeups = (voluntary_switches(keep) - keep_before) / ROUND_TRIPS
    client.close()
    server.expect("served 1")
    # Measured: host 2.0 (its relay thread for the request, its channel reader for the answer),
    # keep 0.6-1.0 (an answer sent, it yields; the next request may be there when it is back).
    assert host_wakeups <= 2.3, f"the host woke {host_wakeups:.2f} times a round trip (expected 2)"
    assert keep_wakeups <= 1.2, f"the keep woke {keep_wakeups:.2f} times a round trip (expected at most 1)"
