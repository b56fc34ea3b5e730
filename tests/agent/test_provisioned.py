"""The host's driver of a provisioned keep, against the test playing the keep over an endpoint pair:
provision, serve (listen ports bound, or why not), exit and bye, a keep that vanishes, a stop, the
deadlines, provisioning streams."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from motte.host import provisioned as provisioned_module
from motte.host.provisioned import KeepEnd, ProvisionedKeep
from motte.shared.control import (
    PROVISION_STREAM,
    Accepted,
    Bye,
    ControlMessage,
    Conversation,
    Exit,
    Provision,
    Serve,
    Served,
    Stats,
)
from motte.shared.enarx_config import FileSpec, WorkloadConfig
from motte.shared.endpoint import Endpoint
from tests.agent.conftest import PairKeep
from tests.net.conftest import free_port

STDIO = (FileSpec("stdin", "stdin"), FileSpec("stdout", "stdout"), FileSpec("stderr", "stderr"))


class PlayedKeep:
    """The keep's side of the control sequence, played by the test."""

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self.conversation = Conversation("keep")

    def receive(self) -> ControlMessage:
        return self.conversation.received(self.endpoint.recv_control(timeout=10))

    def send(self, message: ControlMessage) -> None:
        self.endpoint.send_control(**self.conversation.sending(message))


class Driven:
    """A ProvisionedKeep running on a thread, and the keep the test plays."""

    def __init__(self, provision: Provision, **options: Any):
        self.keep = PairKeep()
        self.running = threading.Event()
        self.provisioned = ProvisionedKeep(self.keep, provision, on_running=self.running.set, **options)
        self.played = PlayedKeep(self.keep.keep_side)
        self._end: list[KeepEnd] = []
        self._thread = threading.Thread(target=lambda: self._end.append(self.provisioned.run()), daemon=True)
        self._thread.start()

    def end(self) -> KeepEnd:
        self._thread.join(15)
        assert not self._thread.is_alive(), "run() did not return"
        return self._end[0]


@pytest.fixture
def driven() -> Iterator[Callable[..., Driven]]:
    made: list[Driven] = []

    def make(provision: Provision | None = None, **options: Any) -> Driven:
        d = Driven(provision or Provision(10_000), **options)
        made.append(d)
        return d

    yield make
    for d in made:
        d.keep.close()


def listen_config(port: int) -> WorkloadConfig:
    return WorkloadConfig(files=[*STDIO, FileSpec("listen", "web", prot="tcp", addr="127.0.0.1", port=port)])


def test_serve_binds_the_listen_port_then_relays_and_exit_gets_bye(driven: Callable[..., Driven]) -> None:
    port = free_port()
    taps: list[tuple[str, int, bytes]] = []
    d = driven(Provision(10_000, memory_limit=64 << 20, timeout_ms=30_000), tap=lambda *e: taps.append(e))
    assert d.played.receive() == Provision(10_000, 64 << 20, 30_000)
    assert not d.running.is_set()
    d.played.send(Serve(listen_config(port)))
    assert d.played.receive() == Served(None)
    assert d.running.wait(5)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        stream, meta = d.keep.keep_side.accept_stream(timeout=5)
        assert meta["kind"] == "accepted" and meta["fd"] == 3
        d.played.send(Accepted(stream))
        client.sendall(b"ping")
        assert d.keep.keep_side.read(stream, 4, timeout=5) == b"ping"
        d.keep.keep_side.reset(stream, "closed")
    d.played.send(Stats(cached=False, compile_us=7))
    d.played.send(Exit(3, "exit", "only the tenant sees this"))
    assert isinstance(d.played.receive(), Bye)
    end = d.end()
    assert end.state == "exited" and end.exit is not None and (end.exit.status, end.exit.reason) == (3, "exit")
    assert end.stats == Stats(False, 7)
    assert ("to-keep", stream, b"ping") in taps
    with socket.socket() as again:  # the listen socket was closed with the keep's end
        # (SO_REUSEADDR: the relayed connection may linger in TIME_WAIT; a listener would still refuse)
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))


def test_a_port_in_use_is_served_with_the_reason(driven: Callable[..., Driven]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = driven()
        d.played.receive()
        d.played.send(Serve(listen_config(port)))
        served = d.played.receive()
        assert isinstance(served, Served) and served.error is not None
        assert f"127.0.0.1:{port}" in served.error and "in use" in served.error
        assert "\n" not in served.error
        d.played.send(Exit(125, "error"))
        assert isinstance(d.played.receive(), Bye)
        assert d.end().state == "exited"
        assert not d.running.is_set()


def test_a_workload_without_sockets_runs_without_a_network(driven: Callable[..., Driven]) -> None:
    d = driven()
    d.played.receive()
    d.played.send(Serve(WorkloadConfig()))
    assert d.played.receive() == Served(None)
    assert d.running.wait(5)
    d.played.send(Exit(0, "exit"))
    d.played.receive()
    assert d.end().exit == Exit(0, "exit")


def test_a_keep_that_closes_the_channel_without_an_exit_failed(driven: Callable[..., Driven]) -> None:
    d = driven()
    d.played.receive()
    d.keep.keep_side.close()
    end = d.end()
    assert end.state == "failed" and end.error is not None
    assert "the keep ended without reporting an exit" in end.error


def test_a_keep_that_breaks_the_sequence_failed(driven: Callable[..., Driven]) -> None:
    d = driven()
    d.played.receive()
    d.keep.keep_side.send_control(op="accepted", stream=5)  # before it was served
    end = d.end()
    assert end.state == "failed" and "the keep sent 'accepted' out of turn" in (end.error or "")
    assert d.keep.closed.is_set()


def test_stop_ends_the_keep(driven: Callable[..., Driven]) -> None:
    d = driven()
    d.played.receive()
    d.provisioned.stop()
    assert d.end() == KeepEnd("stopped")


def test_a_keep_not_provisioned_within_its_wait_is_ended(driven: Callable[..., Driven],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(provisioned_module, "GRACE", 0.05)
    d = driven(Provision(wait_ms=50))
    d.played.receive()
    end = d.end()
    assert end.state == "failed" and end.error == "the keep was not provisioned within its 0.05 s wait"
    assert d.keep.closed.is_set()


def test_a_workload_past_its_deadline_is_ended(driven: Callable[..., Driven], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(provisioned_module, "GRACE", 0.05)
    d = driven(Provision(wait_ms=10_000, timeout_ms=50))
    d.played.receive()
    d.played.send(Serve(WorkloadConfig()))
    d.played.receive()
    end = d.end()
    assert end.state == "failed" and end.error == "the keep did not stop at its 0.05 s deadline"


def test_each_session_is_a_provisioning_stream(driven: Callable[..., Driven]) -> None:
    d = driven()
    d.played.receive()
    first, second = d.provisioned.open_session(), d.provisioned.open_session()
    for session in (first, second):
        stream, meta = d.keep.keep_side.accept_stream(timeout=5)
        assert stream == session.stream and meta["kind"] == PROVISION_STREAM
    first.write(b"client hello")
    assert d.keep.keep_side.read(first.stream, 100, timeout=5) == b"client hello"
    d.keep.keep_side.write(second.stream, b"server hello")
    d.keep.keep_side.eof(second.stream)
    assert second.read(100, timeout=5) == b"server hello"
    assert second.read(100, timeout=5) == b""
    d.provisioned.stop()
    d.end()
