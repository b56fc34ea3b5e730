"""Serve preopened host directories to a keep: one channel stream per ``--dir``.

The protocol is :mod:`motte.shared.hostfs`; the keep's end is :mod:`motte.keep.wasi.remote_fs`.
Here the keep is the untrusted party: every request is decoded with bounded sizes, every path is
resolved by the kernel beneath the served directory (``openat2`` with RESOLVE_BENEATH |
RESOLVE_NO_MAGICLINKS, in :mod:`motte.host.beneath`), and every failure is answered with an
errno. Whatever it sends, a keep cannot make the host act outside the directory, hold more than
``MAX_HANDLES`` files open for it, or buffer more than one message; a message whose framing is
broken ends the stream (RESET), nothing more. A directory served read-only answers every change
with ``EROFS``, as a read-only mount does.
"""

from __future__ import annotations

import fcntl
import os
import stat as stat_mod
import threading
from collections.abc import Callable, Sequence
from typing import Any

from motte.host.beneath import (
    filestat_fields,
    link_beneath,
    list_entries,
    mkdir_beneath,
    open_beneath,
    open_flags,
    readlink_beneath,
    rename_beneath,
    rmdir_beneath,
    set_times,
    set_times_beneath,
    stat_beneath,
    symlink_beneath,
    unlink_beneath,
)
from motte.shared import hostfs
from motte.shared.endpoint import ChannelClosed, Endpoint, StreamAborted, Timeout
from motte.shared.errors import MotteError
from motte.shared.hostfs import Entry, Op, Stat
from motte.shared.wasi_abi import Errno, FdFlags, WasiError, check_offset, wasi_errno

MAX_HANDLES = 1024  # files and directories one keep may hold open per served directory
READDIR_PAGE = 64 << 10  # bytes of entries per READDIR answer
READ_SIZE = 1 << 20  # bytes taken from the stream per read
STOP_POLL = 0.2  # seconds between looks at the stop flag while the keep is quiet

_WHENCE = {0: os.SEEK_SET, 1: os.SEEK_CUR, 2: os.SEEK_END}
# What a read-only directory refuses outright (writes need a handle opened for writing, which OPEN refuses).
_CHANGES = frozenset({Op.SET_SIZE, Op.SET_TIMES, Op.SET_TIMES_PATH, Op.MKDIR, Op.RMDIR, Op.UNLINK, Op.RENAME,
                      Op.LINK, Op.SYMLINK})


class _Open:
    __slots__ = ("fd", "is_dir", "listing", "readable", "writable")

    def __init__(self, fd: int, is_dir: bool, readable: bool, writable: bool):
        self.fd = fd
        self.is_dir = is_dir
        self.readable = readable
        self.writable = writable
        self.listing: list[Entry] | None = None  # READDIR's snapshot, taken at index 0


def _flag(value: int) -> bool:
    if value not in (0, 1):
        raise WasiError(Errno.INVAL)
    return bool(value)


class HostFsServer:
    """One served directory. Sans-I/O towards the channel: :meth:`receive` takes the stream's
    bytes and returns the messages to send back."""

    def __init__(self, root: str, *, max_handles: int = MAX_HANDLES, read_only: bool = False):
        try:
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise MotteError(f"cannot serve directory {root}: {exc.strerror}") from None
        self.root = root
        self.max_handles = max_handles
        self.read_only = read_only
        self._open: dict[int, _Open] = {hostfs.ROOT_HANDLE: _Open(fd, True, True, False)}
        self._next_handle = hostfs.ROOT_HANDLE + 1
        self._reader = hostfs.MessageReader()
        #: Unexpected exceptions (bugs) answered with EIO instead of ending the host: tests check it stays empty.
        self.internal_errors: list[str] = []
        self._ops: dict[Op, Callable[..., tuple[Any, ...]]] = {
            Op.OPEN: self._open_op, Op.CLOSE: self._close_op, Op.READ: self._read, Op.PREAD: self._pread,
            Op.WRITE: self._write, Op.PWRITE: self._pwrite, Op.SEEK: self._seek, Op.FSTAT: self._fstat,
            Op.STAT: self._stat, Op.SET_SIZE: self._set_size, Op.SET_TIMES: self._set_times,
            Op.SET_TIMES_PATH: self._set_times_path, Op.SET_FLAGS: self._set_flags, Op.SYNC: self._sync,
            Op.READDIR: self._readdir, Op.MKDIR: self._mkdir, Op.RMDIR: self._rmdir, Op.UNLINK: self._unlink,
            Op.RENAME: self._rename, Op.LINK: self._link, Op.SYMLINK: self._symlink, Op.READLINK: self._readlink,
        }

    @property
    def open_handles(self) -> int:
        return len(self._open)

    def receive(self, data: bytes) -> list[bytes]:
        """Answers to the complete requests in ``data`` (and what came before it).

        Raises HostFsProtocolError when the framing is broken: the stream cannot go on then."""
        return [self.answer(body) for body in self._reader.feed(data)]

    def answer(self, body: bytes) -> bytes:
        try:
            request = hostfs.decode_request(body)
        except hostfs.FieldError as exc:
            return hostfs.encode_error(exc.request_id, exc.errno)
        try:
            if self.read_only and request.op in _CHANGES:
                raise WasiError(Errno.ROFS)
            values = self._ops[request.op](*request.args)
            return hostfs.encode_result(request.id, request.op, *values)
        except WasiError as exc:
            errno = int(exc.errno)
        except hostfs.FieldError as exc:
            errno = exc.errno
        except OSError as exc:
            errno = int(wasi_errno(exc))
        except (ValueError, OverflowError):
            errno = int(Errno.INVAL)  # e.g. a value the system call cannot take
        except Exception as exc:
            # A bug here must not end the host (or its other keeps): the keep sees EIO.
            self.internal_errors.append(f"{request.op.name}: {type(exc).__name__}: {exc}")
            errno = int(Errno.IO)
        return hostfs.encode_error(request.id, errno)

    def close(self) -> None:
        """Close every file the keep left open (idempotent)."""
        opened, self._open = self._open, {}
        for entry in opened.values():
            try:
                os.close(entry.fd)
            except OSError:
                pass

    # ---- handles ----

    def _get(self, handle: int) -> _Open:
        entry = self._open.get(handle)
        if entry is None:
            raise WasiError(Errno.BADF)
        return entry

    def _dir(self, handle: int) -> int:
        entry = self._get(handle)
        if not entry.is_dir:
            raise WasiError(Errno.NOTDIR)
        return entry.fd

    def _add(self, entry: _Open) -> int:
        handle = self._next_handle
        while handle in self._open or handle == hostfs.ROOT_HANDLE:
            handle = (handle + 1) & 0xFFFFFFFF
        self._next_handle = (handle + 1) & 0xFFFFFFFF
        self._open[handle] = entry
        return handle

    # ---- operations: each returns the result fields, or raises ----

    def _open_op(self, dir_handle: int, path: str, bits: int, fdflags: int) -> tuple[Any, ...]:
        if bits & ~hostfs.OPEN_ALL or fdflags & ~0x1F:
            raise WasiError(Errno.INVAL)
        dir_fd = self._dir(dir_handle)
        if len(self._open) > self.max_handles:
            raise WasiError(Errno.NFILE)
        if self.read_only:
            bits = self._read_only_open(dir_fd, path, bits, fdflags)
        read, write = bool(bits & hostfs.OPEN_READ), bool(bits & hostfs.OPEN_WRITE)
        follow = bool(bits & hostfs.OPEN_FOLLOW)
        flags = open_flags(follow=follow, creat=bool(bits & hostfs.OPEN_CREAT), excl=bool(bits & hostfs.OPEN_EXCL),
                           trunc=bool(bits & hostfs.OPEN_TRUNC), directory=bool(bits & hostfs.OPEN_DIRECTORY),
                           read=read, write=write, fdflags=FdFlags(fdflags))
        fd, st = open_beneath(dir_fd, path, flags, follow)
        is_dir = stat_mod.S_ISDIR(st.st_mode)
        handle = self._add(_Open(fd, is_dir, read or not write, write))
        return handle, filestat_fields(st)[2]

    @staticmethod
    def _read_only_open(dir_fd: int, path: str, bits: int, fdflags: int) -> int:
        """The OPEN bits a read-only directory goes on with; raises what a read-only mount answers."""
        if bits & (hostfs.OPEN_WRITE | hostfs.OPEN_TRUNC) or fdflags & FdFlags.APPEND:
            raise WasiError(Errno.ROFS)
        if not bits & hostfs.OPEN_CREAT:
            return bits
        try:  # creating is a change; opening what exists already is not
            stat_beneath(dir_fd, path, bool(bits & hostfs.OPEN_FOLLOW))
        except FileNotFoundError:
            raise WasiError(Errno.ROFS) from None
        if bits & hostfs.OPEN_EXCL:
            raise WasiError(Errno.EXIST)
        return bits & ~(hostfs.OPEN_CREAT | hostfs.OPEN_EXCL)

    def _close_op(self, handle: int) -> tuple[Any, ...]:
        entry = self._get(handle)
        del self._open[handle]
        os.close(entry.fd)
        return ()

    def _read(self, handle: int, size: int) -> tuple[Any, ...]:
        if size > hostfs.MAX_DATA:
            raise WasiError(Errno.INVAL)
        entry = self._get(handle)
        if not entry.readable:
            raise WasiError(Errno.BADF)
        return (os.read(entry.fd, size),)

    def _pread(self, handle: int, size: int, offset: int) -> tuple[Any, ...]:
        if size > hostfs.MAX_DATA:
            raise WasiError(Errno.INVAL)
        entry = self._get(handle)
        if not entry.readable:
            raise WasiError(Errno.BADF)
        return (os.pread(entry.fd, size, check_offset(offset)),)

    def _write(self, handle: int, data: bytes) -> tuple[Any, ...]:
        entry = self._get(handle)
        if not entry.writable:
            raise WasiError(Errno.BADF)
        return (os.write(entry.fd, data),)

    def _pwrite(self, handle: int, offset: int, data: bytes) -> tuple[Any, ...]:
        entry = self._get(handle)
        if not entry.writable:
            raise WasiError(Errno.BADF)
        return (os.pwrite(entry.fd, data, check_offset(offset)),)

    def _seek(self, handle: int, offset: int, whence: int) -> tuple[Any, ...]:
        entry = self._get(handle)
        if entry.is_dir or whence not in _WHENCE:
            raise WasiError(Errno.BADF if entry.is_dir else Errno.INVAL)
        return (os.lseek(entry.fd, offset, _WHENCE[whence]),)

    def _fstat(self, handle: int) -> tuple[Any, ...]:
        return (Stat(*filestat_fields(os.fstat(self._get(handle).fd))),)

    def _stat(self, dir_handle: int, path: str, follow: int) -> tuple[Any, ...]:
        return (Stat(*filestat_fields(stat_beneath(self._dir(dir_handle), path, _flag(follow)))),)

    def _set_size(self, handle: int, size: int) -> tuple[Any, ...]:
        entry = self._get(handle)
        if entry.is_dir:
            raise WasiError(Errno.BADF)
        os.ftruncate(entry.fd, check_offset(size))
        return ()

    def _set_times(self, handle: int, atim: int, mtim: int, fst_flags: int) -> tuple[Any, ...]:
        set_times(self._get(handle).fd, atim, mtim, fst_flags)
        return ()

    def _set_times_path(self, dir_handle: int, path: str, follow: int, atim: int, mtim: int,
                        fst_flags: int) -> tuple[Any, ...]:
        set_times_beneath(self._dir(dir_handle), path, atim, mtim, fst_flags, _flag(follow))
        return ()

    def _set_flags(self, handle: int, fdflags: int) -> tuple[Any, ...]:
        if fdflags & ~0x1F:
            raise WasiError(Errno.INVAL)
        entry = self._get(handle)
        current = fcntl.fcntl(entry.fd, fcntl.F_GETFL)
        wanted = current | os.O_APPEND if fdflags & FdFlags.APPEND else current & ~os.O_APPEND
        fcntl.fcntl(entry.fd, fcntl.F_SETFL, wanted)
        return ()

    def _sync(self, handle: int) -> tuple[Any, ...]:
        os.fsync(self._get(handle).fd)
        return ()

    def _readdir(self, dir_handle: int, start: int) -> tuple[Any, ...]:
        entry = self._get(dir_handle)
        if not entry.is_dir:
            raise WasiError(Errno.NOTDIR)
        if start == 0 or entry.listing is None:
            # A name longer than the protocol carries cannot be opened through it either.
            entry.listing = [e for e in list_entries(entry.fd) if len(e.name) <= hostfs.MAX_NAME]
        listing = entry.listing
        page: list[Entry] = []
        size = 0
        index = start
        while index < len(listing):
            cost = hostfs.ENTRY_OVERHEAD + len(listing[index].name)
            if page and size + cost > READDIR_PAGE:
                break
            page.append(listing[index])
            size += cost
            index += 1
        return os.fstat(entry.fd).st_ino, int(index < len(listing)), page

    def _mkdir(self, dir_handle: int, path: str) -> tuple[Any, ...]:
        mkdir_beneath(self._dir(dir_handle), path)
        return ()

    def _rmdir(self, dir_handle: int, path: str) -> tuple[Any, ...]:
        rmdir_beneath(self._dir(dir_handle), path)
        return ()

    def _unlink(self, dir_handle: int, path: str) -> tuple[Any, ...]:
        unlink_beneath(self._dir(dir_handle), path)
        return ()

    def _rename(self, dir_handle: int, old: str, new_dir_handle: int, new: str) -> tuple[Any, ...]:
        rename_beneath(self._dir(dir_handle), old, self._dir(new_dir_handle), new)
        return ()

    def _link(self, dir_handle: int, old: str, follow: int, new_dir_handle: int, new: str) -> tuple[Any, ...]:
        link_beneath(self._dir(dir_handle), old, _flag(follow), self._dir(new_dir_handle), new)
        return ()

    def _symlink(self, target: str, dir_handle: int, path: str) -> tuple[Any, ...]:
        symlink_beneath(target, self._dir(dir_handle), path)
        return ()

    def _readlink(self, dir_handle: int, path: str) -> tuple[Any, ...]:
        target = readlink_beneath(self._dir(dir_handle), path)
        if len(target) > hostfs.MAX_PATH:
            raise WasiError(Errno.NAMETOOLONG)
        return (target,)


class ServedDir:
    """One ``--dir`` served on its own channel stream, by a thread of its own."""

    def __init__(self, endpoint: Endpoint, host_path: str, guest_path: str, *, read_only: bool = False):
        self.endpoint = endpoint
        self.guest_path = guest_path
        self.server = HostFsServer(host_path, read_only=read_only)
        try:
            self.stream = endpoint.open_stream(hostfs.STREAM_KIND, guest=guest_path)
        except BaseException:
            self.server.close()
            raise
        self.failure: str | None = None  # why the keep's stream was ended, if it was broken
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"hostfs {guest_path}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    data = self.endpoint.read(self.stream, READ_SIZE, timeout=STOP_POLL)
                except Timeout:
                    continue
                if not data:
                    return  # EOF: the keep is done with the directory
                try:
                    answers = self.server.receive(data)
                except hostfs.HostFsProtocolError as exc:
                    self.failure = str(exc)
                    self.endpoint.reset(self.stream, f"hostfs: {exc}")
                    return
                for answer in answers:
                    self.endpoint.write(self.stream, answer)
        except (StreamAborted, ChannelClosed):
            pass  # the keep went away; its exit report (or its absence) says why
        finally:
            self.server.close()
            try:
                self.endpoint.eof(self.stream)
            except MotteError:
                pass

    def stop(self, timeout: float) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self.server.close()  # never started, or done: nothing else touches its files


class HostDirs:
    """The preopened directories of one run (``read_only`` ones first), each served on a stream of
    its own (every backend)."""

    def __init__(self, endpoint: Endpoint, dirs: Sequence[tuple[str, str]],
                 read_only: Sequence[tuple[str, str]] = ()):
        self.served: list[ServedDir] = []
        try:
            for host_path, guest_path in read_only:
                self.served.append(ServedDir(endpoint, host_path, guest_path, read_only=True))
            for host_path, guest_path in dirs:
                self.served.append(ServedDir(endpoint, host_path, guest_path))
        except BaseException:
            self.close(0)
            raise

    def start(self) -> None:
        for served in self.served:
            served.start()

    def close(self, timeout: float = 2.0) -> None:
        """Stop serving. The keep ends each stream (EOF) before it reports its exit, so after a
        normal run this does not wait."""
        for served in self.served:
            served.stop(timeout)
