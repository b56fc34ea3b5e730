"""A pure-Python, deterministic writer for the cpio "newc" format (the Linux initramfs format).

Determinism is the point: the keep image is measured (SEV-SNP launch digest, TDX RTMRs), so the
same inputs must give the same bytes. Every field that would otherwise leak the build machine's
state is fixed: entries are sorted by path, mtime is 0, uid/gid are 0, inode numbers are assigned
in sorted order, there are no hard links. No root is needed: device nodes are only headers.

Format (see the kernel's Documentation/driver-api/early-userspace/buffer-format.rst): each entry
is a 110-byte ASCII header ``070701`` + 13 eight-digit hex fields, the NUL-terminated name padded
to a multiple of 4 (counting the header), then the data padded to a multiple of 4. The archive
ends with an entry named ``TRAILER!!!``.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
HEADER_SIZE = 110
Kind = Literal["file", "dir", "symlink", "chardev"]
_TYPE_BITS: dict[str, int] = {
    "file": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "chardev": stat.S_IFCHR,
}


@dataclass(frozen=True)
class Entry:
    path: str  # relative, "/"-separated, no leading slash, no "." or ".." parts
    kind: Kind
    mode: int  # permission bits only (0o7777)
    data: bytes = b""  # file contents, or the symlink target
    rdev: tuple[int, int] = (0, 0)  # (major, minor) of a device node


def _normalise(path: str) -> str:
    parts = [part for part in path.strip("/").split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"bad archive path {path!r}")
    return "/".join(parts)


class Archive:
    """An in-memory set of entries; ``write`` emits them in a canonical order.

    Parent directories are created implicitly (mode 0755). Adding the same path twice with the
    same content is allowed (tracing finds some files by two routes); with different content it is
    an error, since which one wins would depend on the order of the build steps.
    """

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    def __contains__(self, path: str) -> bool:
        return _normalise(path) in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> Iterator[Entry]:
        for path in sorted(self._entries):
            yield self._entries[path]

    @property
    def data_size(self) -> int:
        return sum(len(entry.data) for entry in self._entries.values())

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        self._add(Entry(_normalise(path), "dir", mode & 0o7777))

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._add(Entry(_normalise(path), "file", mode & 0o7777, bytes(data)))

    def add_symlink(self, path: str, target: str) -> None:
        self._add(Entry(_normalise(path), "symlink", 0o777, target.encode()))

    def add_chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._add(Entry(_normalise(path), "chardev", mode & 0o7777, rdev=(major, minor)))

    def _add(self, entry: Entry) -> None:
        parent = entry.path.rpartition("/")[0]
        if parent:
            existing_parent = self._entries.get(parent)
            if existing_parent is None:
                self.add_dir(parent)
            elif existing_parent.kind != "dir":
                raise ValueError(f"{entry.path!r}: parent {parent!r} is a {existing_parent.kind}")
        existing = self._entries.get(entry.path)
        if existing is not None:
            if existing == entry or (existing.kind == entry.kind == "dir"):
                return
            raise ValueError(f"{entry.path!r} added twice with different contents")
        self._entries[entry.path] = entry

    def write(self, out: BinaryIO) -> int:
        """Write the archive; returns the number of bytes written."""
        written = 0
        # Inode numbers start at 1 (0 would read as "no inode" to some tools) and follow the
        # sorted order, so they depend only on the set of paths.
        for inode, entry in enumerate(self.entries(), start=1):
            written += _write_entry(out, entry, inode)
        written += _write_entry(out, Entry(TRAILER, "file", 0), 0, trailer=True)
        return written

    def to_bytes(self) -> bytes:
        import io

        buffer = io.BytesIO()
        self.write(buffer)
        return buffer.getvalue()


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _write_entry(out: BinaryIO, entry: Entry, inode: int, *, trailer: bool = False) -> int:
    name = entry.path.encode() + b"\0"
    mode = 0 if trailer else _TYPE_BITS[entry.kind] | entry.mode
    nlink = 2 if entry.kind == "dir" else 1
    fields = (
        inode,
        mode,
        0,  # uid
        0,  # gid
        0 if trailer else nlink,
        0,  # mtime
        len(entry.data),
        0,  # devmajor / devminor: of the build host's filesystem; meaningless in an archive
        0,
        entry.rdev[0],
        entry.rdev[1],
        len(name),
        0,  # check: only used by the "crc" variant
    )
    header = MAGIC + b"".join(b"%08X" % value for value in fields)
    assert len(header) == HEADER_SIZE
    chunk = header + name + _pad(HEADER_SIZE + len(name))
    out.write(chunk)
    out.write(entry.data)
    tail = _pad(len(entry.data))
    out.write(tail)
    return len(chunk) + len(entry.data) + len(tail)


def read_newc(data: bytes) -> list[tuple[str, int, bytes, dict[str, int]]]:
    """Parse a newc archive back into ``(name, mode, data, fields)`` tuples (trailer excluded).

    Used by ``motte image`` to list an image and by the tests; strict about the format.
    """
    names = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor", "devminor",
             "rdevmajor", "rdevminor", "namesize", "check")  # fmt: skip
    result: list[tuple[str, int, bytes, dict[str, int]]] = []
    offset = 0
    while True:
        if data[offset : offset + 6] != MAGIC:
            raise ValueError(f"bad cpio magic at offset {offset}")
        values = [int(data[offset + 6 + 8 * i : offset + 14 + 8 * i], 16) for i in range(13)]
        fields = dict(zip(names, values, strict=True))
        name_start = offset + HEADER_SIZE
        name_end = name_start + fields["namesize"]
        name = data[name_start : name_end - 1].decode()
        data_start = name_end + (-(HEADER_SIZE + fields["namesize"]) % 4)
        data_end = data_start + fields["filesize"]
        if name == TRAILER:
            return result
        result.append((name, fields["mode"], data[data_start:data_end], fields))
        offset = data_end + (-fields["filesize"] % 4)
