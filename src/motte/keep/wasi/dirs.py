"""What a directory file descriptor offers ``preview1``: the path operations of WASI.

The implementation is :class:`~motte.keep.wasi.remote_fs.RemoteDir`, which asks the host over a
channel stream (every backend); ``preview1`` sees only this interface.

Paths are the workload's, relative to this directory; an implementation must keep every one of
them beneath it (``..``, absolute paths and symlinks out fail with NOTCAPABLE).
"""

from __future__ import annotations

import abc

from motte.keep.wasi.files import WasiFile
from motte.shared.wasi_abi import DIR_RIGHTS, DIRENT, FILE_RIGHTS, Errno, FdFlags, Filetype

#: One directory entry as ``fd_readdir`` reports it: (name, inode, type).
DirEntry = tuple[bytes, int, Filetype]


class WasiDir(WasiFile, abc.ABC):
    """A directory: a preopen (with ``guest_path``) or one opened beneath a preopen."""

    filetype = Filetype.DIRECTORY
    rights_base = DIR_RIGHTS
    rights_inheriting = DIR_RIGHTS | FILE_RIGHTS
    cannot_seek = Errno.BADF  # as wasmtime answers every file call on a directory
    guest_path: str | None = None  # set for preopens only

    def __init__(self) -> None:
        super().__init__()
        #: fd_readdir's listing, taken at cookie 0 and reused for the calls that continue that pass
        self.listing: list[DirEntry] | None = None

    @abc.abstractmethod
    def open(self, path: str, *, follow: bool, oflags_creat: bool, excl: bool, trunc: bool,
             directory: bool, read: bool, write: bool, fdflags: FdFlags) -> WasiFile:
        """``path_open``: a file or a directory beneath this one."""

    @abc.abstractmethod
    def readdir(self) -> list[DirEntry]:
        """Entries, '.' and '..' first, the rest sorted (so cookies stay stable between calls)."""

    @abc.abstractmethod
    def stat_path(self, path: str, follow: bool) -> bytes:
        """A packed WASI filestat of ``path``."""

    @abc.abstractmethod
    def set_times_path(self, path: str, atim: int, mtim: int, fst_flags: int, follow: bool) -> None: ...

    @abc.abstractmethod
    def mkdir(self, path: str) -> None: ...

    @abc.abstractmethod
    def rmdir(self, path: str) -> None: ...

    @abc.abstractmethod
    def unlink(self, path: str) -> None: ...

    @abc.abstractmethod
    def rename(self, old: str, new_dir: WasiDir, new: str) -> None:
        """Move ``old`` to ``new`` beneath ``new_dir`` (XDEV when the two cannot share a call)."""

    @abc.abstractmethod
    def link(self, old: str, follow: bool, new_dir: WasiDir, new: str) -> None: ...

    @abc.abstractmethod
    def symlink(self, target: str, path: str) -> None: ...

    @abc.abstractmethod
    def readlink(self, path: str) -> bytes: ...


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
