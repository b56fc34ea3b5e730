"""The wasmtime engine inside the keep, and its compiled-module cache.

A compiled module is machine code: loading one (``Module.deserialize``) trusts it completely. So
the cache is keyed by the SHA-256 of the module *and* everything that shapes the machine code
(the wasmtime version, the engine settings, the CPU architecture), and only ever holds what a keep
compiled: a nil keep's is a directory only this user can write
(:class:`motte.shared.module_store.DirectoryStore`); a kvm keep's is served by its host, which
controls that keep anyway; an SNP keep seals what it stores (:mod:`motte.keep.sealing`). A stale
or foreign entry is simply recompiled.

What is compiled is the module with its ``table.grow`` instructions guarded
(:mod:`motte.keep.table_guard`), so a cached artefact is already guarded.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import NamedTuple

import wasmtime
from wasmtime import _ffi as ffi

from motte.keep.memory_limit import MemoryLimit
from motte.keep.module_stores import MappedStore
from motte.shared.module_store import ModuleStore

WASMTIME_VERSION = "50.0.1"  # pinned in pyproject.toml; part of the cache key


def engine_settings(interruptible: bool) -> str:
    """The settings that shape compiled code; part of the cache key."""
    return (f"epoch_interruption={int(interruptible)};opt=speed;memory_may_move=0;host_memory=1;cow=0;cranelift;"
            "table_guard=2")


def make_engine(interruptible: bool, memory: MemoryLimit) -> wasmtime.Engine:
    """An engine whose linear memories come from ``memory`` (which enforces the cap).

    ``interruptible`` compiles in the epoch checks a --timeout deadline needs; they cost a few
    percent in tight loops, so workloads without a deadline go without."""
    config = wasmtime.Config()
    config.epoch_interruption = interruptible
    config.cranelift_opt_level = "speed"
    config.memory_may_move = False  # lets host calls cache the memory base (see GuestMemory)
    # Copy-on-write memory images need wasmtime's own mmap memories; motte's allocator (the
    # memory cap) replaces those, so initial data is copied in instead.
    ffi.wasmtime_config_memory_init_cow_set(config.ptr(), False)
    memory.install(config)
    return wasmtime.Engine(config)


class CompiledModule(NamedTuple):
    module: wasmtime.Module
    digest: str  # SHA-256 of the wasm bytes
    from_cache: bool


class ModuleCache:
    """Compiled modules by key, in ``store`` (None: compile every time)."""

    def __init__(self, store: ModuleStore | None, settings: str = engine_settings(False)):
        self.store = store
        self.settings = settings

    def key(self, digest: str) -> str:
        material = f"{digest}|wasmtime={WASMTIME_VERSION}|{self.settings}|{os.uname().machine}"
        return hashlib.sha256(material.encode()).hexdigest()

    def load(self, engine: wasmtime.Engine, wasm: bytes | Callable[[], bytes], digest: str) -> CompiledModule:
        """The module whose SHA-256 is ``digest``: from the store, else compiled from ``wasm`` (the
        bytes, or what fetches them: on a hit they are never needed)."""
        if self.store is None:
            return CompiledModule(compile_module(engine, _bytes(wasm)), digest, False)
        key = self.key(digest)
        try:
            cached = _stored(engine, self.store, key)
            if cached is not None:
                return CompiledModule(cached, digest, True)
            module = compile_module(engine, _bytes(wasm))
            self.store.put(key, module.serialize())
            return CompiledModule(module, digest, False)
        finally:
            self.store.close()


def compile_module(engine: wasmtime.Engine, wasm: bytes) -> wasmtime.Module:
    """``wasm`` compiled, its table growth guarded."""
    from motte.keep.table_guard import guard_table_growth  # only on a cache miss: not on a cached start

    return wasmtime.Module(engine, guard_table_growth(engine, wasm))


def _stored(engine: wasmtime.Engine, store: ModuleStore, key: str) -> wasmtime.Module | None:
    """The module ``store`` holds under ``key``; None if none, or if it does not load (from another
    CPU or engine build: the caller recompiles it and replaces it)."""
    try:
        if isinstance(store, MappedStore):
            mapped = store.get_mapped(key)
            if mapped is None:
                return None
            with mapped:
                return wasmtime.Module.deserialize_file(engine, mapped.path)
        cached = store.get(key)
        return None if cached is None else wasmtime.Module.deserialize(engine, cached)
    except wasmtime.WasmtimeError:
        return None


def _bytes(wasm: bytes | Callable[[], bytes]) -> bytes:
    return wasm if isinstance(wasm, bytes) else wasm()
