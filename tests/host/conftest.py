"""Fixtures for the host-side tests of the micro-VM keep (image, kernel, launcher, platform).

The kernel (34 MB from apt) and the keep image (a few seconds to build) are cached across test
runs: tests that need them use the ``shared_cache`` fixture, which points MOTTE_CACHE_DIR at the
cache the developer (or CI) would use, as read before any fixture changed it, even inside a test
that gave itself a private cache.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from motte.host.paths import cache_root

#: Read at import time, i.e. before the autouse fixture swaps in a private directory.
DEFAULT_CACHE = str(cache_root())


@pytest.fixture
def shared_cache(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MOTTE_CACHE_DIR", DEFAULT_CACHE)
    return DEFAULT_CACHE


def qemu_pids(marker: str) -> set[int]:
    """PIDs of live processes whose command line contains ``marker`` (a /proc scan, no psutil)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and "qemu-system" in cmdline and state != "Z":
            pids.add(int(entry))
    return pids


def rundirs(base: str | None = None) -> set[str]:
    return {p.name for p in Path(base or tempfile.gettempdir()).glob("motte-kvm-*")}


@pytest.fixture
def no_leaks(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Fail the test if it leaves a QEMU process or a keep run directory behind.

    The test gets a private temporary directory (in-process and, through TMPDIR, for child
    processes), so that keeps of tests running in parallel (pytest-xdist) are not counted: a
    keep's QEMU command line names its run directory, which lies in that private directory.
    Short, under /tmp: the channel socket path must stay under the 108-byte unix socket limit.
    """
    base = tempfile.mkdtemp(prefix="mt-", dir="/tmp")
    monkeypatch.setattr(tempfile, "tempdir", base)
    monkeypatch.setenv("TMPDIR", base)
    try:
        yield base
        leaked_pids = qemu_pids(base)
        leaked_dirs = rundirs(base)
        assert not leaked_pids, f"QEMU processes left behind: {leaked_pids}"
        assert not leaked_dirs, f"run directories left behind: {leaked_dirs}"
    finally:
        for pid in qemu_pids(base):  # never leave a process behind, even when the test failed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)
