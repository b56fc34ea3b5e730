"""A real containerd for one test session: its own root, state and socket under a temp dir.

``ctr`` runs containers through the runc shim with ``--runc-binary`` naming ``motte-oci`` (or runc
itself, for the baseline). Needs root and Debian's ``containerd`` (``dev/setup --system``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.oci.image import write_image

NAMESPACE = "motte-test"
BUSYBOX = "/bin/busybox"
NIL = ("--annotation", "motte.backend=nil")  # the strongest backend boots a VM: slow under emulation
MOTTE_OCI = str(Path(sys.executable).with_name("motte-oci"))
START_TIMEOUT = 30.0


def unavailable() -> str | None:
    """Why containerd cannot run here (None if it can)."""
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        return "containerd is not installed (dev/setup --system installs Debian's)"
    if os.geteuid() != 0:
        return "containerd needs root"
    if not Path(MOTTE_OCI).exists():
        return f"{MOTTE_OCI} is missing (dev/setup installs motte's entry points)"
    return None


class Containerd:
    def __init__(self, base: Path):
        self.base = base
        self.address = str(base / "containerd.sock")
        self.runc_root = str(base / "runc")  # where motte-oci (or runc) keeps container state
        self.log = base / "containerd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Containerd:
        config = self.base / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{self.base / "root"}"\n'
            f'state = "{self.base / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.address}"\n'
            f'[ttrpc]\n  address = "{self.address}.ttrpc"\n'
        )
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=log,
                                            start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while self.ctr("version").returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.shut_down()
                raise RuntimeError(f"containerd did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        return self

    def ctr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["ctr", "--address", self.address, "--namespace", NAMESPACE, *args],
                              capture_output=True, timeout=timeout, check=False)

    def run_args(self, runtime: str = MOTTE_OCI) -> list[str]:
        """``ctr run`` flags that run a container through the runc shim with ``runtime``."""
        return ["run", "--runc-binary", runtime, "--runc-root", self.runc_root]

    def import_image(self, name: str, files: dict[str, bytes], entrypoint: list[str], env: tuple[str, ...] = ()) -> str:
        """Build the image ``name`` (e.g. ``docker.io/motte/hello:1``) and import it: its name."""
        path = self.base / f"image-{len(list(self.base.glob('image-*')))}.tar"
        write_image(path, name, files, entrypoint, env)
        imported = self.ctr("image", "import", str(path))
        assert imported.returncode == 0, imported.stderr.decode()
        return name

    def task(self, container_id: str) -> tuple[int, str] | None:
        """The task's init pid and status (RUNNING, STOPPED...), from ``ctr task ls``; None if it has none."""
        for line in self.ctr("task", "ls").stdout.decode().splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == container_id:
                return int(fields[1]), fields[2]
        return None

    def stop(self, container_id: str, timeout: float = 20) -> None:
        """``ctr task kill`` (SIGTERM), wait for the task to stop, then delete it and its container."""
        killed = self.ctr("task", "kill", container_id)
        assert killed.returncode == 0, killed.stderr.decode()
        deadline = time.monotonic() + timeout
        while (task := self.task(container_id)) is not None and task[1] != "STOPPED" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert task is not None and task[1] == "STOPPED", f"{container_id} did not stop: {task}"
        deleted = self.ctr("task", "delete", container_id)
        assert deleted.returncode == 0, deleted.stderr.decode()
        assert self.ctr("container", "delete", container_id).returncode == 0

    def shut_down(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"
