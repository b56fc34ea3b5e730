"""``/run/secrets``: the tenant's file secrets, read-only, held in keep memory only.

A flat directory: each secret is one regular file named as the tenant named it. Nothing here
touches the host; every change (create, write, remove, rename, link) fails with ``EROFS``, the
answer of a read-only file system.
"""

from __future__ import annotations

from collections.abc import Mapping

from motte.keep.wasi.dirs import DirEntry, WasiDir
from motte.keep.wasi.files import WasiFile
from motte.shared.wasi_abi import FILE_RIGHTS, FILESTAT, Errno, FdFlags, Filetype, Rights, WasiError

GUEST_PATH = "/run/secrets"
_READ_RIGHTS = (Rights.FD_READ | Rights.FD_SEEK | Rights.FD_TELL | Rights.FD_FILESTAT_GET
                | Rights.POLL_FD_READWRITE | Rights.FD_ADVISE)
_DIR_READ_RIGHTS = (Rights.PATH_OPEN | Rights.FD_READDIR | Rights.PATH_FILESTAT_GET | Rights.FD_FILESTAT_GET
                    | Rights.PATH_READLINK)
_DIR_INO = 1


class SecretFile(WasiFile):
    filetype = Filetype.REGULAR_FILE
    rights_base = _READ_RIGHTS

    def __init__(self, data: bytes, ino: int):
        super().__init__()
        self._data = data
        self._ino = ino
        self._offset = 0

    def read(self, size: int, deadline: float | None) -> bytes:
        data = self._data[self._offset : self._offset + size]
        self._offset += len(data)
        return data

    def pread(self, size: int, offset: int) -> bytes:
        return self._data[offset : offset + size]

    def write(self, data: bytes, deadline: float | None) -> int:
        raise WasiError(Errno.BADF)

    def pwrite(self, data: bytes, offset: int) -> int:
        raise WasiError(Errno.BADF)

    def seek(self, offset: int, whence: int) -> int:
        base = (0, self._offset, len(self._data))[whence] if 0 <= whence <= 2 else None
        if base is None or base + offset < 0:
            raise WasiError(Errno.INVAL)
        self._offset = base + offset
        return self._offset

    def stat(self) -> bytes:
        return FILESTAT.pack(0, self._ino, Filetype.REGULAR_FILE, 1, len(self._data), 0, 0, 0)


class SecretsDir(WasiDir):
    rights_base = _DIR_READ_RIGHTS
    # Writing is not refused by rights but by open (EROFS), so a workload learns why, as on a
    # read-only mount (libc asks only for the rights a directory says its files may have).
    rights_inheriting = FILE_RIGHTS | _DIR_READ_RIGHTS  # (the directory opened again as ".")

    def __init__(self, secrets: Mapping[str, bytes], guest_path: str | None = GUEST_PATH):
        super().__init__()
        self._files = dict(sorted(secrets.items()))
        self._inos = {name: _DIR_INO + 1 + i for i, name in enumerate(self._files)}
        self.guest_path = guest_path

    def _name(self, path: str) -> str | None:
        """The secret ``path`` names; None for the directory itself."""
        name = path.strip("/") if path not in ("", ".") else ""
        if name in ("", "."):
            return None
        if "/" in name or name == "..":
            raise WasiError(Errno.NOTCAPABLE if name.startswith("..") else Errno.NOENT)
        if name not in self._files:
            raise WasiError(Errno.NOENT)
        return name

    def open(self, path: str, *, follow: bool, oflags_creat: bool, excl: bool, trunc: bool,
             directory: bool, read: bool, write: bool, fdflags: FdFlags) -> WasiFile:
        if oflags_creat and path.strip("/") not in self._files:
            raise WasiError(Errno.ROFS)
        if oflags_creat and excl:
            raise WasiError(Errno.EXIST)
        name = self._name(path)
        if trunc or write or fdflags & FdFlags.APPEND:
            raise WasiError(Errno.ISDIR if name is None else Errno.ROFS)
        if name is None:
            return SecretsDir(self._files, guest_path=None)
        if directory:
            raise WasiError(Errno.NOTDIR)
        return SecretFile(self._files[name], self._inos[name])

    def readdir(self) -> list[DirEntry]:
        entries: list[DirEntry] = [(b".", _DIR_INO, Filetype.DIRECTORY), (b"..", _DIR_INO, Filetype.DIRECTORY)]
        entries += [(name.encode(), self._inos[name], Filetype.REGULAR_FILE) for name in self._files]
        return entries

    def stat(self) -> bytes:
        return FILESTAT.pack(0, _DIR_INO, Filetype.DIRECTORY, 1, 0, 0, 0, 0)

    def stat_path(self, path: str, follow: bool) -> bytes:
        name = self._name(path)
        if name is None:
            return self.stat()
        return FILESTAT.pack(0, self._inos[name], Filetype.REGULAR_FILE, 1, len(self._files[name]), 0, 0, 0)

    def set_times_path(self, path: str, atim: int, mtim: int, fst_flags: int, follow: bool) -> None:
        raise WasiError(Errno.ROFS)

    def mkdir(self, path: str) -> None:
        raise WasiError(Errno.ROFS)

    def rmdir(self, path: str) -> None:
        raise WasiError(Errno.ROFS)

    def unlink(self, path: str) -> None:
        raise WasiError(Errno.ROFS)

    def rename(self, old: str, new_dir: WasiDir, new: str) -> None:
        raise WasiError(Errno.ROFS)

    def link(self, old: str, follow: bool, new_dir: WasiDir, new: str) -> None:
        raise WasiError(Errno.ROFS)

    def symlink(self, target: str, path: str) -> None:
        raise WasiError(Errno.ROFS)

    def readlink(self, path: str) -> bytes:
        self._name(path)
        raise WasiError(Errno.INVAL)  # nothing here is a symlink
