"""Warm keeps: the host agent's pool of empty keeps launched ahead of requests. A request for the
default memory gets one (alive after its wait in the pool), others launch their own; the pool
refills once the keep it handed out is no longer provisioning; pooled keeps do not count against
--max-keeps; a dead pooled keep is discarded, a failed launch is not retried in a loop; stopping
the agent closes them all, launches under way included."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import click
import pytest

from motte.cli.host import parse_warm
from motte.host.backends.base import KeepHandle, LaunchSpec, Progress
from motte.host.backends.nil import NilBackend
from motte.outside.agent_api import KeepRequest
from motte.shared.errors import MotteError
from motte.tenant.agent_client import AgentClient, AgentError
from tests.agent.conftest import AgentFactory, Log, PairBackend, PairKeep, gone, running, spawn_standin
from tests.agent.test_api import until, until_state
from tests.agent.test_relay import receive_all
from tests.net.conftest import wait_until


class Spawned:
    """The stand-in keep processes launched, in order."""

    def __init__(self) -> None:
        self.pids: list[int] = []

    def __call__(self) -> tuple[int, object, None]:
        pid, sock, handover = spawn_standin()
        self.pids.append(pid)
        return pid, sock, handover


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> Spawned:
    """The nil backend launches echoing stand-in keeps, recorded here."""
    recorder = Spawned()
    monkeypatch.setattr("motte.host.backends.nil.spawn_nil_keep", recorder)
    return recorder


def ready(agent: AgentClient, count: int) -> None:
    assert wait_until(lambda: agent.info()["warm"]["nil"]["ready"] == count, 20), agent.info()["warm"]


@pytest.fixture
def pooled(make_agent: AgentFactory, spawned: Spawned) -> Iterator[tuple[AgentClient, Log]]:
    """An agent with one warm stand-in nil keep, which has been launched."""
    log = Log()
    with running(make_agent({"nil": NilBackend()}, warm={"nil": 1}, log=log)) as url:
        agent = AgentClient(url)
        ready(agent, 1)
        yield agent, log


def test_a_request_gets_the_warm_keep_which_waited_alive(pooled: tuple[AgentClient, Log], spawned: Spawned) -> None:
    agent, log = pooled
    (pid,) = spawned.pids
    time.sleep(0.5)  # the pooled keep's process lives while it waits (it is bound to the thread that launched it)
    assert not gone(pid)
    info = agent.info()
    assert info["warm"] == {"nil": {"size": 1, "ready": 1, "memory": 1 << 30}} and info["keeps"] == 0
    record = agent.create(KeepRequest(detach=True))
    assert any(line.startswith(f"keep {record.id}: starting") and line.endswith(", warm)") for line in log.lines)
    up = until_state(agent, record.id, "provisioning")
    assert up.pid == pid
    with agent.session(record.id) as session:
        session.send(b"through a warm keep")
        assert receive_all(session, 19) == b"through a warm keep"
    time.sleep(0.3)
    assert agent.info()["warm"]["nil"]["ready"] == 0 and len(spawned.pids) == 1  # not while it is provisioning
    agent.stop(record.id)  # no longer provisioning: the pool refills
    ready(agent, 1)
    assert len(spawned.pids) == 2 and gone(pid)


def test_only_the_default_memory_is_served_warm(pooled: tuple[AgentClient, Log], spawned: Spawned) -> None:
    agent, log = pooled
    record = agent.create(KeepRequest(memory=64 << 20))
    assert any(line.startswith(f"keep {record.id}: starting") and line.endswith("detach no)") for line in log.lines)
    assert until_state(agent, record.id, "provisioning").pid == spawned.pids[1]
    assert agent.info()["warm"]["nil"]["ready"] == 1


def test_warm_keeps_do_not_count_against_max_keeps(make_agent: AgentFactory, spawned: Spawned) -> None:
    with running(make_agent({"nil": NilBackend()}, warm={"nil": 2}, max_keeps=1)) as url:
        agent = AgentClient(url)
        ready(agent, 2)
        agent.create()
        with pytest.raises(AgentError, match="at most 1 keeps at once") as refused:
            agent.create()
        assert refused.value.code == "too_many_keeps"
        assert agent.info()["warm"]["nil"]["ready"] == 1  # the refused request took none


def test_a_warm_keep_that_died_is_discarded(pooled: tuple[AgentClient, Log], spawned: Spawned) -> None:
    import os
    import signal

    agent, log = pooled
    os.kill(spawned.pids[0], signal.SIGKILL)
    time.sleep(0.3)  # (its channel's end is seen by the agent's reader)
    record = agent.create()
    pid = until_state(agent, record.id, "provisioning").pid
    assert pid in spawned.pids[1:]  # launched for the request
    assert any(line.endswith(": ended while it waited; discarded") for line in log.lines)
    ready(agent, 1)  # and the pool, which could not serve the request, refilled at once


class FailingBackend(PairBackend):
    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    def launch(self, spec: LaunchSpec, progress: Progress | None = None) -> KeepHandle:
        self.attempts += 1
        raise MotteError("no keeps today")


def test_a_launch_that_fails_is_logged_and_not_retried_in_a_loop(make_agent: AgentFactory) -> None:
    backend, log = FailingBackend(), Log()
    with running(make_agent({"pair": backend}, warm={"pair": 1}, log=log)) as url:
        agent = AgentClient(url)
        assert wait_until(lambda: any("could not launch (pair): no keeps today" in line for line in log.lines), 10)
        time.sleep(0.3)
        assert backend.attempts == 1
        record = agent.create()
        assert until_state(agent, record.id, "failed").error == "no keeps today"
        time.sleep(0.3)
        assert backend.attempts == 3  # the request's own launch, and one refill: no more


class SlowBackend(PairBackend):
    """Launches that wait for :attr:`go`."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()

    def launch(self, spec: LaunchSpec, progress: Progress | None = None) -> KeepHandle:
        assert self.go.wait(20)
        return super().launch(spec, progress)


def test_stopping_the_agent_closes_warm_keeps_and_launches_under_way(make_agent: AgentFactory,
                                                                     spawned: Spawned) -> None:
    with running(make_agent({"nil": NilBackend()}, warm={"nil": 2})) as url:
        ready(AgentClient(url), 2)
    assert len(spawned.pids) == 2 and all(gone(pid) for pid in spawned.pids)
    slow = SlowBackend()
    with running(make_agent({"pair": slow}, warm={"pair": 1})):
        timer = threading.Timer(0.3, slow.go.set)  # the launch returns while the agent stops
        timer.start()
    launched: PairKeep = slow.next_keep()
    assert launched.closed.is_set()
    timer.join()


def test_warm_option() -> None:
    assert parse_warm(()) == {"nil": 1, "kvm": 0}
    assert parse_warm(("2",)) == {"nil": 2, "kvm": 2}
    assert parse_warm(("kvm=1", "nil=0")) == {"nil": 0, "kvm": 1}
    assert parse_warm(("kvm=1", "3")) == {"nil": 3, "kvm": 3}  # the later one wins
    for bad, error in (("sgx=1", "unknown backend 'sgx'"), ("nil=-1", "from 0 to 16"), ("17", "from 0 to 16"),
                       ("nil=", "from 0 to 16")):
        with pytest.raises(click.BadParameter, match=error):
            parse_warm((bad,))


def test_no_pool_unless_asked(make_agent: AgentFactory, standin: NilBackend) -> None:
    log = Log()
    with running(make_agent({"nil": standin}, log=log)) as url:
        assert AgentClient(url).info()["warm"] == {}
    assert not any("warm" in line for line in log.lines)


def test_the_default_memory_is_what_the_pool_launches(make_agent: AgentFactory) -> None:
    backend = PairBackend()
    with running(make_agent({"pair": backend}, warm={"pair": 1}, default_memory=256 << 20)) as url:
        keep = backend.next_keep()
        assert wait_until(lambda: AgentClient(url).info()["warm"]["pair"]["ready"] == 1, 10)
        record = AgentClient(url).create()
        assert record.memory == 256 << 20
        until(AgentClient(url), record.id, lambda r: r.state == "provisioning", "provisioning")
        assert keep.keep_side.recv_control(5)["op"] == "provision"  # the pooled keep got the request's provision
