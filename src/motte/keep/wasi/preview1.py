"""The ``wasi_snapshot_preview1`` functions over motte's own file descriptor table.

The calls on files and directories (``fd_*``, ``path_*``) are :class:`~motte.keep.wasi.fd_calls.FdCalls`;
here are the rest (arguments, environment, clocks, random, poll, exit, sockets) and the table that
registers them all with the engine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar, NamedTuple

from motte.keep.wasi.fd_calls import MAX_IO, FdCalls
from motte.keep.wasi.files import DeadlineExceeded, WakeOn, WasiFile
from motte.keep.wasi.hostcall import I32, I64, GuestFault, GuestMemory, HostFunctions, HostTrap
from motte.shared import wasi_abi as abi
from motte.shared.wasi_abi import Errno, FdFlags, Rights, WasiError

if TYPE_CHECKING:
    from motte.keep.net.sockets import StreamSocket
    from motte.shared.endpoint import Endpoint, FdWatch

MODULE = "wasi_snapshot_preview1"
#: Longest one wait of poll_oneoff: a longer timeout (up to 2^64 ns) is waited out in turns.
MAX_WAIT_NS = 3600 * 10**9
_POLL = int(Rights.POLL_FD_READWRITE)
_SOCK_ACCEPT, _SOCK_SHUTDOWN = int(Rights.SOCK_ACCEPT), int(Rights.SOCK_SHUTDOWN)
_READ, _WRITE = int(Rights.FD_READ), int(Rights.FD_WRITE)
_CLOCK, _FD_READ, _FD_WRITE = abi.EVENT_CLOCK, abi.EVENT_FD_READ, abi.EVENT_FD_WRITE
_SUBSCRIPTION_SIZE = abi.SUBSCRIPTION_SIZE
_pack_event = abi.EVENT.pack
#: (due monotonic ns, userdata) of each clock a poll_oneoff watches
Clocks = list[tuple[int, int]]
#: (fd, whether for reading, the event that reports it ready) of each fd a poll_oneoff watches
FdWatches = list[tuple[int, bool, bytes]]


class ProcExit(NamedTuple):
    status: int


class DeadlineHit(NamedTuple):
    pass


class WaitSet(NamedTuple):
    """What a poll_oneoff waits on, gathered from the WakeOns of the files it polls."""

    wakes: list[WakeOn | None]  # what it was made of
    endpoint: Endpoint | None
    readable: list[int]
    writable: list[int]
    condition: Callable[[], bool] | None
    until: float | None  # the earliest time to look again regardless
    fds: list[FdWatch]

    @classmethod
    def of(cls, wakes: list[WakeOn | None]) -> WaitSet:
        readable: list[int] = []
        writable: list[int] = []
        conditions: list[Callable[[], bool]] = []
        fds: list[FdWatch] = []
        endpoint = None
        until = None
        for wake in wakes:
            if wake is None:
                continue
            endpoint = wake.endpoint
            if wake.readable is not None:
                readable.append(wake.readable)
            if wake.writable is not None:
                writable.append(wake.writable)
            if wake.condition is not None:
                conditions.append(wake.condition)
            if wake.until is not None:
                until = wake.until if until is None else min(until, wake.until)
            if wake.fd is not None:
                fds.append(wake.fd)
        condition = None
        if len(conditions) == 1:
            condition = conditions[0]
        elif conditions:
            condition = lambda: any(check() for check in conditions)  # noqa: E731
        return cls(wakes, endpoint, readable, writable, condition, until, fds)


class Preview1(FdCalls):
    """One workload's WASI state: arguments, environment and file descriptors."""

    def __init__(self, args: Sequence[str], env: dict[str, str], files: Sequence[WasiFile],
                 memory: GuestMemory, deadline: float | None = None,
                 before_block: Callable[[], None] | None = None):
        super().__init__(files, memory, deadline)
        self.args = [a.encode() for a in args]
        self.env = [f"{k}={v}".encode() for k, v in env.items()]
        self._before_block = before_block or (lambda: None)
        # The last poll_oneoff's subscriptions, parsed, when they had no clock, and what it waited
        # on (an event loop polls the same fds again and again).
        self._polled: tuple[bytes, FdWatches] = (b"", [])
        self._waits = WaitSet.of([])

    # ---- registration ----

    def register(self, host: HostFunctions) -> None:
        table: list[tuple[str, str, str, Callable[..., int | None]]] = [
            ("args_get", "ii", "i", self.args_get),
            ("args_sizes_get", "ii", "i", self.args_sizes_get),
            ("environ_get", "ii", "i", self.environ_get),
            ("environ_sizes_get", "ii", "i", self.environ_sizes_get),
            ("clock_res_get", "ii", "i", self.clock_res_get),
            ("clock_time_get", "iIi", "i", self.clock_time_get),
            ("fd_advise", "iIIi", "i", self.fd_advise),
            ("fd_allocate", "iII", "i", self.fd_allocate),
            ("fd_close", "i", "i", self.fd_close),
            ("fd_datasync", "i", "i", self.fd_datasync),
            ("fd_fdstat_get", "ii", "i", self.fd_fdstat_get),
            ("fd_fdstat_set_flags", "ii", "i", self.fd_fdstat_set_flags),
            ("fd_fdstat_set_rights", "iII", "i", self.fd_fdstat_set_rights),
            ("fd_filestat_get", "ii", "i", self.fd_filestat_get),
            ("fd_filestat_set_size", "iI", "i", self.fd_filestat_set_size),
            ("fd_filestat_set_times", "iIIi", "i", self.fd_filestat_set_times),
            ("fd_pread", "iiiIi", "i", self.fd_pread),
            ("fd_prestat_get", "ii", "i", self.fd_prestat_get),
            ("fd_prestat_dir_name", "iii", "i", self.fd_prestat_dir_name),
            ("fd_pwrite", "iiiIi", "i", self.fd_pwrite),
            ("fd_read", "iiii", "i", self.fd_read),
            ("fd_readdir", "iiiIi", "i", self.fd_readdir),
            ("fd_renumber", "ii", "i", self.fd_renumber),
            ("fd_seek", "iIii", "i", self.fd_seek),
            ("fd_sync", "i", "i", self.fd_sync),
            ("fd_tell", "ii", "i", self.fd_tell),
            ("fd_write", "iiii", "i", self.fd_write),
            ("path_create_directory", "iii", "i", self.path_create_directory),
            ("path_filestat_get", "iiiii", "i", self.path_filestat_get),
            ("path_filestat_set_times", "iiiiIIi", "i", self.path_filestat_set_times),
            ("path_link", "iiiiiii", "i", self.path_link),
            ("path_open", "iiiiiIIii", "i", self.path_open),
            ("path_readlink", "iiiiii", "i", self.path_readlink),
            ("path_remove_directory", "iii", "i", self.path_remove_directory),
            ("path_rename", "iiiiii", "i", self.path_rename),
            ("path_symlink", "iiiii", "i", self.path_symlink),
            ("path_unlink_file", "iii", "i", self.path_unlink_file),
            ("poll_oneoff", "iiii", "i", self.poll_oneoff),
            ("proc_exit", "i", "", self.proc_exit),
            ("proc_raise", "i", "i", self.proc_raise),
            ("sched_yield", "", "i", self.sched_yield),
            ("random_get", "ii", "i", self.random_get),
            ("sock_accept", "iii", "i", self.sock_accept),
            ("sock_recv", "iiiiii", "i", self.sock_recv),
            ("sock_send", "iiiii", "i", self.sock_send),
            ("sock_shutdown", "ii", "i", self.sock_shutdown),
        ]
        for name, params, results, func in table:
            host.define(MODULE, name, params.replace("i", I32).replace("I", I64), results, func, _errno_of)

    # ---- args, environment, clocks, random ----

    def _put_buffers(self, strings: list[bytes], ptrs: int, buf: int) -> int:
        offset = buf
        for index, value in enumerate(strings):
            self.memory.write_u32(ptrs + 4 * index, offset)
            self.memory.write(offset, value + b"\0")
            offset += len(value) + 1
        return Errno.SUCCESS

    def args_get(self, argv: int, buf: int) -> int:
        return self._put_buffers(self.args, argv, buf)

    def args_sizes_get(self, count_ptr: int, size_ptr: int) -> int:
        self.memory.write_u32(count_ptr, len(self.args))
        self.memory.write_u32(size_ptr, sum(len(a) + 1 for a in self.args))
        return Errno.SUCCESS

    def environ_get(self, environ: int, buf: int) -> int:
        return self._put_buffers(self.env, environ, buf)

    def environ_sizes_get(self, count_ptr: int, size_ptr: int) -> int:
        self.memory.write_u32(count_ptr, len(self.env))
        self.memory.write_u32(size_ptr, sum(len(e) + 1 for e in self.env))
        return Errno.SUCCESS

    _CLOCKS: ClassVar[dict[int, int]] = {
        abi.CLOCK_REALTIME: time.CLOCK_REALTIME,
        abi.CLOCK_MONOTONIC: time.CLOCK_MONOTONIC,
        abi.CLOCK_PROCESS_CPUTIME: time.CLOCK_PROCESS_CPUTIME_ID,
        abi.CLOCK_THREAD_CPUTIME: time.CLOCK_THREAD_CPUTIME_ID,
    }

    def clock_res_get(self, clock: int, res_ptr: int) -> int:
        if clock not in self._CLOCKS:
            raise WasiError(Errno.INVAL)
        self.memory.write_u64(res_ptr, max(1, int(time.clock_getres(self._CLOCKS[clock]) * 1e9)))
        return Errno.SUCCESS

    def clock_time_get(self, clock: int, _precision: int, time_ptr: int) -> int:
        if clock not in self._CLOCKS:
            raise WasiError(Errno.INVAL)
        self.memory.write_u64(time_ptr, time.clock_gettime_ns(self._CLOCKS[clock]))
        return Errno.SUCCESS

    def random_get(self, buf: int, length: int) -> int:
        if length > MAX_IO:
            raise WasiError(Errno.INVAL)
        self.memory.write(buf, os.urandom(length))  # the kernel CSPRNG (what secrets.token_bytes returns)
        return Errno.SUCCESS

    # ---- polling, process, scheduling ----

    def poll_oneoff(self, in_ptr: int, out_ptr: int, count: int, nevents_ptr: int) -> int:
        if count == 0 or count > 4096:
            raise WasiError(Errno.INVAL)
        raw = self.memory.read(in_ptr, _SUBSCRIPTION_SIZE * count)
        clocks: Clocks
        if raw == self._polled[0]:
            clocks, fds = [], self._polled[1]
        else:
            clocks, fds = self._subscriptions(raw, count)
            self._polled = (b"", []) if clocks else (raw, fds)
        self._before_block()
        events = self._poll_wait(clocks, fds)
        self.memory.write(out_ptr, b"".join(events))
        self.memory.write_u32(nevents_ptr, len(events))
        return Errno.SUCCESS

    def _subscriptions(self, raw: bytes, count: int) -> tuple[Clocks, FdWatches]:
        now = time.monotonic_ns()
        clocks: Clocks = []
        fds: FdWatches = []
        for index in range(count):
            base = index * _SUBSCRIPTION_SIZE
            userdata, tag = abi.SUBSCRIPTION_HEAD.unpack_from(raw, base)
            if tag == _CLOCK:
                clock_id, timeout, _precision, flags = abi.SUBSCRIPTION_CLOCK.unpack_from(raw, base + 16)
                if clock_id not in self._CLOCKS:
                    raise WasiError(Errno.INVAL)
                if flags & abi.SUBCLOCK_ABSTIME:
                    current = time.clock_gettime_ns(self._CLOCKS[clock_id])
                    due = now + max(0, timeout - current)
                else:
                    due = now + timeout
                clocks.append((due, userdata))
            elif tag in (_FD_READ, _FD_WRITE):
                (fd,) = abi.SUBSCRIPTION_FD.unpack_from(raw, base + 16)
                fds.append((fd, tag == _FD_READ, _pack_event(userdata, 0, tag, 0, 0)))
            else:
                raise WasiError(Errno.INVAL)
        return clocks, fds

    def _poll_wait(self, clocks: Clocks, fds: FdWatches) -> list[bytes]:
        first_due = min(due for due, _ in clocks) if clocks else None
        files = self.fds
        while True:
            events: list[bytes] = []
            wakes: list[WakeOn | None] = []  # (what to wait on, gathered while nothing is ready)
            for fd, reading, ready_event in fds:
                file = files.get(fd)
                if file is None or not file.rights_base & _POLL:
                    events.append(_failed(ready_event, Errno.BADF if file is None else file.refusal(_POLL)))
                elif file.readable_now() if reading else file.writable_now():
                    events.append(ready_event)
                elif not events:
                    wakes.append(file.wake_on(not reading))
            now = time.monotonic_ns()
            for due, userdata in clocks:
                if due <= now:
                    events.append(_pack_event(userdata, 0, _CLOCK, 0, 0))
            if events:
                return events
            wait_ns = None if first_due is None else min(first_due - now, MAX_WAIT_NS)
            if self.deadline is not None:
                left = int((self.deadline - time.monotonic()) * 1e9)
                if left <= 0:
                    raise HostTrap(DeadlineHit())
                wait_ns = left if wait_ns is None else min(wait_ns, left)
            self._wait_any(wakes, None if wait_ns is None else wait_ns / 1e9)

    def _wait_any(self, wakes: list[WakeOn | None], timeout: float | None) -> None:
        waits = self._waits
        if waits.wakes != wakes:  # (an event loop's poll mostly waits on what it waited on before)
            waits = self._waits = WaitSet.of(wakes)
        if waits.until is not None:  # e.g. a TLS handshake deadline
            left = max(0.0, waits.until - time.monotonic())
            timeout = left if timeout is None else min(timeout, left)
        if waits.endpoint is not None:
            # Waits on the channel, so a stream event (data, credit, a new connection) ends it early.
            waits.endpoint.wait(waits.readable, timeout if timeout is not None else 1.0, writable=waits.writable,
                                condition=waits.condition, fds=waits.fds)
        elif timeout is not None:
            time.sleep(max(0.0, timeout))
        else:
            time.sleep(0.01)  # nothing on the channel to wait for: re-check shortly

    def proc_exit(self, status: int) -> None:
        raise HostTrap(ProcExit(status))

    def proc_raise(self, _signal: int) -> int:
        raise WasiError(Errno.NOSYS)

    def sched_yield(self) -> int:
        os.sched_yield()
        return Errno.SUCCESS

    # ---- sockets: listen/connect files of the config (see motte.keep.net) ----

    def _socket(self, fd: int, right: int) -> StreamSocket:
        """The connected socket of ``fd``, which must have ``right``."""
        # Imported here: only workloads with sockets need the module (keep start-up time).
        from motte.keep.net.listen import Listener
        from motte.keep.net.sockets import StreamSocket

        file = self._file(fd)
        if not isinstance(file, StreamSocket):
            raise WasiError(Errno.NOTCONN if isinstance(file, Listener) else Errno.NOTSOCK)
        self._granted(fd, right)
        return file

    def sock_accept(self, fd: int, flags: int, fd_ptr: int) -> int:
        from motte.keep.net.listen import Listener
        from motte.keep.net.sockets import StreamSocket

        listener = self._file(fd)
        if not isinstance(listener, Listener):
            raise WasiError(Errno.INVAL if isinstance(listener, StreamSocket) else Errno.NOTSOCK)
        self._granted(fd, _SOCK_ACCEPT)
        self.memory.read_u32(fd_ptr)  # a bad pointer fails before a connection is taken
        connection = listener.accept(FdFlags(flags), self.deadline)
        self.memory.write_u32(fd_ptr, self._new_fd(connection))
        return Errno.SUCCESS

    def sock_recv(self, fd: int, iovs: int, count: int, riflags: int, nread_ptr: int, roflags_ptr: int) -> int:
        sock = self._socket(fd, _READ)
        if riflags & ~(abi.RIFLAGS_RECV_PEEK | abi.RIFLAGS_RECV_WAITALL):
            raise WasiError(Errno.INVAL)
        vectors = self.memory.read_iovecs(iovs, count)
        total = min(sum(length for _, length in vectors), MAX_IO)
        data = sock.recv(total, self.deadline, peek=bool(riflags & abi.RIFLAGS_RECV_PEEK),
                         waitall=bool(riflags & abi.RIFLAGS_RECV_WAITALL)) if total else b""
        self._scatter(vectors, data)
        self.memory.write_u32(nread_ptr, len(data))
        self.memory.write(roflags_ptr, b"\0\0")  # roflags: never RECV_DATA_TRUNCATED on a stream
        return Errno.SUCCESS

    def sock_send(self, fd: int, iovs: int, count: int, _siflags: int, nwritten_ptr: int) -> int:
        sock = self._socket(fd, _WRITE)
        written = sock.write(self._gather(iovs, count), self.deadline)
        self.memory.write_u32(nwritten_ptr, written)
        return Errno.SUCCESS

    def sock_shutdown(self, fd: int, how: int) -> int:
        sock = self._socket(fd, _SOCK_SHUTDOWN)
        if not how or how & ~(abi.SDFLAGS_RD | abi.SDFLAGS_WR):
            raise WasiError(Errno.INVAL)
        sock.shutdown(how)
        return Errno.SUCCESS


def _failed(ready_event: bytes, errno: int) -> bytes:
    """The event of a subscription that fails with ``errno``, made from the one that reports it ready."""
    userdata, _, kind, nbytes, flags = abi.EVENT.unpack(ready_event)
    return _pack_event(userdata, errno, kind, nbytes, flags)


def _errno_of(exc: Exception) -> int:
    """The errno a WASI call's failure gives the workload; a failure that has none is raised again."""
    if isinstance(exc, WasiError):
        return int(exc.errno)
    if isinstance(exc, GuestFault):
        return int(Errno.FAULT)
    if isinstance(exc, OSError):
        return int(abi.wasi_errno(exc))
    if isinstance(exc, DeadlineExceeded):
        raise HostTrap(DeadlineHit()) from None
    raise exc
