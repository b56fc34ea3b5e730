"""containerd runs wasm images in motte keeps: a real containerd, ``ctr``, and its runc shim
driving ``motte-oci`` (images built here from the test workloads, imported with ``ctr``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from motte.host.platform import kvm_usable
from tests.oci.containerd import BUSYBOX, NIL, Containerd, alive, children, unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")


def run(containerd: Containerd, image: str, container_id: str, *args: str) -> tuple[int, str, str]:
    done = containerd.ctr(*containerd.run_args(), "--rm", *NIL, f"docker.io/motte/{image}:1", container_id, *args)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def test_hello_prints_and_exits_zero(containerd: Containerd) -> None:
    status, out, err = run(containerd, "hello", "hello-1")
    assert (status, out) == (0, "Hello from a motte keep!\n"), err


def test_exit_status_is_the_workloads(containerd: Containerd) -> None:
    status, _, err = run(containerd, "exit", "exit-1", "/exit.wasm", "42")
    assert status == 42, err


def test_args_and_env_reach_the_workload(containerd: Containerd) -> None:
    status, out, err = run(containerd, "args_env", "args-1", "/args_env.wasm", "one", "two words")
    assert status == 0, err
    lines = out.splitlines()
    assert lines[1:3] == ["argv[1]=one", "argv[2]=two words"]
    assert "env:IMAGE_ENV=from-image" in lines


@pytest.mark.vm
@pytest.mark.skipif(not kvm_usable()[0], reason=f"kvm backend unavailable: {kvm_usable()[1]}")
def test_hello_in_a_kvm_keep(containerd: Containerd) -> None:
    """The annotation picks the micro-VM keep. (Under TCG a first keep may build its image and boot
    to snapshot it: minutes.)"""
    done = containerd.ctr(*containerd.run_args(), "--rm", "--annotation", "motte.backend=kvm",
                          "docker.io/motte/hello:1", "kvm-1", timeout=280)
    assert (done.returncode, done.stdout) == (0, b"Hello from a motte keep!\n"), done.stderr.decode()
    started = containerd.ctr(*containerd.run_args(), "-d", "--annotation", "motte.backend=kvm",
                             "docker.io/motte/spin:1", "kvm-2", timeout=280)
    assert started.returncode == 0, started.stderr.decode()
    task = containerd.task("kvm-2")
    assert task is not None
    keeps = children(task[0])
    assert [Path(f"/proc/{pid}/comm").read_text().startswith("qemu") for pid in keeps] == [True], "a VM keep"
    containerd.stop("kvm-2")
    assert not any(alive(pid) for pid in [task[0], *keeps])


def test_trap_is_reported_with_motte_status(containerd: Containerd) -> None:
    status, _, _ = run(containerd, "exit", "trap-1", "/exit.wasm", "abort")
    assert status == 134


def test_kill_stops_a_running_keep_and_delete_leaves_nothing(containerd: Containerd) -> None:
    started = containerd.ctr(*containerd.run_args(), "-d", *NIL, "docker.io/motte/spin:1", "spin-1",
                             "/spin.wasm", "--print")
    assert started.returncode == 0, started.stderr.decode()
    task = containerd.task("spin-1")
    assert task is not None
    init_pid = task[0]
    assert alive(init_pid)
    keep_pids = children(init_pid)
    assert keep_pids, "the init process holds the keep"
    containerd.stop("spin-1")  # SIGTERM
    assert not any(alive(pid) for pid in [init_pid, *keep_pids])
    left = [name for name in os.listdir(Path(containerd.runc_root) / "motte-test") if name != ".runc"]
    assert not left, "motte-oci's state is gone"


@pytest.mark.skipif(shutil.which("runc") is None or not Path(BUSYBOX).exists(), reason="needs runc and busybox")
def test_a_native_container_is_handed_to_runc(containerd: Containerd) -> None:
    """A pod's pause container is native: motte-oci hands whatever has no wasm entry point to runc."""
    status, out, err = run(containerd, "native", "native-1")
    assert (status, out) == (0, "native\n"), err
    assert not os.listdir(Path(containerd.runc_root) / "motte-test" / ".runc")
