"""The wasmtime engine inside the keep, and its compiled-module cache.

A compiled module is machine code: loading one (``Module.deserialize``) trusts it completely. So
the cache is only ever written by the keep itself, lives in a directory only this user can write,
and is keyed by the SHA-256 of the module *and* everything that shapes the machine code (the
wasmtime version, the engine settings, the CPU architecture). A stale or foreign entry is simply
recompiled.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import NamedTuple

import wasmtime
from wasmtime import _ffi as ffi

from motte.keep.memory_limit import MemoryLimit

WASMTIME_VERSION = "50.0.1"  # pinned in pyproject.toml; part of the cache key


def engine_settings(interruptible: bool) -> str:
    """The settings that shape compiled code; part of the cache key."""
    return f"epoch_interruption={int(interruptible)};opt=speed;memory_may_move=0;host_memory=1;cow=0;cranelift"


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
    def __init__(self, directory: str | os.PathLike[str] | None, settings: str = engine_settings(False)):
        self.directory = Path(directory) if directory else None
        self.settings = settings

    def key(self, digest: str) -> str:
        material = f"{digest}|wasmtime={WASMTIME_VERSION}|{self.settings}|{os.uname().machine}"
        return hashlib.sha256(material.encode()).hexdigest()

    def _usable_directory(self) -> Path | None:
        if self.directory is None:
            return None
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = self.directory.stat()
        except OSError:
            return None
        # Another user who can write here could plant machine code for us to run.
        if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return None
        return self.directory

    def load(self, engine: wasmtime.Engine, wasm: bytes, digest: str) -> CompiledModule:
        directory = self._usable_directory()
        path = directory / f"{self.key(digest)}.cwasm" if directory else None
        if path is not None and path.exists():
            try:
                return CompiledModule(wasmtime.Module.deserialize_file(engine, str(path)), digest, True)
            except wasmtime.WasmtimeError:
                path.unlink(missing_ok=True)  # from another CPU or engine build: recompile
        module = wasmtime.Module(engine, wasm)
        if path is not None:
            self._store(path, module.serialize())
        return CompiledModule(module, digest, False)

    @staticmethod
    def _store(path: Path, data: bytes | bytearray) -> None:
        temporary = path.with_name(f".tmp-{os.urandom(8).hex()}.cwasm")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.replace(temporary, path)  # atomic: concurrent runs never see a partial file
        except OSError:
            temporary.unlink(missing_ok=True)  # the cache is an optimisation: a full disk must not fail the run
