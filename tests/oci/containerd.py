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

NAMESPACE = "motte-test"
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
                self.stop()
                raise RuntimeError(f"containerd did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        return self

    def ctr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["ctr", "--address", self.address, "--namespace", NAMESPACE, *args],
                              capture_output=True, timeout=timeout, check=False)

    def run_args(self, runtime: str = MOTTE_OCI) -> list[str]:
        """``ctr run`` flags that run a container through the runc shim with ``runtime``."""
        return ["run", "--runc-binary", runtime, "--runc-root", self.runc_root]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
