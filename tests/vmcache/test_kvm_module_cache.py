"""A kvm keep compiles a module once: the host keeps the compiled module for it (real QEMU)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from motte.host.backends import get_backend
from motte.host.backends.base import LaunchSpec
from motte.host.platform import kvm_usable
from motte.host.session import HostStdio, RunRequest, run_workload
from motte.shared.enarx_config import default_config
from tests.host.conftest import DEFAULT_CACHE

usable, reason = kvm_usable()
pytestmark = [pytest.mark.vm, pytest.mark.skipif(not usable, reason=f"kvm backend unavailable: {reason}")]


def _run(module: bytes, cache: Path | None, out: Path) -> bool | None:
    keep = get_backend("kvm").launch(LaunchSpec(memory_bytes=256 << 20))
    sink = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        request = RunRequest(module, default_config(), memory_limit=64 << 20,
                             cache_dir=None if cache is None else str(cache))
        result = run_workload(keep, request, HostStdio(stdout=sink))
    finally:
        os.close(sink)
        keep.close()
    assert (result.reason, result.status) == ("exit", 0), result
    return result.cached


def test_a_kvm_keep_compiles_a_module_once(tmp_path: Path, wasm: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOTTE_CACHE_DIR", DEFAULT_CACHE)  # the keep image and kernel, built once
    module = Path(wasm("hello")).read_bytes()  # type: ignore[operator]
    cache = tmp_path / "modules"
    out = tmp_path / "out"
    assert _run(module, cache, out) is False
    entries = list((cache / "kvm").glob("*.cwasm"))
    assert len(entries) == 1 and entries[0].stat().st_mode & 0o077 == 0
    assert not list(cache.glob("*.cwasm")), "a VM keep's entries are kept apart from a nil keep's"
    assert _run(module, cache, out) is True

    # What the host stores it may change (a kvm host controls its keep anyway); a broken entry
    # is recompiled and replaced, never fatal.
    entries[0].write_bytes(b"not a compiled module")
    assert _run(module, cache, out) is False
    assert entries[0].stat().st_size > 1000
    assert _run(module, None, out) is False, "--no-cache: the host refuses the stream, the keep compiles"
