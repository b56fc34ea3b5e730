"""Preopened directories the host serves over the channel: WASI files whose every operation is a
call in the host file protocol (:mod:`motte.shared.hostfs`).

This is how every backend reaches a ``--dir``: a VM keep has no other way to the host's files.
The host is untrusted here as everywhere: each response is decoded with bounded sizes and type
checks, a result that cannot answer the request (more bytes than asked for, an offset beyond
off_t, a wrong id) breaks the connection, and the workload then sees EIO from every later call on
that directory, never a crash of the keep. What the host learns is what it serves: file names,
contents and access patterns.
"""

from __future__ import annotations

import time
from typing import Any

from motte.keep.wasi.dirs import DirEntry, WasiDir
from motte.keep.wasi.files import DeadlineExceeded, WasiFile
from motte.shared import hostfs
from motte.shared.endpoint import ChannelClosed, Endpoint, StreamAborted
from motte.shared.endpoint import Timeout as EndpointTimeout
from motte.shared.hostfs import Op
from motte.shared.wasi_abi import FILE_RIGHTS, FILESTAT, MAX_OFFSET, Errno, FdFlags, Filetype, WasiError, check_offset

#: Entries one directory listing may have: bounds what a host can make the keep hold.
MAX_LISTING = 1 << 17
READ_CHUNK = 1 << 20


class HostFsClient:
    """The keep's end of one served directory: one call at a time, each checked."""

    def __init__(self, endpoint: Endpoint, stream: int, deadline: float | None = None):
        self.endpoint = endpoint
        self.stream = stream
        self.deadline = deadline  # the workload's: a host that stalls past it ends the run, not the keep
        self._reader = hostfs.MessageReader()
        self._ready: list[bytes] = []
        self._next_id = 1
        self.broken: str | None = None  # why the connection is unusable, once it is
        self.closed = False

    def call(self, op: Op, *args: Any) -> tuple[Any, ...]:
        """Send a request and return its result fields; a host error raises WasiError."""
        if self.closed or self.broken is not None:
            raise WasiError(Errno.IO, self.broken or "the directory's connection is closed")
        request_id = self._next_id
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        try:
            message = hostfs.encode_request(request_id, op, *args)
        except hostfs.FieldError as exc:
            raise WasiError(Errno(exc.errno), str(exc)) from None
        try:
            self.endpoint.write(self.stream, message, deadline=self.deadline)
            body = self._next_body()
        except EndpointTimeout:
            self._break("the workload's deadline passed during a call")
            raise DeadlineExceeded() from None
        except DeadlineExceeded:
            self._break("the workload's deadline passed during a call")
            raise
        except (StreamAborted, ChannelClosed) as exc:
            raise self._break(f"the host ended the directory's stream: {exc}") from None
        except hostfs.HostFsProtocolError as exc:
            raise self._break(f"the host sent a malformed message: {exc}") from None
        try:
            response = hostfs.decode_response(body, op)
        except hostfs.HostFsProtocolError as exc:
            raise self._break(f"the host sent a malformed {op.name} response: {exc}") from None
        if response.id != request_id:
            raise self._break(f"the host answered request {response.id}, not {request_id}")
        if response.errno:
            raise WasiError(Errno(response.errno))
        return response.values

    def _next_body(self) -> bytes:
        while not self._ready:
            if self.deadline is None:
                data = self.endpoint.read(self.stream, READ_CHUNK)
            else:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise DeadlineExceeded()
                try:
                    data = self.endpoint.read(self.stream, READ_CHUNK, timeout=left)
                except EndpointTimeout:
                    continue  # the next turn raises once the deadline has really passed
            if not data:
                raise StreamAborted("the host closed the directory's stream")
            self._ready.extend(self._reader.feed(data))
        return self._ready.pop(0)

    def _break(self, why: str) -> WasiError:
        self.broken = why
        return WasiError(Errno.IO, why)

    def violation(self, why: str) -> WasiError:
        """A result that cannot answer the request: the host is broken or hostile."""
        return self._break(f"the host's answer is impossible: {why}")

    def close(self) -> None:
        """No more calls: the host then closes every file it opened for this directory."""
        if not self.closed:
            self.closed = True
            try:
                self.endpoint.eof(self.stream)
            except (StreamAborted, ChannelClosed):
                pass


class _Handle:
    """What RemoteFile and RemoteDir share: a handle on the host, and its cheap operations."""

    client: HostFsClient
    handle: int

    def _stat(self) -> bytes:
        (stat,) = self.client.call(Op.FSTAT, self.handle)
        return FILESTAT.pack(*stat)

    def _set_times(self, atim: int, mtim: int, fst_flags: int) -> None:
        self.client.call(Op.SET_TIMES, self.handle, atim, mtim, fst_flags & 0xFFFF)

    def _sync(self) -> None:
        self.client.call(Op.SYNC, self.handle)

    def _close(self) -> None:
        # The handle is gone whatever the host answers; and after the client closed (the end of
        # the run), the host closes everything itself.
        handle, self.handle = self.handle, -1
        if handle >= 0 and not self.client.closed and self.client.broken is None:
            self.client.call(Op.CLOSE, handle)


class RemoteFile(_Handle, WasiFile):
    """A file opened beneath a served directory."""

    rights_base = FILE_RIGHTS

    def __init__(self, client: HostFsClient, handle: int, filetype: Filetype, flags: FdFlags,
                 readable: bool, writable: bool):
        super().__init__()
        self.client = client
        self.handle = handle
        self.filetype = filetype
        self.flags = flags
        self.readable = readable
        self.writable = writable

    def _chunks(self, size: int) -> list[int]:
        # A regular file gives all it has: ask again until done or the file ends. Anything else
        # (a FIFO, a device) may give less and then block: one request, as one read(2) would.
        if self.filetype != Filetype.REGULAR_FILE:
            return [min(size, hostfs.MAX_DATA)]
        return [min(hostfs.MAX_DATA, size - start) for start in range(0, size, hostfs.MAX_DATA)]

    def _receive(self, size: int, offset: int | None) -> bytes:
        if not self.readable:
            raise WasiError(Errno.BADF)
        pieces: list[bytes] = []
        for chunk in self._chunks(size):
            if offset is None:
                (data,) = self.client.call(Op.READ, self.handle, chunk)
            else:
                (data,) = self.client.call(Op.PREAD, self.handle, chunk, offset)
                offset += len(data)
            if len(data) > chunk:
                raise self.client.violation(f"{len(data)} bytes for a read of {chunk}")
            pieces.append(data)
            if len(data) < chunk:
                break
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _send(self, data: bytes, offset: int | None) -> int:
        if not self.writable:
            raise WasiError(Errno.BADF)
        view = memoryview(data)
        done = 0
        while True:
            piece = view[done : done + hostfs.MAX_DATA]
            try:
                if offset is None:
                    (written,) = self.client.call(Op.WRITE, self.handle, piece)
                else:
                    (written,) = self.client.call(Op.PWRITE, self.handle, offset + done, piece)
            except WasiError:
                if done:
                    return done  # as write(2): what was written counts, the error comes next time
                raise
            if written > len(piece):
                raise self.client.violation(f"{written} bytes written of {len(piece)}")
            done += int(written)
            if done >= len(view) or written < len(piece):
                return done

    def read(self, size: int, deadline: float | None) -> bytes:
        return self._receive(size, None)

    def write(self, data: bytes, deadline: float | None) -> int:
        return self._send(data, None)

    def pread(self, size: int, offset: int) -> bytes:
        return self._receive(size, check_offset(offset))

    def pwrite(self, data: bytes, offset: int) -> int:
        # On an O_APPEND file Linux appends whatever the offset, as wasmtime does.
        return self._send(data, check_offset(offset))

    def seek(self, offset: int, whence: int) -> int:
        if whence not in (0, 1, 2):
            raise WasiError(Errno.INVAL)
        (position,) = self.client.call(Op.SEEK, self.handle, offset, whence)
        if position > MAX_OFFSET:
            raise self.client.violation(f"offset {position}")
        return int(position)

    def stat(self) -> bytes:
        return self._stat()

    def set_flags(self, flags: FdFlags) -> None:
        if flags & ~(FdFlags.NONBLOCK | FdFlags.APPEND):
            raise WasiError(Errno.NOTSUP)
        self.client.call(Op.SET_FLAGS, self.handle, int(flags & FdFlags.APPEND))
        self.flags = flags

    def set_size(self, size: int) -> None:
        self.client.call(Op.SET_SIZE, self.handle, check_offset(size))

    def set_times(self, atim: int, mtim: int, fst_flags: int) -> None:
        self._set_times(atim, mtim, fst_flags)

    def allocate(self, offset: int, length: int) -> None:
        if self.filetype != Filetype.REGULAR_FILE:
            raise WasiError(Errno.BADF)
        end = check_offset(offset + length)
        (stat,) = self.client.call(Op.FSTAT, self.handle)
        if end > stat.size:
            self.client.call(Op.SET_SIZE, self.handle, end)

    def sync(self) -> None:
        self._sync()

    def close(self) -> None:
        self._close()


def _open_bits(follow: bool, creat: bool, excl: bool, trunc: bool, directory: bool, read: bool,
               write: bool) -> int:
    bits = 0
    for flag, bit in ((follow, hostfs.OPEN_FOLLOW), (creat, hostfs.OPEN_CREAT), (excl, hostfs.OPEN_EXCL),
                      (trunc, hostfs.OPEN_TRUNC), (directory, hostfs.OPEN_DIRECTORY), (read, hostfs.OPEN_READ),
                      (write, hostfs.OPEN_WRITE)):
        if flag:
            bits |= bit
    return bits


class RemoteDir(_Handle, WasiDir):
    """A served directory: the preopen itself (handle 0, with ``guest_path``) or one beneath it."""

    def __init__(self, client: HostFsClient, handle: int, guest_path: str | None = None):
        super().__init__()
        self.client = client
        self.handle = handle
        self.guest_path = guest_path

    @classmethod
    def preopen(cls, client: HostFsClient, guest_path: str) -> RemoteDir:
        return cls(client, hostfs.ROOT_HANDLE, guest_path)

    def stat(self) -> bytes:
        return self._stat()

    def set_times(self, atim: int, mtim: int, fst_flags: int) -> None:
        self._set_times(atim, mtim, fst_flags)

    def sync(self) -> None:
        self._sync()

    def close(self) -> None:
        self._close()

    def _peer(self, other: WasiDir) -> RemoteDir:
        # One call names both directories, so both must be handles of the same served tree.
        if not isinstance(other, RemoteDir) or other.client is not self.client:
            raise WasiError(Errno.XDEV)
        return other

    # ---- path operations ----

    def open(self, path: str, *, follow: bool, oflags_creat: bool, excl: bool, trunc: bool,
             directory: bool, read: bool, write: bool, fdflags: FdFlags) -> WasiFile:
        if directory and write:
            raise WasiError(Errno.ISDIR)
        readable = read or not write
        bits = _open_bits(follow, oflags_creat, excl, trunc, directory, readable, write)
        handle, filetype = self.client.call(Op.OPEN, self.handle, path, bits, int(fdflags))
        if filetype > hostfs.MAX_FILETYPE:
            raise self.client.violation(f"filetype {filetype}")
        if directory and filetype != Filetype.DIRECTORY:
            raise self.client.violation("O_DIRECTORY opened a non-directory")
        if filetype == Filetype.DIRECTORY:
            return RemoteDir(self.client, handle)
        return RemoteFile(self.client, handle, Filetype(filetype), fdflags, readable=readable, writable=write)

    def readdir(self) -> list[DirEntry]:
        entries: list[DirEntry] = []
        own_ino = 0
        more = True
        while more:
            own_ino, more_flag, page = self.client.call(Op.READDIR, self.handle, len(entries))
            more = bool(more_flag)
            if more and not page:
                raise self.client.violation("an empty directory page with more to follow")
            entries.extend((name, ino, Filetype(kind)) for name, ino, kind in page)
            if len(entries) > MAX_LISTING:
                raise WasiError(Errno.NOMEM, f"the directory has more than {MAX_LISTING} entries")
        return [(b".", own_ino, Filetype.DIRECTORY), (b"..", 0, Filetype.DIRECTORY), *entries]

    def stat_path(self, path: str, follow: bool) -> bytes:
        (stat,) = self.client.call(Op.STAT, self.handle, path, int(follow))
        return FILESTAT.pack(*stat)

    def set_times_path(self, path: str, atim: int, mtim: int, fst_flags: int, follow: bool) -> None:
        self.client.call(Op.SET_TIMES_PATH, self.handle, path, int(follow), atim, mtim, fst_flags & 0xFFFF)

    def mkdir(self, path: str) -> None:
        self.client.call(Op.MKDIR, self.handle, path)

    def rmdir(self, path: str) -> None:
        self.client.call(Op.RMDIR, self.handle, path)

    def unlink(self, path: str) -> None:
        self.client.call(Op.UNLINK, self.handle, path)

    def rename(self, old: str, new_dir: WasiDir, new: str) -> None:
        self.client.call(Op.RENAME, self.handle, old, self._peer(new_dir).handle, new)

    def link(self, old: str, follow: bool, new_dir: WasiDir, new: str) -> None:
        self.client.call(Op.LINK, self.handle, old, int(follow), self._peer(new_dir).handle, new)

    def symlink(self, target: str, path: str) -> None:
        self.client.call(Op.SYMLINK, target, self.handle, path)

    def readlink(self, path: str) -> bytes:
        (target,) = self.client.call(Op.READLINK, self.handle, path)
        return bytes(target)
