"""``kill -9`` of the host in the middle of a run: no keep process, no QEMU and no temporary file
outlives it (a kvm keep's run directory, which no code can remove on SIGKILL, goes at the next
launch)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from motte.host.backends.kvm.rundir import RUNDIR_PREFIX, sweep_stale_rundirs
from tests.conftest import descendants

pytestmark = pytest.mark.timeout(300)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_host_killed_mid_run_leaves_nothing_behind(backend: str, wasm, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    private_tmp = tempfile.mkdtemp(prefix="mt-", dir="/tmp")  # short: a kvm keep's socket path lives there
    env = {**os.environ, "TMPDIR": private_tmp}
    if backend == "nil":
        env["MOTTE_CACHE_DIR"] = str(tmp_path / "cache")  # the module cache, where compiling writes temp files
    # The workload writes without end, so the channel is busy when the host dies.
    process = subprocess.Popen([sys.executable, "-m", "motte", "run", "--backend", backend, wasm("writer"), "--",
                                "1000000"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        assert process.stdout is not None and len(process.stdout.read(1 << 20)) == 1 << 20
        started = descendants(process.pid)
        assert started, "the keep runs as a child of the host"
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in started):
            time.sleep(0.05)  # the kernel's parent-death signal is asynchronous
        assert [pid for pid in started if _alive(pid)] == []
        left = sorted(path.name for path in Path(private_tmp).iterdir())
        if backend == "kvm":
            assert all(name.startswith(RUNDIR_PREFIX) for name in left), left
            monkeypatch.setattr(tempfile, "tempdir", private_tmp)
            sweep_stale_rundirs()  # what the next launch does first
            left = sorted(path.name for path in Path(private_tmp).iterdir())
        assert left == []
        if backend == "nil":
            assert [path.name for path in (tmp_path / "cache").rglob(".tmp-*")] == []
    finally:
        process.kill()
        process.wait()
        shutil.rmtree(private_tmp, ignore_errors=True)
