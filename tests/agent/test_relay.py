"""Sessions: a tenant's websocket relayed to a provisioning stream of its keep, with the test playing
the keep over an endpoint pair (and a stand-in keep process where the channel itself is tapped):
bytes both ways, half closes and resets both ways, several sessions, a keep that ends, a client
that vanishes, and what a session's end does to a keep that is not detached."""

from __future__ import annotations

import base64
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

from motte.host.backends.base import Backend
from motte.outside.agent_api import KeepExit, KeepRecord, KeepRequest
from motte.shared.control import PROVISION_STREAM, Conversation, Exit, Provision, Serve, Served
from motte.shared.enarx_config import WorkloadConfig
from motte.shared.endpoint import Endpoint, StreamAborted
from motte.shared.netstreams import CLOSED
from motte.tenant.agent_client import AgentClient, AgentError, KeepSession, SessionClosed
from tests.agent.conftest import AgentFactory, Log, PairBackend, PairKeep, running
from tests.agent.test_api import until, until_state
from tests.agent.test_provisioned import PlayedKeep

T = TypeVar("T")


def scenario_on(url: str, scenario: Callable[[AgentClient], T]) -> T:
    return scenario(AgentClient(url))


def accept(keep: PairKeep) -> int:
    stream, meta = keep.keep_side.accept_stream(5)
    assert meta["kind"] == PROVISION_STREAM
    return stream


def read_all(endpoint: Endpoint, stream: int, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        data = endpoint.read(stream, size - len(got), timeout=10)
        assert data, "EOF before all bytes came"
        got += data
    return bytes(got)


def receive_all(session: KeepSession, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        data = session.receive()
        assert data, "EOF before all bytes came"
        got += data
    return bytes(got)


def round_trip(session: KeepSession, keep: PairKeep, stream: int, there: bytes, back: bytes) -> None:
    """``there`` from the tenant reaches the keep, and ``back`` from the keep the tenant."""
    session.send(there)
    assert read_all(keep.keep_side, stream, len(there)) == there
    keep.keep_side.write(stream, back)
    assert session.receive() == back


def in_thread(action: Callable[[], object]) -> threading.Thread:
    """``action`` on a thread of its own (a send the other side must read meanwhile); join it."""
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    return thread


def launched(agent: AgentClient, backend: PairBackend, request: KeepRequest) -> tuple[KeepRecord, PairKeep]:
    record = agent.create(request)
    keep = backend.next_keep()
    provision = Conversation("keep").received(keep.keep_side.recv_control(5))
    assert provision == Provision(request.wait_ms, 1 << 30, request.timeout_ms)
    return until_state(agent, record.id, "provisioning"), keep


def no_sessions(record: KeepRecord) -> bool:
    return record.sessions == 0


@pytest.fixture
def pair() -> PairBackend:
    return PairBackend()


def test_bytes_and_half_closes_both_ways(make_agent: AgentFactory, pair: PairBackend) -> None:
    big = os.urandom(3 << 20)  # larger than a message and than the stream's window

    def scenario(agent: AgentClient) -> None:
        record, keep = launched(agent, pair, KeepRequest(detach=True))
        with agent.session(record.id) as session:
            stream = accept(keep)
            round_trip(session, keep, stream, b"client hello", b"server hello")
            assert (agent.status(record.id)).sessions == 1
            sent = in_thread(lambda: session.send(big))
            assert read_all(keep.keep_side, stream, len(big)) == big
            sent.join(10)
            assert not sent.is_alive()
            writer = in_thread(lambda: keep.keep_side.write(stream, big))
            assert receive_all(session, len(big)) == big
            writer.join(10)
            session.send_eof()
            assert keep.keep_side.read(stream, 10, 5) == b""
            keep.keep_side.write(stream, b"after the tenant's half close")
            assert session.receive() == b"after the tenant's half close"
            keep.keep_side.eof(stream)
            assert session.receive() == b""
            assert session.receive() == b""  # and stays so: the agent closed it in order
        assert (until(agent, record.id, no_sessions, "without sessions")).state == "provisioning"

    with running(make_agent({"pair": pair})) as url:
        scenario_on(url, scenario)


def test_a_reset_by_the_keep_ends_the_session_with_its_reason(make_agent: AgentFactory, pair: PairBackend) -> None:
    def scenario(agent: AgentClient) -> None:
        record, keep = launched(agent, pair, KeepRequest(detach=True))
        with agent.session(record.id) as session:
            stream = accept(keep)
            keep.keep_side.write(stream, b"partial")
            keep.keep_side.reset(stream, "ECONNRESET: handshake failed\x1b[2J")
            assert session.receive() == b"partial"
            with pytest.raises(SessionClosed, match="the keep reset the connection: ECONNRESET: handshake failed") \
                    as closed:
                session.receive()
            assert "\x1b" not in str(closed.value) and str(closed.value).endswith("\\x1b[2J")
        with agent.session(record.id) as session:  # the keep runs on: another session works
            stream = accept(keep)
            keep.keep_side.reset(stream, CLOSED)  # an orderly close
            assert session.receive() == b""

    with running(make_agent({"pair": pair})) as url:
        scenario_on(url, scenario)


def test_two_sessions_at_once_and_a_detached_keep_runs_on(make_agent: AgentFactory, pair: PairBackend) -> None:
    def scenario(agent: AgentClient) -> None:
        record, keep = launched(agent, pair, KeepRequest(detach=True))
        with agent.session(record.id) as first, agent.session(record.id) as second:
            streams = [accept(keep), accept(keep)]
            assert streams[0] != streams[1]
            first.send(b"one")
            second.send(b"two")
            got = {stream: read_all(keep.keep_side, stream, 3) for stream in streams}
            assert sorted(got.values()) == [b"one", b"two"]
            assert (agent.status(record.id)).sessions == 2
        for stream in streams:  # each tenant closed in order: the keep sees an orderly close
            with pytest.raises(StreamAborted, match="closed"):
                keep.keep_side.read(stream, 10, 5)
        assert (until(agent, record.id, no_sessions, "without sessions")).state == "provisioning"
        assert not keep.closed.is_set()

    with running(make_agent({"pair": pair})) as url:
        scenario_on(url, scenario)


def test_the_last_session_closing_stops_a_keep_that_is_not_detached(make_agent: AgentFactory,
                                                                  pair: PairBackend) -> None:
    log = Log()

    def scenario(agent: AgentClient) -> None:
        record, keep = launched(agent, pair, KeepRequest())
        with agent.session(record.id) as first:
            accept(keep)
            with agent.session(record.id):
                accept(keep)
            first.send(b"still here")  # one session is still open: the keep runs
            assert (agent.status(record.id)).state == "provisioning"
        assert (until_state(agent, record.id, "stopped")).sessions == 0
        assert keep.closed.is_set()

    with running(make_agent({"pair": pair}, log=log)) as url:
        scenario_on(url, scenario)
    assert any(line.endswith("its last session closed and it is not detached") for line in log.lines)


def test_a_running_keep_whose_tenant_left_gets_a_moment_to_report_its_exit(
        make_agent: AgentFactory, pair: PairBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("motte.host.agent.app.EXIT_GRACE", 0.5)

    def running_keep(agent: AgentClient) -> tuple[KeepRecord, PlayedKeep]:
        record = agent.create()
        played = PlayedKeep(pair.next_keep().keep_side)
        assert isinstance(played.receive(), Provision)
        played.send(Serve(WorkloadConfig()))
        assert played.receive() == Served(None)
        return until_state(agent, record.id, "running"), played

    def scenario(agent: AgentClient) -> None:
        record, played = running_keep(agent)
        with agent.session(record.id):
            pass  # the tenant has what it wanted (the exit, in its TLS), and leaves
        time.sleep(0.2)
        played.send(Exit(0, "exit"))  # within the grace: the host learns how it ended
        final = until_state(agent, record.id, "exited", "stopped")
        assert final.state == "exited" and final.exit == KeepExit(0, "exit")
        record, played = running_keep(agent)
        with agent.session(record.id):
            pass
        assert until_state(agent, record.id, "exited", "stopped").state == "stopped"  # it did not end: stopped

    with running(make_agent({"pair": pair})) as url:
        scenario_on(url, scenario)


def test_a_client_that_vanishes_leaves_nothing_running(make_agent: AgentFactory, pair: PairBackend) -> None:
    def vanish(url: str, keep_id: str, keep: PairKeep) -> int:
        """Open a session with a raw socket, then drop the connection without a close frame."""
        host, port = url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            key = base64.b64encode(os.urandom(16)).decode()
            raw.sendall(f"GET /v1/keeps/{keep_id}/session HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                        .encode())
            assert raw.recv(4096).startswith(b"HTTP/1.1 101")
            return accept(keep)

    def scenario(agent: AgentClient, url: str) -> None:
        detached, keep = launched(agent, pair, KeepRequest(detach=True))
        stream = vanish(url, detached.id, keep)
        with pytest.raises(StreamAborted, match="ECONNRESET: the tenant's connection to the host was lost"):
            keep.keep_side.read(stream, 10, 5)
        assert (until(agent, detached.id, no_sessions, "without sessions")).state == "provisioning"
        attached, keep = launched(agent, pair, KeepRequest())
        vanish(url, attached.id, keep)
        until_state(agent, attached.id, "stopped")
        assert keep.closed.is_set()

    with running(make_agent({"pair": pair})) as url:
        scenario_on(url, lambda agent: scenario(agent, url))


def test_a_keep_that_ends_ends_its_sessions_after_its_last_bytes(make_agent: AgentFactory, pair: PairBackend) -> None:
    def scenario(agent: AgentClient) -> None:
        record, keep = launched(agent, pair, KeepRequest(detach=True))
        with agent.session(record.id) as session, agent.session(record.id) as half_closed:
            stream, other = accept(keep), accept(keep)
            keep.keep_side.eof(other)
            assert half_closed.receive() == b""
            keep.keep_side.write(stream, b"the exit, in TLS")
            keep.keep_side.send_control(**Exit(0, "exit").to_message())  # (provisioning: exit is in turn)
            assert session.receive() == b"the exit, in TLS"
            with pytest.raises(SessionClosed, match="the keep ended before it closed the connection"):
                session.receive()
            final = until_state(agent, record.id, "exited")
            assert final.exit is not None and (final.exit.status, final.exit.reason) == (0, "exit")
            until(agent, record.id, no_sessions, "without sessions")  # the half-closed one is closed too
        with pytest.raises(AgentError, match=f"keep {record.id} has exited") as refused, agent.session(record.id):
            pass
        assert (refused.value.status, refused.value.code) == (409, "keep_ended")

    with running(make_agent({"pair": pair})) as url:
        scenario_on(url, scenario)


def test_sessions_that_cannot_be(make_agent: AgentFactory, pair: PairBackend) -> None:
    def scenario(agent: AgentClient) -> None:
        with pytest.raises(AgentError, match="no keep 0123456789abcdef here") as refused, \
                agent.session("0123456789abcdef"):
            pass
        assert (refused.value.status, refused.value.code) == (404, "no_such_keep")
        record, _ = launched(agent, pair, KeepRequest(detach=True))
        with agent.session(record.id), agent.session(record.id):
            with pytest.raises(AgentError, match=f"keep {record.id} has 2 sessions open, the most this agent allows") \
                    as refused, agent.session(record.id):
                pass
            assert (refused.value.status, refused.value.code) == (429, "too_many_sessions")

    with running(make_agent({"pair": pair}, max_sessions=2)) as url:
        scenario_on(url, scenario)


def test_the_tap_sees_every_byte_the_agent_handles(make_agent: AgentFactory, standin: Backend) -> None:
    taps: list[tuple[str, str, int, bytes]] = []
    marker = b"ciphertext-" + os.urandom(8).hex().encode()

    def scenario(agent: AgentClient) -> str:
        record = agent.create(KeepRequest(detach=True))
        with agent.session(record.id) as session:  # waits while the keep starts
            session.send(marker)
            assert receive_all(session, len(marker)) == marker  # the stand-in keep echoes
        return record.id

    with running(make_agent({"nil": standin}, tap=lambda *event: taps.append(event))) as url:
        keep_id = scenario_on(url, scenario)
    events = {event for (who, event, _, _) in taps if who == keep_id}
    assert {"channel-to-keep", "channel-from-keep", "ws-from-tenant", "ws-to-tenant"} <= events
    seen = {event for (_, event, _, data) in taps if marker in data}
    assert seen == {"channel-to-keep", "channel-from-keep", "ws-from-tenant", "ws-to-tenant"}
    assert any(b'"op":"provision"' in data for (_, event, _, data) in taps if event == "channel-to-keep")
