"""Path operations confined beneath a directory: what the host does for a keep's ``--dir``.

Every path the workload names is resolved by the kernel with ``openat2(RESOLVE_BENEATH)``: ``..``,
absolute paths and symlinks that would leave the preopened directory fail with EXDEV (reported to
the workload as NOTCAPABLE), with no time-of-check/time-of-use gap a user-space walk would have.
Operations on a final path component (unlink, mkdir, rename, ...) open the parent that way and
act on the last name relative to it, never following a symlink in that last name; the few that
follow one (stat, set times, link) resolve the whole path beneath first and act on the result.

A trailing slash says the last name is a directory. The calls that never follow a symlink in the
last name (unlink, rename, and the new name of symlink and link) pass it on to the kernel, which
then answers as POSIX says (EISDIR, ENOTDIR, ENOENT). On the others it would make the kernel
follow a symlink in the last name, unconfined: for those a trailing slash means "resolve beneath,
following", as ``stat("link/")`` does.

The host's file server (:mod:`motte.host.hostfs`) acts on every directory it serves through these
functions only. They raise OSError as the ``os`` functions do, or WasiError where WASI has an
answer of its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat as stat_mod
import time
from collections.abc import Iterator

from motte.shared.hostfs import Entry
from motte.shared.wasi_abi import FST_ATIM, FST_ATIM_NOW, FST_MTIM, FST_MTIM_NOW, Errno, FdFlags, Filetype, WasiError

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


def _proc_fd(fd: int) -> str:
    # The kernel's link to exactly the inode ``fd`` holds: acting through it follows nothing
    # else, so an O_PATH descriptor resolved beneath the directory can be stat'ed, utime'd and
    # linked without a second, unconfined path walk.
    return f"/proc/self/fd/{fd}"


# ---- path operations confined beneath a directory fd ----------------------------------------


def _slashed(name: str, path: str) -> str:
    """``name``, the last name of ``path``, with a slash if ``path`` ends with one."""
    return name + "/" if path.endswith("/") else name


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
    if follow or path.endswith("/"):
        # O_PATH: stat needs no permission on the file and opening a FIFO must not block.
        fd = openat_beneath(dir_fd, path or ".", os.O_PATH)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)
    with parent_beneath(dir_fd, path) as (parent, name):
        return os.stat(name, dir_fd=parent, follow_symlinks=False)


def set_times_beneath(dir_fd: int, path: str, atim: int, mtim: int, fst_flags: int, follow: bool) -> None:
    if follow or path.endswith("/"):
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
        os.unlink(_slashed(name, path), dir_fd=parent)


def rename_beneath(old_dir_fd: int, old: str, new_dir_fd: int, new: str) -> None:
    with parent_beneath(old_dir_fd, old) as (old_parent, old_name), \
            parent_beneath(new_dir_fd, new) as (new_parent, new_name):
        os.rename(_slashed(old_name, old), _slashed(new_name, new), src_dir_fd=old_parent, dst_dir_fd=new_parent)


def link_beneath(old_dir_fd: int, old: str, follow: bool, new_dir_fd: int, new: str) -> None:
    if old.endswith("/") and not follow:
        # "x/" names a directory (ENOTDIR or ENOENT if it is none), and no directory is hard-linked.
        os.close(openat_beneath(old_dir_fd, old, os.O_PATH | os.O_DIRECTORY))
        raise WasiError(Errno.PERM)
    if follow:
        # linkat(AT_SYMLINK_FOLLOW) on the last name would follow a symlink out of the
        # directory and hard-link an outside file in: resolve beneath, then link that inode.
        fd = openat_beneath(old_dir_fd, old, os.O_PATH)
        try:
            with parent_beneath(new_dir_fd, new) as (new_parent, new_name):
                os.link(_proc_fd(fd), _slashed(new_name, new), dst_dir_fd=new_parent, follow_symlinks=True)
        finally:
            os.close(fd)
        return
    with parent_beneath(old_dir_fd, old) as (old_parent, old_name), \
            parent_beneath(new_dir_fd, new) as (new_parent, new_name):
        os.link(old_name, _slashed(new_name, new), src_dir_fd=old_parent, dst_dir_fd=new_parent,
                follow_symlinks=False)


def symlink_beneath(target: str, dir_fd: int, path: str) -> None:
    # An absolute target could only ever point outside the directory: refuse it up front.
    if target.startswith("/"):
        raise WasiError(Errno.NOTCAPABLE)
    if "\0" in target:
        raise WasiError(Errno.INVAL)
    with parent_beneath(dir_fd, path) as (parent, name):
        try:
            os.symlink(target, _slashed(name, path), dir_fd=parent)
        except FileExistsError:
            # Linux says EEXIST for "file/"; wasmtime and the WASI testsuite say ENOTDIR.
            if path.endswith("/") and not stat_mod.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                raise WasiError(Errno.NOTDIR) from None
            raise


def readlink_beneath(dir_fd: int, path: str) -> bytes:
    if path.endswith("/"):
        # "x/" names a directory (ENOTDIR or ENOENT if it is none), and a directory is no symlink.
        os.close(openat_beneath(dir_fd, path, os.O_PATH | os.O_DIRECTORY))
        raise WasiError(Errno.INVAL)
    with parent_beneath(dir_fd, path) as (parent, name):
        return os.readlink(os.fsencode(name), dir_fd=parent)


def list_entries(dir_fd: int) -> list[Entry]:
    """The entries of the directory ``dir_fd``, sorted by name, without '.' and '..'."""
    entries: list[Entry] = []
    for name in sorted(os.listdir(dir_fd)):
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            continue  # removed while listing
        entries.append(Entry(os.fsencode(name), st.st_ino, _filetype(st.st_mode)))
    return entries
