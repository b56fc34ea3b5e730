"""The wasmtime engine inside the keep, and its compiled-module cache.

A compiled module is machine code: loading one (``Module.deserialize``) trusts it completely. So
the cache is only ever written by the keep itself, lives in a directory only this user can write,
and is keyed by the SHA-256 of the module *and* everything that shapes the machine code (the
wasmtime version, the engine settings, the CPU architecture). A stale or foreign entry is simply
recompiled. The directory is opened without following a symlink and every check is made on what
was opened (the directory's descriptor, then the entry's, relative to it), so nothing can be
swapped in between the check and the load.
"""

from __future__ import annotations

import contextlib
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

    def _open_directory(self) -> int | None:
        """The cache directory, opened (never through a symlink) and checked on that descriptor;
        None when there is none to use. The caller closes it."""
        if self.directory is None:
            return None
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        # Another user who can write here could plant machine code for us to run.
        if not _ours_alone(os.fstat(fd)):
            os.close(fd)
            return None
        return fd

    def load(self, engine: wasmtime.Engine, wasm: bytes, digest: str) -> CompiledModule:
        directory = self._open_directory()
        if directory is None:
            return CompiledModule(wasmtime.Module(engine, wasm), digest, False)
        name = f"{self.key(digest)}.cwasm"
        try:
            cached = _read_entry(directory, name)
            if cached is not None:
                try:
                    return CompiledModule(wasmtime.Module.deserialize(engine, cached), digest, True)
                except wasmtime.WasmtimeError:
                    with contextlib.suppress(OSError):  # from another CPU or engine build: recompile
                        os.unlink(name, dir_fd=directory)
            module = wasmtime.Module(engine, wasm)
            _store(directory, name, module.serialize())
            return CompiledModule(module, digest, False)
        finally:
            os.close(directory)


def _ours_alone(info: os.stat_result) -> bool:
    return info.st_uid == os.getuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _read_entry(directory: int, name: str) -> bytes | None:
    """The bytes of the cache entry ``name`` in ``directory``, if it is a regular file of ours that
    only we can write (checked on the descriptor it is read from); else None."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as file:
        try:
            info = os.fstat(fd)
            return file.read() if stat.S_ISREG(info.st_mode) and _ours_alone(info) else None
        except OSError:
            return None


def _store(directory: int, name: str, data: bytes | bytearray) -> None:
    temporary = f".tmp-{os.urandom(8).hex()}.cwasm"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=directory)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        # atomic: concurrent runs never see a partial file
        os.replace(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
    except OSError:
        with contextlib.suppress(OSError):  # the cache is an optimisation: a full disk must not fail the run
            os.unlink(temporary, dir_fd=directory)
