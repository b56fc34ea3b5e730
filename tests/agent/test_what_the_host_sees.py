"""The proof of ``motte deploy``: every byte the host handles (the agent's WebSockets, each keep's
channel in both directions, the relayed network connections) is tapped during a deploy, and none
of the workload's bytes, its config, its secrets or its output is there. The same tap during
``motte run`` finds them all, so the tap can see."""

from __future__ import annotations

import threading
from collections import defaultdict
from pathlib import Path

from motte.host.backends.base import LaunchSpec
from motte.host.backends.nil import NilBackend
from motte.host.session import HostStdio, RunRequest, run_workload
from motte.shared.enarx_config import WorkloadConfig
from tests.agent.conftest import AgentFactory, running
from tests.conftest import motte
from tests.workloads import workload

CONFIG_MARK = "config-value-7f3a91"
ARG_MARK = "argument-4c8e2d"
SECRET = b"secret-value-9b1d55"
STDIO = '[[files]]\nkind = "stdin"\n[[files]]\nkind = "stdout"\n[[files]]\nkind = "stderr"\n'


class Tap:
    """Everything the host saw, by what it was."""

    def __init__(self) -> None:
        self.seen: dict[str, bytearray] = defaultdict(bytearray)
        self._lock = threading.Lock()

    def agent(self, keep_id: str, event: str, stream: int, data: bytes) -> None:
        with self._lock:
            self.seen[event] += data

    def channel(self, event: str, stream: int, data: bytes) -> None:
        self.agent("", event, stream, data)

    def everything(self) -> bytes:
        return b"".join(bytes(data) for data in self.seen.values())


def marks(wasm: bytes) -> dict[str, bytes]:
    return {
        "workload bytes": wasm[len(wasm) // 2 : len(wasm) // 2 + 48],
        "config": CONFIG_MARK.encode(),
        "argument": ARG_MARK.encode(),
        "secret": SECRET,
        "output": f"argv[1]={ARG_MARK}\n".encode(),
    }


def test_a_deploy_shows_the_host_nothing_but_ciphertext(make_agent: AgentFactory, tmp_path: Path) -> None:
    tap = Tap()
    wasm = workload("args_env").read_bytes()
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "main.wasm").write_bytes(wasm)
    (folder / "Enarx.toml").write_text(f'args = ["{ARG_MARK}"]\n[env]\nMARK = "{CONFIG_MARK}"\n' + STDIO)
    (tmp_path / "secret").write_bytes(SECRET)
    policy = tmp_path / "dev.toml"
    policy.write_text("allow_unattested = true\n")
    agent = make_agent({"nil": NilBackend()}, warm={"nil": 1}, tap=tap.agent)
    with running(agent, unix=tmp_path / "agent.sock") as url:
        secret = f"TOKEN=@{tmp_path / 'secret'}"
        result = motte("deploy", "--agent", url, "--policy", str(policy), "--secret-env", secret, str(folder))
    assert result.returncode == 0, result.stderr
    output = result.stdout
    # the tenant got it all ...
    assert f"argv[1]={ARG_MARK}\n".encode() in output and f"env:MARK={CONFIG_MARK}".encode() in output
    assert b"env:TOKEN=" + SECRET in output
    # ... through a host that saw every byte of it go by, and none of it in the clear
    assert {"channel-to-keep", "channel-from-keep", "ws-from-tenant", "ws-to-tenant"} <= set(tap.seen)
    assert len(tap.seen["ws-from-tenant"]) > len(wasm)  # the workload did pass through the tap
    seen = tap.everything()
    found = [name for name, mark in marks(wasm).items() if mark in seen]
    assert found == []


def test_the_same_tap_sees_everything_in_a_run(tmp_path: Path) -> None:
    # The control: motte run hands the host the workload, its config and its output.
    tap = Tap()
    wasm = workload("args_env").read_bytes()
    config = WorkloadConfig(args=[ARG_MARK], env={"MARK": CONFIG_MARK, "TOKEN": SECRET.decode()})
    keep = NilBackend().launch(LaunchSpec(memory_bytes=256 << 20, channel_tap=tap.channel))
    out = tmp_path / "out"
    try:
        with out.open("wb") as sink:
            result = run_workload(keep, RunRequest(wasm, config), HostStdio(stdout=sink.fileno()))
    finally:
        keep.close()
    assert result.status == 0
    seen = tap.everything()
    found = [name for name, mark in marks(wasm).items() if mark in seen]
    assert found == list(marks(wasm))
