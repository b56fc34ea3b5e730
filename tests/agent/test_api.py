"""The host agent's API over real HTTP (loopback TCP and a Unix socket), with real keep processes:
create, list, status, stop; bad requests; limits; tokens; where it may listen; that it leaves no
keep behind; and what the tenant's client library says when things go wrong."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from motte.host.agent.auth import check_exposure
from motte.host.agent.server import serve
from motte.host.backends.base import Backend
from motte.host.backends.nil import NilBackend
from motte.outside.agent_api import KeepRecord, KeepRequest
from motte.outside.user_files import read_token
from motte.shared.errors import MotteError
from motte.tenant.agent_client import AgentClient, AgentError
from tests.agent.conftest import AgentFactory, Log, PairBackend, gone, running
from tests.net.conftest import free_port

T = TypeVar("T")
TOKEN = "0123456789abcdef0123456789abcdef"


def call(url: str, scenario: Callable[[AgentClient], T], token: str | None = None) -> T:
    return scenario(AgentClient(url, token=token))


def until(agent: AgentClient, keep_id: str, holds: Callable[[KeepRecord], bool], what: str) -> KeepRecord:
    for _ in range(500):
        record = agent.status(keep_id)
        if holds(record):
            return record
        time.sleep(0.02)
    raise AssertionError(f"keep {keep_id} is still not {what}: {record}")


def until_state(agent: AgentClient, keep_id: str, *states: str) -> KeepRecord:
    return until(agent, keep_id, lambda record: record.state in states, " or ".join(states))


def raw(url: str, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read()), dict(response.getheaders())
    finally:
        connection.close()


def test_info_says_what_this_host_runs(make_agent: AgentFactory) -> None:
    with running(make_agent({"nil": NilBackend()})) as url:
        info = call(url, lambda agent: agent.info())
    assert info["service"] == "motte host agent" and info["api"] == 1
    assert info["backends"]["nil"]["supported"] is True and info["default_backend"] == "nil"
    assert info["limits"]["max_keeps"] == 8 and info["keeps"] == 0


def test_create_list_status_and_stop(make_agent: AgentFactory, standin: Backend) -> None:
    log = Log()

    def scenario(agent: AgentClient) -> None:
        first = agent.create(KeepRequest(memory=64 << 20, timeout_ms=5000, wait_ms=30_000))
        assert first.state == "starting" and first.backend == "nil" and first.memory == 64 << 20
        assert (first.timeout_ms, first.wait_ms, first.detach) == (5000, 30_000, False)
        second = agent.create(KeepRequest(detach=True))
        assert second.memory == 1 << 30 and second.wait_ms == 60_000 and second.id != first.id
        up = until_state(agent, first.id, "provisioning")
        assert up.pid is not None and not gone(up.pid) and up.isolation is not None
        assert "no isolation" in up.isolation
        until_state(agent, second.id, "provisioning")
        assert {record.id for record in agent.list()} == {first.id, second.id}
        stopped = agent.stop(first.id)
        assert stopped is not None and stopped.state == "stopped" and stopped.ended is not None
        assert gone(up.pid)
        assert agent.stop(first.id) is None  # forgotten: stopping again is no error
        with pytest.raises(AgentError, match=f"no keep {first.id} here") as refused:
            agent.status(first.id)
        assert (refused.value.status, refused.value.code) == (404, "no_such_keep")
        assert [record.id for record in agent.list()] == [second.id]

    with running(make_agent({"nil": standin}, log=log)) as url:
        call(url, scenario)
    assert any("starting (backend nil, memory 67108864 bytes" in line for line in log.lines)
    assert any(line.endswith(": stopped") for line in log.lines)


def test_a_real_nil_keep_is_launched_and_leaves_nothing(make_agent: AgentFactory) -> None:
    def scenario(agent: AgentClient) -> KeepRecord:
        created = agent.create(KeepRequest(backend="nil", memory=64 << 20))
        record = until_state(agent, created.id, "provisioning", "running", "exited", "failed")
        final = agent.stop(created.id)
        assert final is not None and not final.live
        return record

    with running(make_agent({"nil": NilBackend()})) as url:
        record = call(url, scenario)
    assert record.pid is not None and gone(record.pid)


@pytest.mark.parametrize(("body", "status", "code", "text"), [
    (b"{not json", 400, "bad_json", "the body is not JSON"),
    (b"[1, 2]", 400, "bad_field", "the request must be a JSON object"),
    (b'{"memory": "1G"}', 400, "bad_field", "memory must be an integer"),
    (b'{"wait_ms": 3600001}', 400, "bad_field", "wait_ms must be an integer from 1 to 3600000"),
    (b'{"timeout_ms": 0}', 400, "bad_field", "timeout_ms must be an integer"),
    (b'{"detach": "yes"}', 400, "bad_field", "detach must be true or false"),
    (b'{"memroy": 1}', 400, "bad_field", 'unknown field "memroy"'),
    (b'{"backend": "sgx"}', 400, "unknown_backend", 'unknown backend "sgx": this agent runs pair'),
    (b'{"memory": 8589934592}', 400, "bad_field", "memory must be at most 4294967296 bytes"),
    (b'{"backend": "' + b"x" * 20000 + b'"}', 413, "body_too_large", "larger than 16384 bytes"),
])
def test_bad_requests_are_refused_with_a_reason(make_agent: AgentFactory, body: bytes, status: int, code: str,
                                                text: str) -> None:
    with running(make_agent({"pair": PairBackend()})) as url:
        got, answer, _ = raw(url, "POST", "/v1/keeps", body, {"Content-Type": "application/json"})
    assert (got, answer["code"]) == (status, code) and text in answer["error"]


def test_unknown_routes_and_methods_answer_json(make_agent: AgentFactory) -> None:
    with running(make_agent({"pair": PairBackend()})) as url:
        assert raw(url, "GET", "/v2/nothing")[:2] == (404, {"error": "Not Found", "code": "not_found"})
        status, answer, _ = raw(url, "PUT", "/v1/keeps")
        assert (status, answer["code"]) == (405, "method_not_allowed")


def test_client_text_is_escaped_in_the_log(make_agent: AgentFactory) -> None:
    log = Log()
    with running(make_agent({"pair": PairBackend()}, log=log)) as url:
        raw(url, "POST", "/v1/keeps", json.dumps({"backend": "\x1b[31mevil\nmotte host: forged"}).encode())
    (line,) = [line for line in log.lines if line.startswith("refused")]
    assert "\\x1b[31mevil\\x0amotte host: forged" in line and "\n" not in line and "\x1b" not in line


def test_too_many_keeps(make_agent: AgentFactory, standin: Backend) -> None:
    def scenario(agent: AgentClient) -> None:
        first = agent.create()
        agent.create()
        with pytest.raises(AgentError, match="at most 2 keeps at once") as refused:
            agent.create()
        assert (refused.value.status, refused.value.code) == (429, "too_many_keeps")
        agent.stop(first.id)
        agent.create()

    with running(make_agent({"nil": standin}, max_keeps=2)) as url:
        call(url, scenario)


def test_a_token_is_required_once_configured(make_agent: AgentFactory) -> None:
    with running(make_agent({"pair": PairBackend()}, token=TOKEN)) as url:
        status, answer, headers = raw(url, "GET", "/v1/keeps")
        assert (status, answer["code"]) == (401, "unauthorized") and headers["WWW-Authenticate"].startswith("Bearer")
        assert raw(url, "GET", "/v1/keeps", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert raw(url, "GET", "/v1/keeps", headers={"Authorization": f"Basic {TOKEN}"})[0] == 401
        assert raw(url, "GET", "/v1/keeps", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
        for token in (None, "not the token at all"):
            with pytest.raises(AgentError, match=f"the host agent at {url} refused the token") as refused:
                call(url, lambda agent: agent.list(), token=token)
            assert refused.value.status == 401
        with pytest.raises(AgentError, match="refused the token"):
            call(url, lambda agent: _open_session(agent, "0" * 16), token="not the token at all")
        assert call(url, lambda agent: agent.list(), token=TOKEN) == []


def _open_session(agent: AgentClient, keep_id: str) -> None:
    with agent.session(keep_id):
        pass


@pytest.mark.parametrize(("host", "allowed"), [
    ("127.0.0.1", True), ("::1", True), ("localhost", True), ("127.8.9.10", True),
    ("0.0.0.0", False), ("::", False), ("192.0.2.7", False), ("agent.example", False),
])
def test_only_loopback_may_go_without_a_token(host: str, allowed: bool) -> None:
    check_exposure(host, TOKEN)
    check_exposure(None, None)  # a Unix socket
    if allowed:
        check_exposure(host, None)
    else:
        with pytest.raises(MotteError, match=f"refusing to serve the host agent on {host} without a token"):
            check_exposure(host, None)


def test_serve_refuses_an_exposed_address_without_a_token(make_agent: AgentFactory) -> None:
    agent = make_agent({"pair": PairBackend()})
    with pytest.raises(MotteError, match="without a token"):
        asyncio.run(serve(agent, host="0.0.0.0", port=free_port(), on_ready=lambda url: None))


def test_token_files(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"{TOKEN}\n")
    path.chmod(0o600)
    assert read_token(path) == TOKEN
    path.chmod(0o640)
    with pytest.raises(MotteError, match="readable by others"):
        read_token(path)
    path.write_text("short\n")
    path.chmod(0o600)
    with pytest.raises(MotteError, match="at least 16 printable characters"):
        read_token(path)
    with pytest.raises(MotteError, match="not found"):
        read_token(tmp_path / "missing")
    with pytest.raises(MotteError, match="not a regular file"):
        read_token("/dev/zero")


def test_unix_socket_is_this_users_only(make_agent: AgentFactory, standin: Backend, tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # left by an agent that died: replaced
    stale.close()

    def scenario(agent: AgentClient) -> KeepRecord:
        created = agent.create()
        return until_state(agent, created.id, "provisioning")

    with running(make_agent({"nil": standin}), unix=path) as url:
        assert url == f"unix:{path}"
        mode = path.stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        record = call(url, scenario)
        with pytest.raises(MotteError, match=f"something already listens on {path}"), \
                running(make_agent({"nil": standin}), unix=path):
            pass
    assert not path.exists() and record.pid is not None and gone(record.pid)


def test_stopping_the_agent_stops_every_keep(make_agent: AgentFactory, standin: Backend) -> None:
    def scenario(agent: AgentClient) -> list[int]:
        created = [agent.create(KeepRequest(detach=True)) for _ in range(3)]
        records = [until_state(agent, keep.id, "provisioning") for keep in created]
        return [record.pid for record in records if record.pid is not None]

    log = Log()
    with running(make_agent({"nil": standin}, log=log)) as url:
        pids = call(url, scenario)
        assert len(pids) == 3 and not any(gone(pid) for pid in pids)
    assert all(gone(pid) for pid in pids)
    assert "stopping: ending 3 keeps" in log.lines and log.lines[-1] == "stopped"


def test_a_stop_while_the_keep_starts_waits_for_its_launch(make_agent: AgentFactory, standin: Backend) -> None:
    def scenario(agent: AgentClient) -> KeepRecord | None:
        created = agent.create()
        return agent.stop(created.id)  # at once: the keep is still starting

    with running(make_agent({"nil": standin})) as url:
        final = call(url, scenario)
    assert final is not None and final.state == "stopped"
    assert final.pid is None or gone(final.pid)


def test_an_agent_that_is_down_is_one_line(tmp_path: Path) -> None:
    for url in (f"http://127.0.0.1:{free_port()}", f"unix:{tmp_path / 'nothing.sock'}"):
        with pytest.raises(AgentError) as down:
            call(url, lambda agent: agent.list())
        text = str(down.value)
        assert text.startswith(f"the host agent at {url} is down: ") and "\n" not in text
        assert "motte host serve" in text and down.value.status == 0
    with pytest.raises(AgentError, match="is not a host agent URL"):
        AgentClient("127.0.0.1:7313")


def test_records_of_ended_keeps_are_bounded(make_agent: AgentFactory) -> None:
    backend = PairBackend()

    def scenario(agent: AgentClient) -> list[KeepRecord]:
        made = []
        for _ in range(4):
            created = agent.create()
            backend.next_keep().keep_side.close()  # the keep dies at once
            made.append(until_state(agent, created.id, "failed"))
        return made

    with running(make_agent({"pair": backend}, max_records=2)) as url:
        made = call(url, scenario)
        listed = call(url, lambda agent: agent.list())
    assert [record.id for record in listed] == [record.id for record in made[-2:]]
    assert made[0].error is not None and "the keep ended without reporting an exit" in made[0].error

