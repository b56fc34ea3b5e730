"""The ``fd_*`` and ``path_*`` calls of ``wasi_snapshot_preview1``: a workload's file descriptor
table and what it can do with the files in it (:class:`~motte.keep.wasi.files.WasiFile`) and the
directories (:class:`~motte.keep.wasi.dirs.WasiDir`). The other calls are in
:mod:`motte.keep.wasi.preview1`.
"""

from __future__ import annotations

from collections.abc import Sequence

from motte.keep.wasi.dirs import WasiDir, pack_dirents
from motte.keep.wasi.files import WasiFile
from motte.keep.wasi.hostcall import GuestMemory
from motte.shared import wasi_abi as abi
from motte.shared.wasi_abi import Errno, FdFlags, OFlags, Rights, WasiError

MAX_FDS = 1024
MAX_IO = 16 << 20  # bytes one read/write call moves at most: bounds the keep's own buffers

# The right each call needs, as plain ints (tested on every call; an IntFlag operation is a Python call).
_READ, _WRITE, _SEEK, _TELL = int(Rights.FD_READ), int(Rights.FD_WRITE), int(Rights.FD_SEEK), int(Rights.FD_TELL)
_PREAD, _PWRITE = _READ | _SEEK, _WRITE | _SEEK
_ADVISE, _ALLOCATE = int(Rights.FD_ADVISE), int(Rights.FD_ALLOCATE)
_SYNC, _DATASYNC, _SET_FLAGS = int(Rights.FD_SYNC), int(Rights.FD_DATASYNC), int(Rights.FD_FDSTAT_SET_FLAGS)
_STAT, _SET_SIZE, _SET_TIMES = (
    int(Rights.FD_FILESTAT_GET), int(Rights.FD_FILESTAT_SET_SIZE), int(Rights.FD_FILESTAT_SET_TIMES)
)
_READDIR = int(Rights.FD_READDIR)
_AGAIN = int(Errno.AGAIN)
_WRITING = _WRITE | _ALLOCATE | _SET_SIZE  # rights that need the file open for writing
_PATH_OPEN, _CREATE_FILE, _CREATE_DIRECTORY = (
    int(Rights.PATH_OPEN), int(Rights.PATH_CREATE_FILE), int(Rights.PATH_CREATE_DIRECTORY)
)
_PATH_STAT, _PATH_SET_SIZE, _PATH_SET_TIMES = (
    int(Rights.PATH_FILESTAT_GET), int(Rights.PATH_FILESTAT_SET_SIZE), int(Rights.PATH_FILESTAT_SET_TIMES)
)
_LINK_SOURCE, _LINK_TARGET = int(Rights.PATH_LINK_SOURCE), int(Rights.PATH_LINK_TARGET)
_RENAME_SOURCE, _RENAME_TARGET = int(Rights.PATH_RENAME_SOURCE), int(Rights.PATH_RENAME_TARGET)
_READLINK, _SYMLINK = int(Rights.PATH_READLINK), int(Rights.PATH_SYMLINK)
_REMOVE_DIRECTORY, _UNLINK_FILE = int(Rights.PATH_REMOVE_DIRECTORY), int(Rights.PATH_UNLINK_FILE)


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


class FdCalls:
    """A workload's file descriptors (fd *i* of ``files`` is WASI fd *i*) and the calls on them."""

    def __init__(self, files: Sequence[WasiFile], memory: GuestMemory, deadline: float | None = None):
        self.memory = memory
        self.fds: dict[int, WasiFile] = {}
        for fd, file in enumerate(files):
            self.fds[fd] = _own_rights(file)
        self.deadline = deadline

    # ---- helpers ----

    def _file(self, fd: int) -> WasiFile:
        file = self.fds.get(fd)
        if file is None:
            raise WasiError(Errno.BADF)
        return file

    def _granted(self, fd: int, rights: int) -> WasiFile:
        """The file of ``fd``, which must have every right in ``rights``."""
        file = self.fds.get(fd)
        if file is None:
            raise WasiError(Errno.BADF)
        if file.rights_base & rights != rights:
            raise WasiError(file.refusal(rights & ~file.rights_base))
        return file

    def _dir(self, fd: int, right: int) -> WasiDir:
        """The directory of ``fd``, which must have ``right`` (a path right: only directories have them)."""
        directory = self._granted(fd, right)
        if not isinstance(directory, WasiDir):
            raise WasiError(Errno.NOTDIR)
        return directory

    def _path(self, ptr: int, length: int) -> str:
        if length > 4096:
            raise WasiError(Errno.NAMETOOLONG)
        try:
            path = self.memory.read_string(ptr, length)
        except UnicodeDecodeError:
            raise WasiError(Errno.ILSEQ) from None
        if "\0" in path:
            raise WasiError(Errno.INVAL)
        return path

    def _new_fd(self, file: WasiFile) -> int:
        for fd in range(len(self.fds) + 1):
            if fd not in self.fds:
                if fd >= MAX_FDS:
                    break
                self.fds[fd] = _own_rights(file)
                return fd
        file.close()
        raise WasiError(Errno.NFILE)

    # ---- file descriptors ----

    def fd_advise(self, fd: int, _offset: int, _length: int, advice: int) -> int:
        self._granted(fd, _ADVISE)
        if advice > 5:
            raise WasiError(Errno.INVAL)
        return Errno.SUCCESS

    def fd_allocate(self, fd: int, offset: int, length: int) -> int:
        self._granted(fd, _ALLOCATE).allocate(offset, length)
        return Errno.SUCCESS

    def fd_close(self, fd: int) -> int:
        file = self.fds.pop(fd, None)
        if file is None:
            raise WasiError(Errno.BADF)
        file.close()
        return Errno.SUCCESS

    def fd_sync(self, fd: int) -> int:
        self._granted(fd, _SYNC).sync()
        return Errno.SUCCESS

    def fd_datasync(self, fd: int) -> int:
        self._granted(fd, _DATASYNC).sync()
        return Errno.SUCCESS

    def fd_fdstat_get(self, fd: int, ptr: int) -> int:
        file = self._file(fd)
        self.memory.write(ptr, abi.FDSTAT.pack(file.filetype, file.flags, file.rights_base, file.rights_inheriting))
        return Errno.SUCCESS

    def fd_fdstat_set_flags(self, fd: int, flags: int) -> int:
        self._granted(fd, _SET_FLAGS).set_flags(FdFlags(flags & 0x1F))
        return Errno.SUCCESS

    def fd_fdstat_set_rights(self, fd: int, base: int, inheriting: int) -> int:
        file = self._file(fd)
        # Rights may only shrink.
        if base & ~file.rights_base or inheriting & ~file.rights_inheriting:
            raise WasiError(Errno.NOTCAPABLE)
        file.rights_base, file.rights_inheriting = base, inheriting
        return Errno.SUCCESS

    def fd_filestat_get(self, fd: int, ptr: int) -> int:
        self.memory.write(ptr, self._granted(fd, _STAT).stat())
        return Errno.SUCCESS

    def fd_filestat_set_size(self, fd: int, size: int) -> int:
        self._granted(fd, _SET_SIZE).set_size(size)
        return Errno.SUCCESS

    def fd_filestat_set_times(self, fd: int, atim: int, mtim: int, flags: int) -> int:
        self._granted(fd, _SET_TIMES).set_times(atim, mtim, flags)
        return Errno.SUCCESS

    def fd_prestat_get(self, fd: int, ptr: int) -> int:
        file = self._file(fd)
        if not isinstance(file, WasiDir) or file.guest_path is None:
            if not self._preopen_above(fd):
                raise WasiError(Errno.BADF)
            self.memory.write(ptr, abi.PRESTAT.pack(abi.PREOPEN_TYPE_NOT_DIR, 0))
            return Errno.SUCCESS
        self.memory.write(ptr, abi.PRESTAT.pack(abi.PREOPEN_TYPE_DIR, len(file.guest_path.encode())))
        return Errno.SUCCESS

    def _preopen_above(self, fd: int) -> bool:
        """Whether a preopened directory comes after ``fd`` (libc's scan must not stop at it)."""
        return any(other > fd and isinstance(f, WasiDir) and f.guest_path is not None for other, f in self.fds.items())

    def fd_prestat_dir_name(self, fd: int, path: int, length: int) -> int:
        file = self._file(fd)
        if not isinstance(file, WasiDir) or file.guest_path is None:
            raise WasiError(Errno.BADF)
        name = file.guest_path.encode()
        if length < len(name):
            raise WasiError(Errno.NAMETOOLONG)
        self.memory.write(path, name)
        return Errno.SUCCESS

    def fd_read(self, fd: int, iovs: int, count: int, nread_ptr: int) -> int:
        file = self.fds.get(fd)  # _granted(fd, _READ), inline: the call every read makes
        if file is None or not file.rights_base & _READ:
            raise WasiError(Errno.BADF if file is None else file.refusal(_READ))
        if count == 1:  # the common case, without building a list
            ptr, length = self.memory.read_iovec(iovs)
            data = file.read(min(length, MAX_IO), self.deadline) if length else b""
            if data is None:
                return _AGAIN
            self.memory.write(ptr, data)
        else:
            vectors = self.memory.read_iovecs(iovs, count)
            total = min(sum(length for _, length in vectors), MAX_IO)
            data = file.read(total, self.deadline) if total else b""
            if data is None:
                return _AGAIN
            self._scatter(vectors, data)
        self.memory.write_u32(nread_ptr, len(data))
        return Errno.SUCCESS

    def fd_pread(self, fd: int, iovs: int, count: int, offset: int, nread_ptr: int) -> int:
        file = self._granted(fd, _PREAD)
        vectors = self.memory.read_iovecs(iovs, count)
        total = min(sum(length for _, length in vectors), MAX_IO)
        data = file.pread(total, offset)
        self._scatter(vectors, data)
        self.memory.write_u32(nread_ptr, len(data))
        return Errno.SUCCESS

    def _scatter(self, vectors: list[tuple[int, int]], data: bytes) -> None:
        offset = 0
        for ptr, length in vectors:
            if offset >= len(data):
                break
            piece = data[offset : offset + length]
            self.memory.write(ptr, piece)
            offset += len(piece)

    def _gather(self, iovs: int, count: int) -> bytes:
        if count == 1:  # the common case, without building a list
            ptr, length = self.memory.read_iovec(iovs)
            if length > MAX_IO:
                raise WasiError(Errno.INVAL)
            return self.memory.read(ptr, length)
        vectors = self.memory.read_iovecs(iovs, count)
        if sum(length for _, length in vectors) > MAX_IO:
            raise WasiError(Errno.INVAL)
        return b"".join(self.memory.read(ptr, length) for ptr, length in vectors)

    def fd_write(self, fd: int, iovs: int, count: int, nwritten_ptr: int) -> int:
        file = self.fds.get(fd)  # _granted(fd, _WRITE), inline: the call every write makes
        if file is None or not file.rights_base & _WRITE:
            raise WasiError(Errno.BADF if file is None else file.refusal(_WRITE))
        written = file.write(self._gather(iovs, count), self.deadline)
        self.memory.write_u32(nwritten_ptr, written)
        return Errno.SUCCESS

    def fd_pwrite(self, fd: int, iovs: int, count: int, offset: int, nwritten_ptr: int) -> int:
        file = self._granted(fd, _PWRITE)
        written = file.pwrite(self._gather(iovs, count), offset)
        self.memory.write_u32(nwritten_ptr, written)
        return Errno.SUCCESS

    def fd_readdir(self, fd: int, buf: int, length: int, cookie: int, bufused_ptr: int) -> int:
        directory = self._dir(fd, _READDIR)
        # A listing is taken at cookie 0 and reused for the follow-up calls of the same pass.
        if cookie == 0 or directory.listing is None:
            directory.listing = directory.readdir()
        data = pack_dirents(directory.listing, cookie, length)
        self.memory.write(buf, data)
        self.memory.write_u32(bufused_ptr, len(data))
        return Errno.SUCCESS

    def fd_renumber(self, fd: int, to: int) -> int:
        file = self._file(fd)
        target = self._file(to)
        if fd != to:
            target.close()
            self.fds[to] = file
            del self.fds[fd]
        return Errno.SUCCESS

    def fd_seek(self, fd: int, offset: int, whence: int, newoffset_ptr: int) -> int:
        # Asking where the offset is (fd_tell, or lseek(fd, 0, SEEK_CUR)) is all that tell allows.
        file = self._granted(fd, _TELL if offset == 0 and whence == abi.WHENCE_CUR else _SEEK)
        position = file.seek(_signed64(offset), whence)
        self.memory.write_u64(newoffset_ptr, position)
        return Errno.SUCCESS

    def fd_tell(self, fd: int, ptr: int) -> int:
        return self.fd_seek(fd, 0, abi.WHENCE_CUR, ptr)

    # ---- paths ----

    def path_create_directory(self, fd: int, path_ptr: int, length: int) -> int:
        self._dir(fd, _CREATE_DIRECTORY).mkdir(self._path(path_ptr, length))
        return Errno.SUCCESS

    def path_filestat_get(self, fd: int, flags: int, path_ptr: int, length: int, ptr: int) -> int:
        follow = bool(flags & abi.LOOKUP_SYMLINK_FOLLOW)
        self.memory.write(ptr, self._dir(fd, _PATH_STAT).stat_path(self._path(path_ptr, length), follow))
        return Errno.SUCCESS

    def path_filestat_set_times(self, fd: int, flags: int, path_ptr: int, length: int,
                                atim: int, mtim: int, fst: int) -> int:
        follow = bool(flags & abi.LOOKUP_SYMLINK_FOLLOW)
        self._dir(fd, _PATH_SET_TIMES).set_times_path(self._path(path_ptr, length), atim, mtim, fst, follow)
        return Errno.SUCCESS

    def path_link(self, old_fd: int, old_flags: int, old_ptr: int, old_len: int,
                  new_fd: int, new_ptr: int, new_len: int) -> int:
        old_dir, new_dir = self._dir(old_fd, _LINK_SOURCE), self._dir(new_fd, _LINK_TARGET)
        old_dir.link(self._path(old_ptr, old_len), bool(old_flags & abi.LOOKUP_SYMLINK_FOLLOW),
                     new_dir, self._path(new_ptr, new_len))
        return Errno.SUCCESS

    def path_open(self, fd: int, dirflags: int, path_ptr: int, length: int, oflags: int,
                  rights_base: int, rights_inheriting: int, fdflags: int, fd_ptr: int) -> int:
        directory = self._file(fd)
        if not isinstance(directory, WasiDir):
            raise WasiError(Errno.NOTDIR)  # before the rights, as wasmtime and the testsuite have it
        needed = _PATH_OPEN | (_CREATE_FILE if oflags & OFlags.CREAT else 0)
        needed |= _PATH_SET_SIZE if oflags & OFlags.TRUNC else 0
        self._granted(fd, needed)
        path = self._path(path_ptr, length)
        # The new fd gets the rights it asks for, as far as the directory passes them on.
        base = rights_base & directory.rights_inheriting
        write = bool(base & _WRITING or oflags & OFlags.TRUNC)
        read = bool(base & (_READ | _READDIR)) or not write
        file = directory.open(
            path, follow=bool(dirflags & abi.LOOKUP_SYMLINK_FOLLOW), oflags_creat=bool(oflags & OFlags.CREAT),
            excl=bool(oflags & OFlags.EXCL), trunc=bool(oflags & OFlags.TRUNC),
            directory=bool(oflags & OFlags.DIRECTORY), read=read, write=write, fdflags=FdFlags(fdflags & 0x1F),
        )
        file.rights_base = base & type(file).rights_base
        file.rights_inheriting = rights_inheriting & directory.rights_inheriting & type(file).rights_inheriting
        self.memory.write_u32(fd_ptr, self._new_fd(file))
        return Errno.SUCCESS

    def path_readlink(self, fd: int, path_ptr: int, length: int, buf: int, buf_len: int, used_ptr: int) -> int:
        target = self._dir(fd, _READLINK).readlink(self._path(path_ptr, length))
        data = target[:buf_len]
        self.memory.write(buf, data)
        self.memory.write_u32(used_ptr, len(data))
        return Errno.SUCCESS

    def path_remove_directory(self, fd: int, path_ptr: int, length: int) -> int:
        self._dir(fd, _REMOVE_DIRECTORY).rmdir(self._path(path_ptr, length))
        return Errno.SUCCESS

    def path_rename(self, fd: int, old_ptr: int, old_len: int, new_fd: int, new_ptr: int, new_len: int) -> int:
        old_dir, new_dir = self._dir(fd, _RENAME_SOURCE), self._dir(new_fd, _RENAME_TARGET)
        old_dir.rename(self._path(old_ptr, old_len), new_dir, self._path(new_ptr, new_len))
        return Errno.SUCCESS

    def path_symlink(self, old_ptr: int, old_len: int, fd: int, new_ptr: int, new_len: int) -> int:
        directory = self._dir(fd, _SYMLINK)
        target = self._path(old_ptr, old_len)
        # An absolute target could only ever point outside the sandbox: refuse it up front.
        if target.startswith("/"):
            raise WasiError(Errno.NOTCAPABLE)
        directory.symlink(target, self._path(new_ptr, new_len))
        return Errno.SUCCESS

    def path_unlink_file(self, fd: int, path_ptr: int, length: int) -> int:
        self._dir(fd, _UNLINK_FILE).unlink(self._path(path_ptr, length))
        return Errno.SUCCESS


def _own_rights(file: WasiFile) -> WasiFile:
    """Give a file entering the fd table rights of its own (at first its kind's, or what path_open
    gave it), as plain ints."""
    file.rights_base = int(file.rights_base)
    file.rights_inheriting = int(file.rights_inheriting)
    return file
