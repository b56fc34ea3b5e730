"""The newc cpio writer: format (read back by an independent parser and by cpio(1)), determinism."""

from __future__ import annotations

import io
import shutil
import subprocess

import pytest

from motte.host.image.cpio import Archive, read_newc
from motte.host.image.kernel import lz4_legacy_compress, lz4_legacy_decompress


def parse(data: bytes) -> list[dict[str, object]]:
    """A tiny newc reader written from the format description, independent of the writer."""
    entries = []
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701", f"bad magic at {pos}"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        ino, mode, uid, gid, nlink, mtime, size, _dmaj, _dmin, rmaj, rmin, namesize, check = fields
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        assert data[pos + 110 + namesize - 1] == 0
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos : pos + size]
        pos += size
        pos += -pos % 4
        if name == "TRAILER!!!":
            assert pos == len(data)
            return entries
        entries.append(dict(ino=ino, mode=mode, uid=uid, gid=gid, nlink=nlink, mtime=mtime, name=name, body=body,
                            rdev=(rmaj, rmin), check=check))  # fmt: skip


def sample(order: int = 1) -> Archive:
    archive = Archive()
    items = [
        lambda: archive.add_file("usr/bin/tool", b"#!/bin/sh\necho hi\n", 0o755),
        lambda: archive.add_file("etc/a.conf", b"x" * 5),  # odd length: exercises padding
        lambda: archive.add_symlink("bin", "usr/bin"),
        lambda: archive.add_chardev("dev/console", 5, 1),
        lambda: archive.add_dir("tmp", 0o1777),
        lambda: archive.add_file("usr/lib/python3.11/os.pyc", bytes(range(256)) * 3),
    ]
    for add in items[::order]:
        add()
    return archive


def test_entries_read_back_with_fixed_metadata() -> None:
    data = sample().to_bytes()
    entries = parse(data)
    names = [e["name"] for e in entries]
    assert names == sorted(names), "entries are sorted by path"
    assert names == ["bin", "dev", "dev/console", "etc", "etc/a.conf", "tmp", "usr", "usr/bin", "usr/bin/tool",
                     "usr/lib", "usr/lib/python3.11", "usr/lib/python3.11/os.pyc"]  # fmt: skip
    by_name = {e["name"]: e for e in entries}
    assert [e["ino"] for e in entries] == list(range(1, len(entries) + 1))
    assert all(e["mtime"] == 0 and e["uid"] == 0 and e["gid"] == 0 and e["check"] == 0 for e in entries)
    assert by_name["usr/bin/tool"]["mode"] == 0o100755
    assert by_name["usr/bin/tool"]["body"] == b"#!/bin/sh\necho hi\n"
    assert by_name["etc/a.conf"]["mode"] == 0o100644 and by_name["etc/a.conf"]["body"] == b"xxxxx"
    assert by_name["bin"]["mode"] == 0o120777 and by_name["bin"]["body"] == b"usr/bin"
    assert by_name["dev/console"]["mode"] == 0o020600 and by_name["dev/console"]["rdev"] == (5, 1)
    assert by_name["tmp"]["mode"] == 0o041777 and by_name["tmp"]["nlink"] == 2
    assert by_name["usr/lib"]["mode"] == 0o040755, "parents are created implicitly"
    # The module's own reader agrees with the independent one.
    assert [(n, m, d) for n, m, d, _ in read_newc(data)] == [(e["name"], e["mode"], e["body"]) for e in entries]


def test_output_does_not_depend_on_insertion_order() -> None:
    assert sample(1).to_bytes() == sample(-1).to_bytes()


def test_write_returns_size_and_is_4_aligned() -> None:
    buffer = io.BytesIO()
    size = sample().write(buffer)
    assert size == len(buffer.getvalue()) and size % 4 == 0


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio(1) is not installed")
def test_gnu_cpio_lists_the_archive() -> None:
    result = subprocess.run(["cpio", "-t", "-v", "--quiet"], input=sample().to_bytes(), capture_output=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0].startswith("lrwxrwxrwx") and lines[0].endswith("bin -> usr/bin")
    assert any("usr/bin/tool" in line and line.startswith("-rwxr-xr-x") for line in lines)
    assert any(line.startswith("crw-------") and "dev/console" in line for line in lines)
    assert all(" 1970 " in line for line in lines), "every mtime is the epoch"


def test_duplicates_and_bad_paths() -> None:
    archive = Archive()
    archive.add_file("a/b", b"1")
    archive.add_file("/a/./b", b"1")  # same path, same content: fine
    with pytest.raises(ValueError, match="twice"):
        archive.add_file("a/b", b"2")
    with pytest.raises(ValueError, match="bad archive path"):
        archive.add_file("a/../etc/passwd", b"")
    with pytest.raises(ValueError, match="is a file"):
        archive.add_file("a/b/c", b"")
    archive.add_symlink("lib", "usr/lib")
    with pytest.raises(ValueError, match="is a symlink"):
        archive.add_file("lib/x", b"")
    assert len(archive) == 3 and "a/b" in archive


def test_lz4_legacy_round_trip_is_deterministic() -> None:
    data = b"".join(i.to_bytes(4, "little") * 3 for i in range(3 << 20))  # 36 MiB: several 8 MiB blocks
    packed = lz4_legacy_compress(data)
    assert packed[:4] == b"\x02\x21\x4c\x18"
    assert packed == lz4_legacy_compress(data)
    assert lz4_legacy_decompress(packed) == data


@pytest.mark.skipif(shutil.which("lz4") is None, reason="the lz4 CLI is not installed")
def test_lz4_cli_reads_our_legacy_frames() -> None:
    # The kernel's unpacker reads the same legacy format as `lz4 -d` (magic 0x184C2102).
    data = sample().to_bytes() * 1000
    result = subprocess.run(["lz4", "-d", "-c"], input=lz4_legacy_compress(data), capture_output=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == data
