"""motte-oci's command line as containerd's runc shim calls it (go-runc's argument shapes), with
this test as the subreaper the shim is: it reaps the init process and reads its exit status."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.net.conftest import free_port, listen_toml
from tests.oci.containerd import MOTTE_OCI
from tests.workloads import workload

PR_SET_CHILD_SUBREAPER = 36


@pytest.fixture(autouse=True, scope="module")
def subreaper() -> None:
    assert ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1) == 0


class Runtime:
    def __init__(self, base: Path):
        self.root = base / "root"
        self.log = base / "log.json"
        self.base = base

        self.pids: list[int] = []

    def __call__(self, *args: str, stdout: int | None = None) -> subprocess.CompletedProcess[bytes]:
        # Files, not pipes: the init process keeps create's stdio, so a pipe would not see its end.
        command = [MOTTE_OCI, "--root", str(self.root), "--log", str(self.log), "--log-format", "json", *args]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=out if stdout is None else stdout,
                                  stderr=err, timeout=60, check=False)
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(command, done.returncode, out.read(), err.read())

    def bundle(self, name: str, *args: str) -> Path:
        bundle = self.base / f"bundle-{name}"
        (bundle / "rootfs").mkdir(parents=True)
        (bundle / "rootfs" / f"{name}.wasm").write_bytes(workload(name).read_bytes())
        config = {"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "annotations": {"motte.backend": "nil"},
                  "process": {"args": [f"/{name}.wasm", *args], "env": [], "cwd": "/"}}
        (bundle / "config.json").write_text(json.dumps(config))
        return bundle

    def create(self, name: str, container_id: str, *args: str, stdout: int | None = None) -> int:
        bundle = self.bundle(name, *args)
        created = self("create", "--bundle", str(bundle), "--pid-file", str(bundle / "init.pid"), container_id,
                       stdout=stdout)
        assert created.returncode == 0, created.stderr.decode()
        pid = int((bundle / "init.pid").read_text())
        self.pids.append(pid)
        return pid

    def state(self, container_id: str) -> dict[str, object]:
        shown = self("state", container_id)
        assert shown.returncode == 0, shown.stderr.decode()
        state: dict[str, object] = json.loads(shown.stdout)
        return state


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    runtime = Runtime(tmp_path)
    yield runtime
    for pid in runtime.pids:  # a failed test leaves no init process waiting for its start
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def _reap(pid: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reaped, status = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return status
        time.sleep(0.01)
    raise AssertionError(f"init process {pid} did not end")


def test_create_start_state_delete(runtime: Runtime) -> None:
    read_end, write_end = os.pipe()
    pid = runtime.create("args_env", "c1", "hello", stdout=write_end)
    os.close(write_end)
    state = runtime.state("c1")
    assert (state["status"], state["pid"], state["id"], state["ociVersion"]) == ("created", pid, "c1", "1.0.2")
    assert runtime("start", "c1").returncode == 0
    assert os.waitstatus_to_exitcode(_reap(pid)) == 0
    with os.fdopen(read_end, "rb") as output:
        assert b"argv[1]=hello\n" in output.read()
    assert runtime.state("c1")["status"] == "stopped"
    assert runtime("start", "c1").returncode == 1  # not created any more
    assert runtime("delete", "c1").returncode == 0
    gone = runtime("state", "c1")
    assert gone.returncode == 1 and b"does not exist" in gone.stderr
    last = json.loads(runtime.log.read_text().splitlines()[-1])
    assert last["level"] == "error" and "does not exist" in last["msg"]
    assert runtime("delete", "--force", "c1").returncode == 0  # as runc: forced gone is gone


def test_exit_status_and_kill_by_signal(runtime: Runtime) -> None:
    pid = runtime.create("exit", "exits", "7")
    assert runtime("start", "exits").returncode == 0
    assert os.waitstatus_to_exitcode(_reap(pid)) == 7
    assert runtime("delete", "exits").returncode == 0
    pid = runtime.create("spin", "spins")
    assert runtime("start", "spins").returncode == 0
    assert runtime.state("spins")["status"] == "running"
    keeps = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    refused = runtime("delete", "spins")
    assert refused.returncode == 1 and b"running" in refused.stderr
    assert runtime("kill", "spins", "15").returncode == 0
    status = _reap(pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
    assert all(not Path(f"/proc/{p}").exists() for p in keeps), "the keep ended with its container"
    not_running = runtime("kill", "spins", "SIGTERM")
    assert not_running.returncode == 1 and b"not running" in not_running.stderr
    assert runtime("delete", "spins").returncode == 0
    assert os.listdir(runtime.root) == []


def test_created_container_can_be_deleted_unstarted(runtime: Runtime) -> None:
    pid = runtime.create("hello", "idle")
    listed = json.loads(runtime("list", "--format", "json").stdout)
    assert [(c["id"], c["status"]) for c in listed] == [("idle", "created")]
    assert json.loads(runtime("ps", "--format", "json", "idle").stdout) == [pid]
    assert runtime("delete", "idle").returncode == 0
    assert os.WIFSIGNALED(_reap(pid))


def test_refusals_leave_nothing(runtime: Runtime) -> None:
    bundle = runtime.bundle("hello")
    (bundle / "rootfs" / "hello.wasm").write_bytes(b"not wasm")
    bad = runtime("create", "--bundle", str(bundle), "bad")
    assert bad.returncode == 1 and b"not a WebAssembly module" in bad.stderr
    assert not (runtime.root / "bad").exists()
    pid = runtime.create("exit", "twice")
    again = runtime("create", "--bundle", str(runtime.base / "bundle-exit"), "twice")
    assert again.returncode == 1 and b"already exists" in again.stderr
    assert runtime("delete", "--force", "twice").returncode == 0
    _reap(pid)
    exec_ = runtime("exec", "--process", "/tmp/p.json", "twice")
    assert exec_.returncode == 1 and b"exec is not supported" in exec_.stderr
    assert runtime("create", "--bundle", str(bundle), "../escape").returncode == 1


def test_version_is_runcs_three_lines(runtime: Runtime) -> None:
    lines = runtime("--version").stdout.decode().splitlines()
    assert len(lines) == 3 and lines[0].startswith("motte-oci version ") and lines[2].startswith("spec: ")


def test_runcs_argument_shapes_and_mistakes(runtime: Runtime) -> None:
    assert b"Usage: motte-oci" in runtime("--help").stdout
    assert b"--force" in runtime("delete", "--help").stdout
    listed = runtime("-root", str(runtime.root), "list", "-f", "json")  # Go's flags: one dash or two
    assert (listed.returncode, json.loads(listed.stdout)) == (0, [])
    for args, error in [(("kill",), b"expected CONTAINER_ID [SIGNAL]"), (("delete", "--bogus", "c"), b"unknown option"),
                        (("create", "--bundle"), b"needs a value"), (("frobnicate",), b"unknown command"),
                        (("kill", "c", "SIGNOPE", "extra"), b"got 3 argument(s)")]:
        refused = runtime(*args)
        assert refused.returncode == 1 and error in refused.stderr, (args, refused.stderr)


def test_a_network_namespace_that_cannot_be_joined_fails_create(runtime: Runtime) -> None:
    bundle = runtime.bundle("hello")
    config = json.loads((bundle / "config.json").read_text())
    config["linux"] = {"namespaces": [{"type": "network", "path": str(bundle / "config.json")}]}
    (bundle / "config.json").write_text(json.dumps(config))
    refused = runtime("create", "--bundle", str(bundle), "nons")
    assert refused.returncode == 1 and b"is not a network namespace" in refused.stderr
    assert not (runtime.root / "nons").exists()


def test_the_images_enarx_toml_declares_the_sockets_bound_at_create(runtime: Runtime) -> None:
    bundle = runtime.bundle("net_echo")
    port = free_port()
    (bundle / "rootfs" / "Enarx.toml").write_text(listen_toml(port, prot="tcp"))  # beside /net_echo.wasm
    created = runtime("create", "--bundle", str(bundle), "--pid-file", str(bundle / "init.pid"), "plain")
    assert created.returncode == 0, created.stderr.decode()
    runtime.pids.append(int((bundle / "init.pid").read_text()))
    assert b"warning: listen socket 'test' uses plaintext TCP" in created.stderr  # said out loud, as motte run does
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # bound (no namespace in config.json: the host's) before the workload starts
    assert runtime("delete", "--force", "plain").returncode == 0
