"""The compiled-module cache: a second run of the same module skips compilation."""

from __future__ import annotations

import os
from pathlib import Path

import wasmtime

from motte.host.backends import get_backend
from motte.host.backends.base import LaunchSpec
from motte.host.session import HostStdio, RunRequest, run_workload
from motte.keep.engine import ModuleCache, engine_settings, make_engine
from motte.keep.memory_limit import MemoryLimit
from motte.shared.enarx_config import default_config
from motte.shared.module_store import DirectoryStore

#: wasmtime calls a MemoryLimit's callbacks until the last engine made with it is freed (the memory
#: creator's finalizer runs then), so it must outlive them: these tests' engines share one that
#: lives as long as the process. A temporary one would be freed by the next garbage collection
#: (its callbacks refer back to it), and freeing the engine later would call freed memory.
MEMORY = MemoryLimit(1 << 30)


def _run(wasm: bytes, cache: Path, sink: int) -> bool | None:
    keep = get_backend("nil").launch(LaunchSpec(memory_bytes=1 << 30))
    try:
        result = run_workload(keep, RunRequest(wasm, default_config(), cache_dir=str(cache)), HostStdio(stdout=sink))
    finally:
        keep.close()
    assert (result.reason, result.status) == ("exit", 0)
    return result.cached


def test_second_run_uses_the_cache(tmp_path: Path, wasm) -> None:
    module = Path(wasm("hello")).read_bytes()
    sink = os.open(os.devnull, os.O_WRONLY)
    try:
        assert _run(module, tmp_path / "cache", sink) is False
        assert len(list((tmp_path / "cache").glob("*.cwasm"))) == 1
        assert _run(module, tmp_path / "cache", sink) is True
    finally:
        os.close(sink)


def test_cache_key_covers_engine_settings_and_module() -> None:
    cache = ModuleCache(None, engine_settings(False))
    assert cache.key("a" * 64) != cache.key("b" * 64)
    assert cache.key("a" * 64) != ModuleCache(None, engine_settings(True)).key("a" * 64)
    assert len(cache.key("a" * 64)) == 64


def test_a_corrupt_entry_is_recompiled(tmp_path: Path, wasm) -> None:
    engine = make_engine(False, MEMORY)
    module = Path(wasm("hello")).read_bytes()
    import hashlib

    digest = hashlib.sha256(module).hexdigest()
    cache = ModuleCache(DirectoryStore(tmp_path))
    assert not cache.load(engine, module, digest).from_cache
    entry = next(tmp_path.glob("*.cwasm"))
    entry.write_bytes(b"garbage")
    loaded = cache.load(engine, module, digest)
    assert not loaded.from_cache and isinstance(loaded.module, wasmtime.Module)
    assert cache.load(engine, module, digest).from_cache


def test_a_cache_dir_others_can_write_is_not_trusted(tmp_path: Path, wasm) -> None:
    engine = make_engine(False, MEMORY)
    module = Path(wasm("hello")).read_bytes()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    cache = ModuleCache(DirectoryStore(shared))
    cache.load(engine, module, "0" * 64)
    assert list(shared.iterdir()) == []


def _digest(module: bytes) -> str:
    import hashlib

    return hashlib.sha256(module).hexdigest()


def test_a_cache_dir_that_is_a_symlink_is_not_used(tmp_path: Path, wasm) -> None:
    # Checked by its path, the directory would be the one the link points to at that moment.
    engine = make_engine(False, MEMORY)
    module = Path(wasm("hello")).read_bytes()
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    assert not ModuleCache(DirectoryStore(tmp_path / "link")).load(engine, module, _digest(module)).from_cache
    assert list(real.iterdir()) == []


def test_an_entry_that_is_a_symlink_or_no_regular_file_is_not_loaded(tmp_path: Path, wasm) -> None:
    engine = make_engine(False, MEMORY)
    module = Path(wasm("hello")).read_bytes()
    cache = ModuleCache(DirectoryStore(tmp_path / "cache"))
    assert not cache.load(engine, module, _digest(module)).from_cache
    entry = next((tmp_path / "cache").glob("*.cwasm"))
    elsewhere = tmp_path / "elsewhere.cwasm"
    entry.rename(elsewhere)
    entry.symlink_to(elsewhere)  # a valid compiled module, but not one in the cache directory
    assert not cache.load(engine, module, _digest(module)).from_cache
    assert not entry.is_symlink() and cache.load(engine, module, _digest(module)).from_cache  # replaced
    entry.unlink()
    os.mkfifo(entry)  # opened without O_NONBLOCK, this would wait for a writer for ever
    assert not cache.load(engine, module, _digest(module)).from_cache
