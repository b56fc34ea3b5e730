"""Where compiled modules are kept between runs: a directory on the host's disk.

A compiled module is machine code: whoever loads one trusts it completely. So the directory is
one only this user can write, it is opened without following a symlink and every check is made
on what was opened (the directory's descriptor, then the entry's, relative to it), so nothing can
be swapped in between the check and the read. A nil keep reads and writes it itself; the host
serves it to VM keeps over the channel (:mod:`motte.host.module_cache`).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Protocol


class ModuleStore(Protocol):
    """Compiled artefacts by cache key. Best effort: a store that cannot answer has nothing."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, artefact: bytes | bytearray) -> None: ...

    def close(self) -> None: ...


class DirectoryStore:
    """Artefacts as ``KEY.cwasm`` files in ``directory`` (made on first use)."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)

    def get(self, key: str) -> bytes | None:
        directory = self._open()
        if directory is None:
            return None
        try:
            return _read_entry(directory, f"{key}.cwasm")
        finally:
            os.close(directory)

    def put(self, key: str, artefact: bytes | bytearray) -> None:
        directory = self._open()
        if directory is None:
            return
        try:
            _store(directory, f"{key}.cwasm", artefact)
        finally:
            os.close(directory)

    def close(self) -> None:
        pass

    def _open(self) -> int | None:
        """The directory, opened (never through a symlink) and checked on that descriptor; None
        when there is none to use. The caller closes it."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        # Another user who can write here could plant machine code for us to run.
        if not _ours_alone(os.fstat(fd)):
            os.close(fd)
            return None
        return fd


def _ours_alone(info: os.stat_result) -> bool:
    return info.st_uid == os.getuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _read_entry(directory: int, name: str) -> bytes | None:
    """The bytes of the entry ``name`` in ``directory``, if it is a regular file of ours that only
    we can write (checked on the descriptor it is read from); else None."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as file:
        try:
            info = os.fstat(fd)
            return file.read() if stat.S_ISREG(info.st_mode) and _ours_alone(info) else None
        except OSError:
            return None


def _store(directory: int, name: str, data: bytes | bytearray) -> None:
    temporary = f".tmp-{os.urandom(8).hex()}.cwasm"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=directory)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        # atomic: concurrent runs never see a partial file
        os.replace(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
    except OSError:
        with contextlib.suppress(OSError):  # the cache is an optimisation: a full disk must not fail the run
            os.unlink(temporary, dir_fd=directory)
