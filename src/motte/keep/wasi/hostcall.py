"""Host functions on wasmtime's raw ("unchecked") calling interface, and guest memory access.

wasmtime-py's ordinary ``Linker.define_func`` boxes every argument into Python objects and costs
about 9 µs a call; the raw interface passes a flat array of 16-byte values and costs about 1 µs,
which is what lets a workload's 4 KiB writes stream at hundreds of MB/s through Python.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi

I32, I64 = "i", "I"
_VALTYPES = {I32: wasmtime.ValType.i32, I64: wasmtime.ValType.i64}
_string_at = ctypes.string_at
_u64 = ctypes.c_uint64
_IOVEC = struct.Struct("<II")  # buf, buf_len
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_memory_data = ffi.wasmtime_memory_data
_memory_size = ffi.wasmtime_memory_data_size
_c_void_p = ctypes.c_void_p
#: wasmtime_func_unchecked_callback_t with plain addresses: ctypes then passes ints, not objects.
_RawCallback = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


class GuestFault(Exception):
    """A pointer from the workload points outside its memory (reported to it as EFAULT)."""


class HostTrap(Exception):
    """Raised inside a host function to end the workload with a trap carrying ``outcome``."""

    def __init__(self, outcome: Any):
        super().__init__(str(outcome))
        self.outcome = outcome


class GuestMemory:
    """The workload's exported linear memory. Bounds are checked on every access.

    The engine is configured so memories never move (``memory_may_move = False``), and wasm
    memories never shrink: a view of the memory as it is (a ``memoryview`` over its pages) stays
    valid, and is made anew, larger, only when an access falls beyond it. A host call then costs
    no foreign-function call to locate or copy memory: slicing the view does both.
    """

    def __init__(self) -> None:
        self._context: Any = None
        self._memory: Any = None
        self._base = 0
        self._size = 0
        self._view = memoryview(b"")

    def bind(self, store: wasmtime.Store, memory: wasmtime.Memory) -> None:
        self._context = store._context()
        self._memory = ctypes.byref(memory._memory)
        self._base = ctypes.cast(_memory_data(self._context, self._memory), _c_void_p).value or 0
        self._view_all()

    def _view_all(self) -> None:
        self._size = int(_memory_size(self._context, self._memory))
        if self._size:
            self._view = memoryview((ctypes.c_char * self._size).from_address(self._base)).cast("B")

    @property
    def bound(self) -> bool:
        return self._memory is not None

    def _check(self, ptr: int, length: int) -> None:
        """``ptr + length`` lies beyond the view: fail unless the memory has grown that far."""
        if self._memory is None:
            raise GuestFault("the workload exports no memory")
        self._view_all()
        if ptr + length > self._size:
            raise GuestFault(f"range {ptr:#x}+{length} outside memory of {self._size} bytes")

    def size(self) -> int:
        return 0 if self._memory is None else int(_memory_size(self._context, self._memory))

    # ptr and length are unsigned (the calls unpack them so): no negative values here.

    def read(self, ptr: int, length: int) -> bytes:
        end = ptr + length
        if end > self._size:
            self._check(ptr, length)
        return self._view[ptr:end].tobytes()

    def write(self, ptr: int, data: bytes | bytearray | memoryview) -> None:
        end = ptr + len(data)
        if end > self._size:
            self._check(ptr, len(data))
        self._view[ptr:end] = data

    def read_u32(self, ptr: int) -> int:
        if ptr + 4 > self._size:
            self._check(ptr, 4)
        value: int = _U32.unpack_from(self._view, ptr)[0]
        return value

    def write_u32(self, ptr: int, value: int) -> None:
        if ptr + 4 > self._size:
            self._check(ptr, 4)
        _U32.pack_into(self._view, ptr, value)

    def write_u64(self, ptr: int, value: int) -> None:
        if ptr + 8 > self._size:
            self._check(ptr, 8)
        _U64.pack_into(self._view, ptr, value)

    def read_iovec(self, ptr: int) -> tuple[int, int]:
        """One (address, length) iovec."""
        if ptr + 8 > self._size:
            self._check(ptr, 8)
        return _IOVEC.unpack_from(self._view, ptr)  # ("<II": two ints)

    def read_iovecs(self, ptr: int, count: int) -> list[tuple[int, int]]:
        if count > 1024:  # IOV_MAX: bounds the work one call can ask for
            raise GuestFault("too many iovecs")
        return list(_IOVEC.iter_unpack(self.read(ptr, 8 * count)))

    def read_string(self, ptr: int, length: int) -> str:
        return self.read(ptr, length).decode("utf-8")


HostFunction = Callable[..., int | None]
#: The result a host function's failure gives the workload (an errno); it raises what is no errno.
ErrorResult = Callable[[Exception], int]


class HostFunctions:
    """Registers Python functions as raw wasm imports on a linker.

    An exception escaping a host function becomes a trap; the exception is kept in
    :attr:`pending` so the runtime can tell a deliberate end (``HostTrap``: proc_exit, deadline)
    from a bug.
    """

    def __init__(self, linker: wasmtime.Linker):
        self._linker = linker
        self._callbacks: list[Any] = []  # keeps the ctypes thunks alive as long as the linker
        self.pending: BaseException | None = None
        self.pending_call = ""  # the import whose failure ``pending`` is
        #: when set, the next host call ends the workload with a trap carrying this outcome
        self.stop: Any = None
        self._finalizer = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _: None)

    def define(self, module: str, name: str, params: str, results: str, func: HostFunction,
               error_result: ErrorResult | None = None) -> None:
        """Import ``func`` as ``module.name``; with ``error_result``, what it raises is turned into
        its result first (in the same frame: this runs on every host call)."""
        functype = wasmtime.FuncType([_VALTYPES[p]() for p in params], [_VALTYPES[r]() for r in results])
        # The arguments, unsigned, in one unpack of the raw value array (16 bytes a value, little
        # endian): cheaper than a ctypes union object per argument.
        arguments = struct.Struct("<" + "".join("I12x" if p == I32 else "Q8x" for p in params))
        unpack, size = arguments.unpack, arguments.size
        has_result = bool(results)
        owner = self

        def thunk(_env: Any, _caller: Any, values: int, _count: int) -> int:
            try:
                if owner.stop is not None:
                    raise HostTrap(owner.stop)
                try:
                    result = func(*unpack(_string_at(values, size))) if size else func()
                except Exception as exc:
                    if error_result is None:
                        raise
                    result = error_result(exc)
                if has_result:
                    _u64.from_address(values).value = int(result or 0)
                return 0
            except BaseException as exc:
                owner.pending, owner.pending_call = exc, name
                message = str(exc).encode()[:512] or b"host function failed"
                trap = ffi.wasmtime_trap_new(message, len(message))
                return ctypes.cast(trap, _c_void_p).value or 0

        callback = _RawCallback(thunk)
        self._callbacks.append(callback)
        error = ffi.wasmtime_linker_define_func_unchecked(
            self._linker.ptr(), module.encode(), len(module), name.encode(), len(name),
            functype.ptr(), ctypes.cast(callback, ffi.wasmtime_func_unchecked_callback_t), None, self._finalizer,
        )
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)

    def take_pending(self) -> BaseException | None:
        exc, self.pending = self.pending, None
        return exc
