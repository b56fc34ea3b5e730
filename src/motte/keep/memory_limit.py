"""The workload's memory cap, enforced by motte's own linear-memory allocator and the store's limits.

wasmtime's store limits refuse a ``memory.grow`` past the cap silently (the guest sees -1 and the
C API says nothing), so a workload that shrugs it off, or aborts, would look like any other exit.
motte therefore supplies the memory itself (wasmtime's host memory creator): the reservation is an
``mmap`` of inaccessible pages, growing makes pages accessible, and a grow past the cap is refused
*and recorded*, so the runtime can end the workload and say why. wasmtime's GC heap is such a
memory too, so it counts against the cap.

Tables are wasmtime's own, capped by the store's limits: together they may hold
:func:`table_bytes` of elements, on top of the linear memory. wasmtime answers a ``table.grow``
past the cap with -1 and says nothing to the embedder (a grow that jumps past the cap leaves no
trace in the table's size either), so the keep guards every ``table.grow`` of the module before
compiling it: the guard records a refused grow and traps (:mod:`motte.keep.table_guard`), and the
runtime ends the workload as for a refused memory grow. The store also holds one instance and a
few tables and memories at most.
"""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Callable
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi

_MAP_NORESERVE = 0x4000
_PROT_NONE = 0  # not exported by the mmap module
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value
TABLE_ELEMENT_SIZE = 8  # bytes a table element takes in wasmtime (a funcref is a pointer)
MAX_TABLE_BYTES = 16 << 20  # 2M elements: far more than compilers emit
MAX_TABLES = 4  # compilers emit one (wasm-bindgen two); each gets an equal share of table_bytes
MAX_MEMORIES = 16  # each reserves address space (not memory): bounded too


def table_bytes(limit: int) -> int:
    """What a workload with memory limit ``limit`` may hold in tables: a sixteenth of it, at most 16 MiB."""
    return min(limit // 16, MAX_TABLE_BYTES)


class _LinearMemory:
    def __init__(self, capacity: int, guard: int, initial: int):
        self.capacity = capacity  # what the memory may grow to; the guard pages after it stay inaccessible
        self.reserve = capacity + guard
        base = _libc.mmap(None, self.reserve, _PROT_NONE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE, -1, 0)
        if base in (None, _MAP_FAILED):
            raise MemoryError(f"cannot reserve {self.reserve} bytes of address space")
        self.base: int = base
        self.size = 0
        self.grow(initial)

    def grow(self, new_size: int) -> None:
        if new_size > self.capacity:
            raise MemoryError("beyond the reservation")
        # Fresh anonymous pages read as zero, as wasm requires.
        readable = mmap.PROT_READ | mmap.PROT_WRITE
        if new_size > self.size and _libc.mprotect(self.base + self.size, new_size - self.size, readable):
            raise MemoryError(f"mprotect failed (errno {ctypes.get_errno()})")
        self.size = new_size

    def release(self) -> None:
        _libc.munmap(self.base, self.reserve)


def _never_raise(callback: Callable[..., int]) -> Callable[..., int]:
    # An exception escaping into wasmtime would abort the process: turn it into an error result.
    def guarded(*args: Any) -> int:
        try:
            return callback(*args)
        except Exception as exc:
            return _error(f"keep memory allocator failed: {type(exc).__name__}: {exc}")

    return guarded


def _error(message: str) -> int:
    raw = message.encode()
    return ctypes.cast(ffi.wasmtime_error_new(raw), ctypes.c_void_p).value or 0


class MemoryLimit:
    """Caps the total linear memory of one engine's instances at ``limit`` bytes.

    ``on_refusal`` is called (once) when a grow is refused; ``refused`` stays true afterwards.
    """

    def __init__(self, limit: int, on_refusal: Callable[[int], None] | None = None):
        self.limit = limit
        self.refused = False
        self.on_refusal = on_refusal
        self.table_elements = table_bytes(limit) // TABLE_ELEMENT_SIZE // MAX_TABLES  # per table
        self._memories: dict[int, _LinearMemory] = {}
        self._next = 1
        # The ctypes thunks must outlive the engine: they are attributes of this object, which the
        # runtime keeps for the engine's lifetime.
        self._get = ffi.wasmtime_memory_get_callback_t(self._get_memory)
        self._grow = ffi.wasmtime_memory_grow_callback_t(_never_raise(self._grow_memory))
        self._new = ffi.wasmtime_new_memory_callback_t(_never_raise(self._new_memory))
        self._finalize_memory = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(self._release)
        self._finalize_creator = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _env: None)
        creator: Any = ffi.wasmtime_memory_creator_t()
        creator.env = None
        creator.new_memory = self._new
        creator.finalizer = self._finalize_creator
        self._creator = creator

    def install(self, config: wasmtime.Config) -> None:
        ffi.wasmtime_config_host_memory_creator_set(config.ptr(), ctypes.byref(self._creator))

    def limit_store(self, store: wasmtime.Store) -> None:
        """Cap what ``store`` holds besides linear memory: its tables' elements, and how many
        instances, tables and memories it has (the runtime instantiates one module in it)."""
        store.set_limits(table_elements=self.table_elements, instances=1, tables=MAX_TABLES, memories=MAX_MEMORIES)

    def in_use(self) -> int:
        return sum(memory.size for memory in self._memories.values())

    def _refuse(self, wanted: int) -> None:
        if not self.refused:
            self.refused = True
            if self.on_refusal is not None:
                self.on_refusal(wanted)

    def _new_memory(self, _env: Any, _type: Any, minimum: int, _maximum: int, reserved: int, guard: int,
                    out: Any) -> int:
        if self.in_use() + minimum > self.limit:
            self._refuse(minimum)
            return _error(f"memory minimum size of {minimum} bytes exceeds the memory limit of {self.limit} bytes")
        try:
            memory = _LinearMemory(max(reserved, minimum), guard, minimum)
        except MemoryError as exc:
            return _error(f"cannot create linear memory: {exc}")
        key = self._next
        self._next += 1
        self._memories[key] = memory
        out[0].env = key
        out[0].get_memory = self._get
        out[0].grow_memory = self._grow
        out[0].finalizer = self._finalize_memory
        return 0

    def _get_memory(self, env: Any, size: Any, maximum: Any) -> int:
        memory = self._memories[env or 0]
        size[0] = memory.size
        # Report the whole reservation as the maximum, so that wasmtime asks _grow_memory about
        # every grow, including the ones past the limit, which are refused and recorded there.
        maximum[0] = memory.capacity
        return memory.base

    def _grow_memory(self, env: Any, new_size: int) -> int:
        memory = self._memories[env or 0]
        if self.in_use() - memory.size + new_size > self.limit:
            self._refuse(new_size)
            return _error("memory limit reached")
        try:
            memory.grow(new_size)
        except MemoryError as exc:
            return _error(str(exc))
        return 0

    def _release(self, env: Any) -> None:
        memory = self._memories.pop(env or 0, None)
        if memory is not None:
            memory.release()
