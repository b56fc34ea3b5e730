"""``motte deploy`` as a user runs it, against a real host agent on a Unix socket launching real
nil keeps (one warm): the workload's output and exit status, secrets, --detach --json, a keep the
policy refuses, an agent that is down, a bad package, a bad policy. Each failure is one line, and
nothing is left running."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from motte.host.backends.nil import NilBackend
from motte.outside.agent_api import KeepRecord
from motte.tenant.agent_client import AgentClient
from tests.agent.conftest import AgentFactory, Log, gone, running
from tests.agent.test_api import until
from tests.conftest import motte
from tests.net.conftest import wait_until
from tests.workloads import workload

STDIO = '[[files]]\nkind = "stdin"\n[[files]]\nkind = "stdout"\n[[files]]\nkind = "stderr"\n'
UNATTESTED = "motte: the keep is UNATTESTED (nil): its host can read the workload, its secrets and its output"


@pytest.fixture
def log() -> Log:
    return Log()


@pytest.fixture
def agent(make_agent: AgentFactory, tmp_path: Path, log: Log) -> Iterator[AgentClient]:
    """A host agent on a Unix socket offering nil keeps, one of them warm."""
    with running(make_agent({"nil": NilBackend()}, warm={"nil": 1}, log=log), unix=tmp_path / "agent.sock") as url:
        yield AgentClient(url)


@pytest.fixture
def dev_policy(tmp_path: Path) -> Path:
    path = tmp_path / "dev.toml"
    path.write_text("allow_unattested = true\n")
    return path


def package(tmp_path: Path, name: str, toml: str) -> Path:
    folder = tmp_path / f"pkg-{name}"
    folder.mkdir()
    (folder / "main.wasm").write_bytes(workload(name).read_bytes())
    (folder / "Enarx.toml").write_text(toml)
    return folder


def deploy(agent: AgentClient, policy: Path, *args: str) -> tuple[int, bytes, list[str]]:
    """``motte deploy`` through ``agent``: (status, stdout, stderr lines)."""
    result = motte("deploy", "--agent", agent.url, "--policy", str(policy), *args)
    return result.returncode, result.stdout, result.stderr.decode().splitlines()


def nothing_left(agent: AgentClient) -> list[KeepRecord]:
    """Every keep the agent launched has ended, its process gone (the agent stops a keep whose
    tenant left); returns their final records, and forgets them."""
    finals = []
    for record in agent.list():
        final = until(agent, record.id, lambda r: not r.live, "ended")
        assert final.pid is None or gone(final.pid)
        finals.append(final)
        agent.stop(record.id)
    return finals


def test_the_workloads_output_and_exit_status(agent: AgentClient, dev_policy: Path, tmp_path: Path) -> None:
    status, stdout, stderr = deploy(agent, dev_policy, str(workload("hello")))
    assert (status, stdout, stderr) == (0, b"Hello from a motte keep!\n", [UNATTESTED])
    (record,) = nothing_left(agent)
    assert record.backend == "nil" and record.memory == 1 << 30
    assert record.state == "exited" and record.exit is not None and record.exit.status == 0  # it told the host
    exits = package(tmp_path, "exit", 'args = ["7"]\n' + STDIO)
    assert deploy(agent, dev_policy, str(exits)) == (7, b"", [UNATTESTED])
    (record,) = nothing_left(agent)
    assert record.exit is not None and (record.exit.status, record.exit.reason) == (7, "exit")


def test_secrets_limits_and_a_cold_keep(agent: AgentClient, dev_policy: Path, tmp_path: Path) -> None:
    secret = tmp_path / "api-key"
    secret.write_text("s3cr3t")
    args_env = package(tmp_path, "args_env", 'args = ["one"]\n' + STDIO)
    status, stdout, stderr = deploy(agent, dev_policy, "--secret-env", f"API_KEY=@{secret}", "--max-memory", "64M",
                                    "--timeout", "30", "--wait", "20", str(args_env))
    assert (status, stderr) == (0, [UNATTESTED])
    assert b"argv[1]=one\n" in stdout and b"env:API_KEY=s3cr3t\n" in stdout
    (record,) = nothing_left(agent)  # not the warm keep: it was launched for 64 MiB
    assert (record.memory, record.timeout_ms, record.wait_ms, record.detach) == (64 << 20, 30_000, 20_000, False)


def test_detach_json_leaves_the_keep_running_on(agent: AgentClient, dev_policy: Path) -> None:
    hello = workload("hello")
    status, stdout, stderr = deploy(agent, dev_policy, "--detach", "--json", str(hello))
    assert (status, stderr) == (0, [UNATTESTED])
    facts = json.loads(stdout)
    assert (facts["technology"], facts["attested"], facts["chain"]) == ("kvm", False, None)
    assert facts["workload_sha256"] == hashlib.sha256(hello.read_bytes()).hexdigest()
    assert len(facts["launch_sha256"]) == 64
    (record,) = agent.list()
    assert record.detach and (facts["keep"], facts["backend"]) == (record.id, "nil")
    final = until(agent, record.id, lambda r: r.state == "exited", "exited")  # hello ran to its end, unwatched
    assert final.exit is not None and final.exit.status == 0
    result = motte("deploy", "--agent", agent.url, "--policy", str(dev_policy), "--json", str(hello))
    assert result.returncode == 125 and b"--json goes with --detach" in result.stderr
    assert len(agent.list()) == 1  # a usage error launches nothing


def test_the_keeps_of_an_agent_are_listed_shown_and_stopped(agent: AgentClient, dev_policy: Path) -> None:
    # spin runs until stopped (its --timeout, should the test fail before, ends it)
    status, _stdout, stderr = deploy(agent, dev_policy, "--detach", "--timeout", "120", str(workload("spin")))
    assert status == 0
    (line,) = [line for line in stderr if line.startswith("deployed: ")]
    keep_id = line.split()[2]
    assert line.endswith(f"(motte host stop {keep_id} stops it)")
    listed = motte("host", "list", "--agent", agent.url)
    assert listed.returncode == 0
    header, row = listed.stdout.decode().splitlines()
    assert header.split() == ["id", "backend", "state", "memory", "created", "exit"]
    assert row.split()[:4] == [keep_id, "nil", "running", "1G"] and row.endswith("  -")
    shown = motte("host", "status", keep_id, "--agent", agent.url, "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["state"] == "running"
    stopped = motte("host", "stop", keep_id, "--agent", agent.url, "--json")
    assert stopped.returncode == 0 and json.loads(stopped.stdout)["id"] == keep_id
    assert agent.list() == []
    again = motte("host", "stop", keep_id, "--agent", agent.url)
    assert again.returncode == 125 and again.stderr.decode().startswith(f"motte: error: the agent at {agent.url} "
                                                                       f"has no keep {keep_id}")
    bad = motte("host", "status", "../v1/info", "--agent", agent.url)
    assert bad.returncode == 125 and b"is not a keep id" in bad.stderr
    assert motte("host", "list", "--agent", agent.url, "--json").stdout == b'{\n  "keeps": []\n}\n'


def test_a_keep_the_policy_refuses_is_stopped(agent: AgentClient, tmp_path: Path) -> None:
    strict = tmp_path / "strict.toml"
    strict.write_text("")
    status, stdout, stderr = deploy(agent, strict, str(workload("hello")))
    assert (status, stdout) == (1, b"")
    (line,) = stderr
    assert line.startswith("motte: error: the keep failed the policy (unattested_refused): the keep offers no "
                           "evidence (a nil keep)")
    assert line.endswith("(nothing was sent to it; the keep is being stopped)")
    assert [record for record in agent.list() if record.live] == []  # stopped and forgotten before it exited


@pytest.mark.parametrize(("bad", "error"), [
    ("package", "the package has no main.wasm"),
    ("policy", "unknown key 'allow_unattendeded'"),
])
def test_bad_input_is_one_line_and_stops_the_keep_requested_early(agent: AgentClient, log: Log, dev_policy: Path,
                                                                  tmp_path: Path, bad: str, error: str) -> None:
    policy, folder = dev_policy, package(tmp_path, "hello", "")
    if bad == "package":
        (folder / "main.wasm").unlink()
    else:
        policy = tmp_path / "typo.toml"
        policy.write_text("allow_unattendeded = true\n")
    status, stdout, stderr = deploy(agent, policy, str(folder))
    assert (status, stdout, len(stderr)) == (125, b"", 1)
    assert stderr[0].startswith("motte: error: ") and error in stderr[0]
    assert agent.list() == []  # the keep requested before the input was read was stopped and forgotten
    (started,) = [line for line in log.lines if ": starting (backend nil" in line]
    keep_id = started.split()[1].rstrip(":")
    assert f"keep {keep_id}: stopped" in log.lines


def test_an_agent_that_is_down(dev_policy: Path, tmp_path: Path) -> None:
    url = f"unix:{tmp_path / 'no-agent.sock'}"
    result = motte("deploy", "--policy", str(dev_policy), str(workload("hello")), env={"MOTTE_AGENT": url})
    assert (result.returncode, result.stdout) == (125, b"")
    (line,) = result.stderr.decode().splitlines()
    assert line.startswith(f"motte: error: the host agent at {url} is down: ") and "motte host serve" in line


def test_a_deploy_killed_mid_run_leaves_nothing_running(agent: AgentClient, dev_policy: Path, tmp_path: Path) -> None:
    folder = package(tmp_path, "spin", 'args = ["--print"]\n[[files]]\nkind = "stdin"\n[[files]]\nkind = "stdout"\n')
    command = [sys.executable, "-m", "motte", "deploy", "--agent", agent.url, "--policy", str(dev_policy), str(folder)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as client:
        assert client.stdout is not None
        assert client.stdout.readline() == b"spinning\n"  # the workload runs, its output reaches the tenant
        (record,) = [r for r in agent.list() if r.state == "running"]
        client.kill()  # the tenant vanishes: no goodbye, no close of its WebSocket
    final = until(agent, record.id, lambda r: not r.live, "ended")
    assert final.state == "stopped" and final.pid is not None
    assert wait_until(lambda: gone(final.pid), 10)  # type: ignore[arg-type]
