"""One containerd for the tests that run containers through it, with the test workloads' images."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.oci.containerd import BUSYBOX, Containerd, unavailable
from tests.workloads import workload


@pytest.fixture(scope="session")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    daemon = Containerd(tmp_path_factory.mktemp("containerd")).start()
    try:
        for name in ("hello", "exit", "args_env", "spin"):
            daemon.import_image(f"docker.io/motte/{name}:1", {f"{name}.wasm": workload(name).read_bytes()},
                                [f"/{name}.wasm"], env=("IMAGE_ENV=from-image",))
        if Path(BUSYBOX).exists():
            daemon.import_image("docker.io/motte/native:1", {"bin/busybox": Path(BUSYBOX).read_bytes()},
                                ["/bin/busybox", "echo", "native"])
        yield daemon
    finally:
        daemon.shut_down()
