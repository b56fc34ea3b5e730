"""Preopened directories and the files opened beneath them.

Every path the workload names is resolved by the kernel with ``openat2(RESOLVE_BENEATH)``: ``..``,
absolute paths and symlinks that would leave the preopened directory fail with EXDEV (reported to
the workload as NOTCAPABLE), with no time-of-check/time-of-use gap a user-space walk would have.
Operations on a final path component (unlink, mkdir, rename, ...) open the parent that way and
act on the last name relative to it, never following a symlink in that last name.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import stat as stat_mod
import time

from motte.keep.wasi.abi import (
    DIR_RIGHTS,
    DIRENT,
    FILE_RIGHTS,
    FILESTAT,
    FST_ATIM,
    FST_ATIM_NOW,
    FST_MTIM,
    FST_MTIM_NOW,
    WHENCE_CUR,
    WHENCE_END,
    WHENCE_SET,
    Errno,
    FdFlags,
    Filetype,
    wasi_errno,
)
from motte.keep.wasi.files import WasiError, WasiFile

_SYS_OPENAT2 = 437  # x86_64 and aarch64 share this number
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08
_libc = ctypes.CDLL(None, use_errno=True)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat_beneath(dir_fd: int, path: str, flags: int, mode: int = 0o666) -> int:
    """``openat`` confined to ``dir_fd``; raises OSError as ``os.open`` would."""
    if "\0" in path:
        raise OSError(22, "path contains NUL")
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(_SYS_OPENAT2, dir_fd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def _filetype(mode: int) -> Filetype:
    if stat_mod.S_ISREG(mode):
        return Filetype.REGULAR_FILE
    if stat_mod.S_ISDIR(mode):
        return Filetype.DIRECTORY
    if stat_mod.S_ISLNK(mode):
        return Filetype.SYMBOLIC_LINK
    if stat_mod.S_ISCHR(mode):
        return Filetype.CHARACTER_DEVICE
    if stat_mod.S_ISBLK(mode):
        return Filetype.BLOCK_DEVICE
    if stat_mod.S_ISSOCK(mode):
        return Filetype.SOCKET_STREAM
    return Filetype.UNKNOWN


def pack_filestat(st: os.stat_result) -> bytes:
    return FILESTAT.pack(
        st.st_dev, st.st_ino, _filetype(st.st_mode), st.st_nlink, st.st_size,
        st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns,
    )


def set_times(fd_or_path: int | str, atim: int, mtim: int, fst_flags: int, dir_fd: int | None = None,
              follow: bool = True) -> None:
    if (fst_flags & FST_ATIM and fst_flags & FST_ATIM_NOW) or (fst_flags & FST_MTIM and fst_flags & FST_MTIM_NOW):
        raise WasiError(Errno.INVAL)
    current = os.stat(fd_or_path, dir_fd=dir_fd, follow_symlinks=follow)
    now = None
    if fst_flags & (FST_ATIM_NOW | FST_MTIM_NOW):
        now = time.time_ns()
    a = atim if fst_flags & FST_ATIM else now if fst_flags & FST_ATIM_NOW else current.st_atime_ns
    m = mtim if fst_flags & FST_MTIM else now if fst_flags & FST_MTIM_NOW else current.st_mtime_ns
    assert a is not None and m is not None
    os.utime(fd_or_path, ns=(a, m), dir_fd=dir_fd, follow_symlinks=follow)


class OsFile(WasiFile):
    """A regular file (or other non-directory) opened beneath a preopened directory."""

    filetype = Filetype.REGULAR_FILE
    rights_base = FILE_RIGHTS

    def __init__(self, fd: int, flags: FdFlags, readable: bool, writable: bool):
        super().__init__()
        self.fd = fd
        self.flags = flags
        self.readable = readable
        self.writable = writable
        self.filetype = _filetype(os.fstat(fd).st_mode)

    def read(self, size: int, deadline: float | None) -> bytes:
        if not self.readable:
            raise WasiError(Errno.BADF)
        return os.read(self.fd, size)

    def write(self, data: bytes, deadline: float | None) -> int:
        if not self.writable:
            raise WasiError(Errno.BADF)
        return os.write(self.fd, data)

    def pread(self, size: int, offset: int) -> bytes:
        if not self.readable:
            raise WasiError(Errno.BADF)
        return os.pread(self.fd, size, offset)

    def pwrite(self, data: bytes, offset: int) -> int:
        if not self.writable:
            raise WasiError(Errno.BADF)
        if self.flags & FdFlags.APPEND:
            raise WasiError(Errno.NOTSUP)  # POSIX would ignore the offset: refuse rather than surprise
        return os.pwrite(self.fd, data, offset)

    def seek(self, offset: int, whence: int) -> int:
        how = {WHENCE_SET: os.SEEK_SET, WHENCE_CUR: os.SEEK_CUR, WHENCE_END: os.SEEK_END}.get(whence)
        if how is None:
            raise WasiError(Errno.INVAL)
        return os.lseek(self.fd, offset, how)

    def stat(self) -> bytes:
        return pack_filestat(os.fstat(self.fd))

    def set_flags(self, flags: FdFlags) -> None:
        if flags & ~(FdFlags.NONBLOCK | FdFlags.APPEND):
            raise WasiError(Errno.NOTSUP)
        current = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        wanted = current | os.O_APPEND if flags & FdFlags.APPEND else current & ~os.O_APPEND
        fcntl.fcntl(self.fd, fcntl.F_SETFL, wanted)
        self.flags = flags

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


class OsDir(WasiFile):
    """A directory: a preopen (with ``guest_path``) or one opened beneath a preopen."""

    filetype = Filetype.DIRECTORY
    rights_base = DIR_RIGHTS
    rights_inheriting = DIR_RIGHTS | FILE_RIGHTS

    def __init__(self, fd: int, guest_path: str | None = None):
        super().__init__()
        self.fd = fd
        self.guest_path = guest_path  # set for preopens only

    def read(self, size: int, deadline: float | None) -> bytes:
        raise WasiError(Errno.ISDIR)

    def write(self, data: bytes, deadline: float | None) -> int:
        raise WasiError(Errno.BADF)

    def stat(self) -> bytes:
        return pack_filestat(os.fstat(self.fd))

    def close(self) -> None:
        os.close(self.fd)

    def sync(self) -> None:
        os.fsync(self.fd)

    # ---- path operations ----

    def open(self, path: str, *, follow: bool, oflags_creat: bool, excl: bool, trunc: bool,
             directory: bool, read: bool, write: bool, fdflags: FdFlags) -> WasiFile:
        flags = 0
        if oflags_creat:
            flags |= os.O_CREAT
        if excl:
            flags |= os.O_EXCL
        if trunc:
            flags |= os.O_TRUNC
        if directory:
            flags |= os.O_DIRECTORY
        if not follow:
            flags |= os.O_NOFOLLOW
        if fdflags & FdFlags.APPEND:
            flags |= os.O_APPEND
        if fdflags & (FdFlags.SYNC | FdFlags.RSYNC):
            flags |= os.O_SYNC
        if fdflags & FdFlags.DSYNC:
            flags |= os.O_DSYNC
        if write and (read or directory is False):
            flags |= os.O_RDWR if read else os.O_WRONLY
        else:
            flags |= os.O_RDONLY
        if directory and write:
            raise WasiError(Errno.ISDIR)
        try:
            fd = openat_beneath(self.fd, path or ".", flags)
        except OSError as exc:
            if exc.errno == 21 and write:  # EISDIR: opened a directory for writing
                raise WasiError(Errno.ISDIR) from None
            if exc.errno == 40 and not follow:  # ELOOP from O_NOFOLLOW on a symlink
                raise WasiError(Errno.LOOP) from None
            raise
        if stat_mod.S_ISDIR(os.fstat(fd).st_mode):
            return OsDir(fd)
        return OsFile(fd, fdflags, readable=read or not write, writable=write)

    def parent_of(self, path: str) -> tuple[int, str]:
        """Open the directory holding ``path``'s last component; return (fd, last name)."""
        stripped = path.rstrip("/")
        if not stripped:
            raise WasiError(Errno.NOTCAPABLE if path.startswith("/") else Errno.NOENT)
        head, _, name = stripped.rpartition("/")
        if name in ("..",):
            raise WasiError(Errno.NOTCAPABLE)
        if head == "" and stripped.startswith("/"):
            raise WasiError(Errno.NOTCAPABLE)
        return openat_beneath(self.fd, head or ".", os.O_PATH | os.O_DIRECTORY), name

    def readdir(self) -> list[tuple[bytes, int, Filetype]]:
        """Entries as (name, inode, type), '.' and '..' first, the rest sorted (stable cookies)."""
        entries: list[tuple[bytes, int, Filetype]] = []
        here = os.fstat(self.fd)
        entries.append((b".", here.st_ino, Filetype.DIRECTORY))
        entries.append((b"..", 0, Filetype.DIRECTORY))
        for name in sorted(os.listdir(self.fd)):
            try:
                st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
                entries.append((os.fsencode(name), st.st_ino, _filetype(st.st_mode)))
            except OSError:
                continue  # removed while listing
        return entries


def pack_dirents(entries: list[tuple[bytes, int, Filetype]], cookie: int, size: int) -> bytes:
    """Serialise entries from ``cookie`` on into at most ``size`` bytes (the last one may be cut,
    which tells libc to call again with a larger buffer, as the WASI ABI specifies)."""
    out = bytearray()
    for index in range(cookie, len(entries)):
        name, ino, kind = entries[index]
        out += DIRENT.pack(index + 1, ino, len(name), kind) + name
        if len(out) >= size:
            break
    return bytes(out[:size])


def open_preopen(host_path: str, guest_path: str) -> OsDir:
    try:
        fd = os.open(host_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise WasiError(wasi_errno(exc), f"cannot open directory {host_path}: {exc.strerror}") from exc
    return OsDir(fd, guest_path)
