"""Preopened directories and the files opened beneath them.

Every path the workload names is resolved by the kernel with ``openat2(RESOLVE_BENEATH)``: ``..``,
absolute paths and symlinks that would leave the preopened directory fail with EXDEV (reported to
the workload as NOTCAPABLE), with no time-of-check/time-of-use gap a user-space walk would have.
Operations on a final path component (unlink, mkdir, rename, ...) open the parent that way and
act on the last name relative to it, never following a symlink in that last name; the few that
follow one (stat, set times, link) resolve the whole path beneath first and act on the result.

The ``*_beneath`` functions take a directory file descriptor and are the one implementation of
that confinement: :class:`OsDir` (a ``nil`` keep's direct access) and the host's file server
(:mod:`motte.host.hostfs`, which serves preopened directories to every backend) both use them.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import stat as stat_mod
import time
from collections.abc import Iterator

from motte.keep.wasi.abi import (
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
from motte.keep.wasi.dirs import DirEntry, WasiDir
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


def filestat_fields(st: os.stat_result) -> tuple[int, int, Filetype, int, int, int, int, int]:
    """(dev, ino, filetype, nlink, size, atim, mtim, ctim) as WASI has them: timestamps are
    unsigned there, so one before 1970 reads as 0 rather than failing the call."""
    return (
        st.st_dev, st.st_ino, _filetype(st.st_mode), st.st_nlink, st.st_size,
        max(0, st.st_atime_ns), max(0, st.st_mtime_ns), max(0, st.st_ctime_ns),
    )


def pack_filestat(st: os.stat_result) -> bytes:
    return FILESTAT.pack(*filestat_fields(st))


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


MAX_OFFSET = (1 << 63) - 1  # a file offset or size beyond this is no off_t: EINVAL, not an OverflowError


def check_offset(value: int) -> int:
    if not 0 <= value <= MAX_OFFSET:
        raise WasiError(Errno.INVAL)
    return value


def _proc_fd(fd: int) -> str:
    # The kernel's link to exactly the inode ``fd`` holds: acting through it follows nothing
    # else, so an O_PATH descriptor resolved beneath the directory can be stat'ed, utime'd and
    # linked without a second, unconfined path walk.
    return f"/proc/self/fd/{fd}"


# ---- path operations confined beneath a directory fd ----------------------------------------


def split_parent(path: str) -> tuple[str, str]:
    """``(directory part, last name)`` of ``path``, for operations on its last component."""
    stripped = path.rstrip("/")
    if not stripped:
        raise WasiError(Errno.NOTCAPABLE if path.startswith("/") else Errno.NOENT)
    head, _, name = stripped.rpartition("/")
    if name == "..":
        raise WasiError(Errno.NOTCAPABLE)
    if head == "" and stripped.startswith("/"):
        raise WasiError(Errno.NOTCAPABLE)
    return head or ".", name


@contextlib.contextmanager
def parent_beneath(dir_fd: int, path: str) -> Iterator[tuple[int, str]]:
    """The directory holding ``path``'s last component, opened beneath ``dir_fd``, and that name."""
    head, name = split_parent(path)
    parent = openat_beneath(dir_fd, head, os.O_PATH | os.O_DIRECTORY)
    try:
        yield parent, name
    finally:
        os.close(parent)


def open_flags(*, follow: bool, creat: bool, excl: bool, trunc: bool, directory: bool, read: bool,
               write: bool, fdflags: FdFlags) -> int:
    """The ``open(2)`` flags of a ``path_open``."""
    if directory and write:
        raise WasiError(Errno.ISDIR)
    flags = os.O_NOCTTY  # a terminal in the directory must not become the keep's
    if creat:
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
    if write:
        flags |= os.O_RDWR if read else os.O_WRONLY
    else:
        flags |= os.O_RDONLY
    return flags


def open_beneath(dir_fd: int, path: str, flags: int, follow: bool) -> tuple[int, os.stat_result]:
    """Open ``path`` beneath ``dir_fd`` with ``flags`` (from :func:`open_flags`); the fd and its stat."""
    try:
        fd = openat_beneath(dir_fd, path or ".", flags)
    except OSError as exc:
        if exc.errno == 21 and flags & (os.O_WRONLY | os.O_RDWR):  # EISDIR: a directory opened for writing
            raise WasiError(Errno.ISDIR) from None
        if exc.errno == 40 and not follow:  # ELOOP from O_NOFOLLOW on a symlink
            raise WasiError(Errno.LOOP) from None
        raise
    try:
        return fd, os.fstat(fd)
    except OSError:
        os.close(fd)
        raise


def stat_beneath(dir_fd: int, path: str, follow: bool) -> os.stat_result:
    if follow:
        # O_PATH: stat needs no permission on the file and opening a FIFO must not block.
        fd = openat_beneath(dir_fd, path or ".", os.O_PATH)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)
    with parent_beneath(dir_fd, path) as (parent, name):
        return os.stat(name, dir_fd=parent, follow_symlinks=False)


def set_times_beneath(dir_fd: int, path: str, atim: int, mtim: int, fst_flags: int, follow: bool) -> None:
    if follow:
        # utimensat(parent, name, follow) would follow a symlink out of the directory unconfined.
        fd = openat_beneath(dir_fd, path or ".", os.O_PATH)
        try:
            set_times(_proc_fd(fd), atim, mtim, fst_flags)
        finally:
            os.close(fd)
        return
    with parent_beneath(dir_fd, path) as (parent, name):
        set_times(name, atim, mtim, fst_flags, dir_fd=parent, follow=False)


def mkdir_beneath(dir_fd: int, path: str) -> None:
    with parent_beneath(dir_fd, path) as (parent, name):
        os.mkdir(name, dir_fd=parent)


def rmdir_beneath(dir_fd: int, path: str) -> None:
    with parent_beneath(dir_fd, path) as (parent, name):
        if name == ".":
            raise WasiError(Errno.INVAL)
        os.rmdir(name, dir_fd=parent)


def unlink_beneath(dir_fd: int, path: str) -> None:
    with parent_beneath(dir_fd, path) as (parent, name):
        if path.endswith("/"):
            raise WasiError(Errno.NOTDIR)
        os.unlink(name, dir_fd=parent)


def rename_beneath(old_dir_fd: int, old: str, new_dir_fd: int, new: str) -> None:
    with parent_beneath(old_dir_fd, old) as (old_parent, old_name), \
            parent_beneath(new_dir_fd, new) as (new_parent, new_name):
        os.rename(old_name, new_name, src_dir_fd=old_parent, dst_dir_fd=new_parent)


def link_beneath(old_dir_fd: int, old: str, follow: bool, new_dir_fd: int, new: str) -> None:
    if follow:
        # linkat(AT_SYMLINK_FOLLOW) on the last name would follow a symlink out of the
        # directory and hard-link an outside file in: resolve beneath, then link that inode.
        fd = openat_beneath(old_dir_fd, old, os.O_PATH)
        try:
            with parent_beneath(new_dir_fd, new) as (new_parent, new_name):
                os.link(_proc_fd(fd), new_name, dst_dir_fd=new_parent, follow_symlinks=True)
        finally:
            os.close(fd)
        return
    with parent_beneath(old_dir_fd, old) as (old_parent, old_name), \
            parent_beneath(new_dir_fd, new) as (new_parent, new_name):
        os.link(old_name, new_name, src_dir_fd=old_parent, dst_dir_fd=new_parent, follow_symlinks=False)


def symlink_beneath(target: str, dir_fd: int, path: str) -> None:
    # An absolute target could only ever point outside the directory: refuse it up front.
    if target.startswith("/"):
        raise WasiError(Errno.NOTCAPABLE)
    if "\0" in target:
        raise WasiError(Errno.INVAL)
    with parent_beneath(dir_fd, path) as (parent, name):
        os.symlink(target, name, dir_fd=parent)


def readlink_beneath(dir_fd: int, path: str) -> bytes:
    with parent_beneath(dir_fd, path) as (parent, name):
        return os.readlink(os.fsencode(name), dir_fd=parent)


def list_entries(dir_fd: int) -> list[DirEntry]:
    """The entries of the directory ``dir_fd``, sorted by name, without '.' and '..'."""
    entries: list[DirEntry] = []
    for name in sorted(os.listdir(dir_fd)):
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            continue  # removed while listing
        entries.append((os.fsencode(name), st.st_ino, _filetype(st.st_mode)))
    return entries


class OsFile(WasiFile):
    """A regular file (or other non-directory) opened beneath a preopened directory."""

    filetype = Filetype.REGULAR_FILE
    rights_base = FILE_RIGHTS

    def __init__(self, fd: int, flags: FdFlags, readable: bool, writable: bool, mode: int | None = None):
        super().__init__()
        self.fd = fd
        self.flags = flags
        self.readable = readable
        self.writable = writable
        self.filetype = _filetype(os.fstat(fd).st_mode if mode is None else mode)

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
        return os.pread(self.fd, size, check_offset(offset))

    def pwrite(self, data: bytes, offset: int) -> int:
        if not self.writable:
            raise WasiError(Errno.BADF)
        if self.flags & FdFlags.APPEND:
            raise WasiError(Errno.NOTSUP)  # POSIX would ignore the offset: refuse rather than surprise
        return os.pwrite(self.fd, data, check_offset(offset))

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

    def set_size(self, size: int) -> None:
        os.ftruncate(self.fd, check_offset(size))

    def set_times(self, atim: int, mtim: int, fst_flags: int) -> None:
        set_times(self.fd, atim, mtim, fst_flags)

    def allocate(self, offset: int, length: int) -> None:
        if self.filetype != Filetype.REGULAR_FILE:
            raise WasiError(Errno.BADF)
        end = check_offset(offset + length)
        if end > os.fstat(self.fd).st_size:
            os.ftruncate(self.fd, end)

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        # Idempotent: the runtime closes its initial files again at the end, and the fd number
        # may by then belong to something else.
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


class OsDir(WasiDir):
    """A directory this process opened itself: a preopen (``nil`` keeps) or one beneath it."""

    def __init__(self, fd: int, guest_path: str | None = None):
        super().__init__()
        self.fd = fd
        self.guest_path = guest_path

    def stat(self) -> bytes:
        return pack_filestat(os.fstat(self.fd))

    def set_times(self, atim: int, mtim: int, fst_flags: int) -> None:
        set_times(self.fd, atim, mtim, fst_flags)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def sync(self) -> None:
        os.fsync(self.fd)

    # ---- path operations ----

    def open(self, path: str, *, follow: bool, oflags_creat: bool, excl: bool, trunc: bool,
             directory: bool, read: bool, write: bool, fdflags: FdFlags) -> WasiFile:
        flags = open_flags(follow=follow, creat=oflags_creat, excl=excl, trunc=trunc, directory=directory,
                           read=read, write=write, fdflags=fdflags)
        fd, st = open_beneath(self.fd, path, flags, follow)
        if stat_mod.S_ISDIR(st.st_mode):
            return OsDir(fd)
        return OsFile(fd, fdflags, readable=read or not write, writable=write, mode=st.st_mode)

    def readdir(self) -> list[DirEntry]:
        here = os.fstat(self.fd)
        return [(b".", here.st_ino, Filetype.DIRECTORY), (b"..", 0, Filetype.DIRECTORY), *list_entries(self.fd)]

    def stat_path(self, path: str, follow: bool) -> bytes:
        return pack_filestat(stat_beneath(self.fd, path, follow))

    def set_times_path(self, path: str, atim: int, mtim: int, fst_flags: int, follow: bool) -> None:
        set_times_beneath(self.fd, path, atim, mtim, fst_flags, follow)

    def mkdir(self, path: str) -> None:
        mkdir_beneath(self.fd, path)

    def rmdir(self, path: str) -> None:
        rmdir_beneath(self.fd, path)

    def unlink(self, path: str) -> None:
        unlink_beneath(self.fd, path)

    def rename(self, old: str, new_dir: WasiDir, new: str) -> None:
        if not isinstance(new_dir, OsDir):
            raise WasiError(Errno.XDEV)
        rename_beneath(self.fd, old, new_dir.fd, new)

    def link(self, old: str, follow: bool, new_dir: WasiDir, new: str) -> None:
        if not isinstance(new_dir, OsDir):
            raise WasiError(Errno.XDEV)
        link_beneath(self.fd, old, follow, new_dir.fd, new)

    def symlink(self, target: str, path: str) -> None:
        symlink_beneath(target, self.fd, path)

    def readlink(self, path: str) -> bytes:
        return readlink_beneath(self.fd, path)


def pack_dirents(entries: list[DirEntry], cookie: int, size: int) -> bytes:
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
