"""The host's file server against a hostile keep: hand-built requests, never through WASI.

Each test serves a directory ``root`` next to an ``outside`` tree the keep must never reach, and
checks after the fact that nothing outside changed (names, contents, link counts, times).
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import motte.host.hostfs as host_hostfs
from motte.host.hostfs import HostFsServer
from motte.shared import hostfs
from motte.shared.errors import MotteError
from motte.shared.hostfs import HostFsProtocolError, Op, Response, decode_response, encode_request
from motte.shared.wasi_abi import Errno, FdFlags, Filetype

R = hostfs.OPEN_READ
W = hostfs.OPEN_WRITE
F = hostfs.OPEN_FOLLOW
CREAT = hostfs.OPEN_CREAT
DIR = hostfs.OPEN_DIRECTORY


def make_tree(base: Path) -> Path:
    """``base/root`` (served) and ``base/outside``; returns root."""
    root, outside = base / "root", base / "outside"
    root.mkdir()
    (outside / "deep").mkdir(parents=True)
    (outside / "secret.txt").write_text("secret")
    (outside / "deep" / "more.txt").write_text("more")
    (root / "file.txt").write_text("inside")
    (root / "sub").mkdir()
    (root / "sub" / "inner.txt").write_text("inner")
    (root / "out-abs").symlink_to(outside / "secret.txt")
    (root / "out-rel").symlink_to("../outside/secret.txt")
    (root / "out-dir").symlink_to("../outside")
    (root / "dangling-out").symlink_to("../outside/new.txt")
    (root / "sub" / "up-and-out").symlink_to("../../outside/secret.txt")
    (root / "loop1").symlink_to("loop2")
    (root / "loop2").symlink_to("loop1")
    (root / "proc-root").symlink_to("/proc/self/root")
    (root / "in-rel").symlink_to("sub/inner.txt")
    return root


def snapshot(base: Path, served: str = "root") -> dict[str, tuple[Any, ...]]:
    """Everything about ``base`` except the served directory: what an escape would change."""
    found: dict[str, tuple[Any, ...]] = {}
    for path in sorted(base.rglob("*")):
        if path.is_relative_to(base / served):
            continue
        st = path.lstat()
        content = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
        found[str(path.relative_to(base))] = (st.st_mode, st.st_nlink, st.st_size, st.st_mtime_ns, content)
    found["."] = (sorted(p.name for p in base.iterdir()),)
    return found


class Keep:
    """Speaks to a server the way a hostile keep could: request by request, bytes by hand."""

    def __init__(self, server: HostFsServer):
        self.server = server
        self.next_id = 1

    def call(self, op: Op, *args: Any) -> Response:
        self.next_id += 1
        answers = self.server.receive(encode_request(self.next_id, op, *args))
        assert len(answers) == 1
        (size,) = struct.unpack_from("!I", answers[0])
        response = decode_response(answers[0][4:], op)
        assert response.id == self.next_id and len(answers[0]) == 4 + size
        return response

    def ok(self, op: Op, *args: Any) -> tuple[Any, ...]:
        response = self.call(op, *args)
        assert response.errno == 0, Errno(response.errno).name
        return response.values

    def errno(self, op: Op, *args: Any) -> Errno:
        return Errno(self.call(op, *args).errno)


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[Path, Keep]]:
    root = make_tree(tmp_path)
    before = snapshot(tmp_path)
    server = HostFsServer(str(root))
    yield root, Keep(server)
    assert server.internal_errors == []
    server.close()
    assert snapshot(tmp_path) == before


# ---- escapes: each is refused, and nothing outside changes (the fixture checks) -------------


@pytest.mark.parametrize(("path", "bits", "errno"), [
    ("../outside/secret.txt", R, Errno.NOTCAPABLE),
    ("/etc/passwd", R, Errno.NOTCAPABLE),
    ("//etc/passwd", R, Errno.NOTCAPABLE),
    ("sub/../../outside/secret.txt", R, Errno.NOTCAPABLE),
    ("out-abs", R | F, Errno.NOTCAPABLE),
    ("out-rel", R | F, Errno.NOTCAPABLE),
    ("out-rel", W | F, Errno.NOTCAPABLE),
    ("out-dir/secret.txt", R | F, Errno.NOTCAPABLE),
    ("out-dir", R | F | DIR, Errno.NOTCAPABLE),
    ("out-dir/secret.txt", R, Errno.NOTCAPABLE),  # intermediate symlinks are followed, beneath only
    ("sub/up-and-out", R | F, Errno.NOTCAPABLE),
    ("proc-root/etc/passwd", R | F, Errno.NOTCAPABLE),
    ("out-abs", R, Errno.LOOP),  # not followed: the symlink itself
    ("loop1", R | F, Errno.LOOP),
    ("../created", W | CREAT, Errno.NOTCAPABLE),
    ("dangling-out", W | CREAT | F, Errno.NOTCAPABLE),
    ("/tmp/created-by-keep", W | CREAT, Errno.NOTCAPABLE),
])
def test_opens_that_would_leave_the_directory_are_refused(tree: tuple[Path, Keep], path: str, bits: int,
                                                          errno: Errno) -> None:
    _, keep = tree
    assert keep.errno(Op.OPEN, hostfs.ROOT_HANDLE, path, bits, 0) == errno


@pytest.mark.parametrize(("op", "args"), [
    (Op.STAT, (0, "out-abs", 1)),
    (Op.STAT, (0, "../outside", 0)),
    (Op.STAT, (0, "/", 0)),
    (Op.SET_TIMES_PATH, (0, "out-rel", 1, 1, 1, 1 | 4)),
    (Op.SET_TIMES_PATH, (0, "out-dir/secret.txt", 0, 1, 1, 1 | 4)),
    (Op.MKDIR, (0, "../made")),
    (Op.MKDIR, (0, "/tmp/made-by-keep")),
    (Op.MKDIR, (0, "out-dir/made")),
    (Op.RMDIR, (0, "../outside/deep")),
    (Op.RMDIR, (0, "..")),
    (Op.UNLINK, (0, "../outside/secret.txt")),
    (Op.UNLINK, (0, "out-dir/secret.txt")),
    (Op.RENAME, (0, "file.txt", 0, "../moved-out")),
    (Op.RENAME, (0, "../outside/secret.txt", 0, "stolen")),
    (Op.RENAME, (0, "file.txt", 0, "out-dir/moved-out")),
    (Op.LINK, (0, "../outside/secret.txt", 0, 0, "stolen")),
    (Op.LINK, (0, "out-rel", 1, 0, "stolen")),  # linkat(AT_SYMLINK_FOLLOW) would link the outside file in
    (Op.LINK, (0, "out-abs", 1, 0, "stolen")),
    (Op.LINK, (0, "sub/up-and-out", 1, 0, "stolen")),
    (Op.LINK, (0, "file.txt", 0, 0, "../linked-out")),
    (Op.SYMLINK, ("/etc/passwd", 0, "abs-link")),
    (Op.SYMLINK, ("x", 0, "../symlinked-out")),
    (Op.READLINK, (0, "../outside-link")),
    (Op.OPEN, (0, "..", R | DIR, 0)),
    # A trailing slash makes the kernel follow a symlink in the last name: never unconfined.
    (Op.STAT, (0, "out-dir/", 0)),
    (Op.SET_TIMES_PATH, (0, "out-dir/", 0, 1, 1, 1 | 4)),
    (Op.READLINK, (0, "out-dir/")),
    (Op.LINK, (0, "out-dir/", 0, 0, "stolen")),
])
def test_path_operations_that_would_leave_the_directory_are_refused(tree: tuple[Path, Keep], op: Op,
                                                                   args: tuple[Any, ...]) -> None:
    root, keep = tree
    assert keep.errno(op, *args) == Errno.NOTCAPABLE
    assert not (root / "stolen").exists() and not (root / "abs-link").exists()


def test_a_directory_handle_confines_to_itself(tree: tuple[Path, Keep]) -> None:
    _, keep = tree
    sub, filetype = keep.ok(Op.OPEN, 0, "sub", R | DIR, 0)
    assert filetype == Filetype.DIRECTORY
    assert keep.errno(Op.OPEN, sub, "../file.txt", R, 0) == Errno.NOTCAPABLE  # beneath sub, not the root
    assert keep.errno(Op.STAT, sub, "..", 1) == Errno.NOTCAPABLE
    handle, _ = keep.ok(Op.OPEN, sub, "inner.txt", R, 0)
    assert keep.ok(Op.READ, handle, 100) == (b"inner",)


def test_what_stays_inside_works(tree: tuple[Path, Keep]) -> None:
    root, keep = tree
    handle, filetype = keep.ok(Op.OPEN, 0, "in-rel", R | F, 0)  # a symlink that stays inside
    assert filetype == Filetype.REGULAR_FILE and keep.ok(Op.READ, handle, 100) == (b"inner",)
    (stat,) = keep.ok(Op.STAT, 0, "out-abs", 0)  # the link itself may be looked at
    assert stat.filetype == Filetype.SYMBOLIC_LINK
    assert keep.ok(Op.READLINK, 0, "out-rel") == (b"../outside/secret.txt",)
    # Linking the symlink itself (no follow) copies a link that still cannot be followed out.
    keep.ok(Op.LINK, 0, "out-rel", 0, 0, "copy-of-link")
    assert (root / "copy-of-link").is_symlink()
    assert keep.errno(Op.OPEN, 0, "copy-of-link", R | F, 0) == Errno.NOTCAPABLE
    # A relative symlink pointing out may be made; following it is what is refused.
    keep.ok(Op.SYMLINK, "../outside/secret.txt", 0, "made-link")
    assert keep.errno(Op.OPEN, 0, "made-link", R | F, 0) == Errno.NOTCAPABLE
    keep.ok(Op.LINK, 0, "in-rel", 1, 0, "hard")  # follow, inside: links sub/inner.txt
    assert (root / "hard").read_text() == "inner" and (root / "sub" / "inner.txt").stat().st_nlink == 2
    keep.ok(Op.SET_TIMES_PATH, 0, "in-rel", 1, 5_000_000_000, 7_000_000_000, 1 | 4)
    assert (root / "sub" / "inner.txt").stat().st_mtime_ns == 7_000_000_000


@pytest.mark.parametrize(("op", "args", "errno"), [
    (Op.UNLINK, (0, "sub/"), Errno.ISDIR),
    (Op.UNLINK, (0, "file.txt/"), Errno.NOTDIR),
    (Op.UNLINK, (0, "out-dir/"), Errno.NOTDIR),  # the symlink, not followed
    (Op.RMDIR, (0, "file.txt/"), Errno.NOTDIR),
    (Op.RENAME, (0, "file.txt/", 0, "moved"), Errno.NOTDIR),
    (Op.RENAME, (0, "file.txt", 0, "moved/"), Errno.NOTDIR),
    (Op.RENAME, (0, "out-dir/", 0, "moved"), Errno.NOTDIR),
    (Op.SYMLINK, ("x", 0, "new/"), Errno.NOENT),
    (Op.SYMLINK, ("x", 0, "file.txt/"), Errno.NOTDIR),
    (Op.SYMLINK, ("x", 0, "sub/"), Errno.EXIST),
    (Op.LINK, (0, "file.txt", 0, 0, "new/"), Errno.NOENT),
    (Op.LINK, (0, "file.txt/", 0, 0, "new"), Errno.NOTDIR),
    (Op.LINK, (0, "sub/", 0, 0, "new"), Errno.PERM),
    (Op.LINK, (0, "sub/", 1, 0, "new"), Errno.PERM),
    (Op.STAT, (0, "file.txt/", 0), Errno.NOTDIR),
    (Op.READLINK, (0, "sub/"), Errno.INVAL),
    (Op.READLINK, (0, "file.txt/"), Errno.NOTDIR),
    (Op.OPEN, (0, "file.txt/", R, 0), Errno.NOTDIR),
])
def test_a_trailing_slash_names_a_directory(tree: tuple[Path, Keep], op: Op, args: tuple[Any, ...],
                                            errno: Errno) -> None:
    root, keep = tree
    assert keep.errno(op, *args) == errno
    assert sorted(p.name for p in root.iterdir() if p.name in ("moved", "new")) == []


def test_a_trailing_slash_on_a_directory_does_what_it_does_without(tree: tuple[Path, Keep]) -> None:
    root, keep = tree
    (stat,) = keep.ok(Op.STAT, 0, "sub/", 0)
    assert stat.filetype == Filetype.DIRECTORY
    keep.ok(Op.MKDIR, 0, "made/")
    keep.ok(Op.RENAME, 0, "made/", 0, "renamed/")
    keep.ok(Op.RMDIR, 0, "renamed/")
    assert not (root / "made").exists() and not (root / "renamed").exists()


# ---- handles and flags: a keep cannot confuse the server ------------------------------------


def test_handles_are_checked(tree: tuple[Path, Keep]) -> None:
    _, keep = tree
    handle, _ = keep.ok(Op.OPEN, 0, "file.txt", R, 0)
    assert keep.errno(Op.OPEN, handle, "x", R, 0) == Errno.NOTDIR  # a file is no directory handle
    assert keep.errno(Op.READDIR, handle, 0) == Errno.NOTDIR
    assert keep.errno(Op.WRITE, handle, b"x") == Errno.BADF  # opened read-only
    assert keep.errno(Op.READ, 12345, 1) == Errno.BADF
    assert keep.errno(Op.READ, handle, hostfs.MAX_DATA + 1) == Errno.INVAL
    assert keep.errno(Op.SEEK, 0, 0, 0) == Errno.BADF  # a directory
    writer, _ = keep.ok(Op.OPEN, 0, "new.txt", W | CREAT, 0)
    assert keep.errno(Op.READ, writer, 1) == Errno.BADF
    keep.ok(Op.CLOSE, handle)
    assert keep.errno(Op.CLOSE, handle) == Errno.BADF
    keep.ok(Op.CLOSE, hostfs.ROOT_HANDLE)
    assert keep.errno(Op.OPEN, hostfs.ROOT_HANDLE, "file.txt", R, 0) == Errno.BADF


@pytest.mark.parametrize(("op", "args", "errno"), [
    (Op.OPEN, (0, "file.txt", 0x80, 0), Errno.INVAL),
    (Op.OPEN, (0, "file.txt", R, 0x20), Errno.INVAL),
    (Op.OPEN, (0, "sub", W | DIR, 0), Errno.ISDIR),
    (Op.STAT, (0, "file.txt", 2), Errno.INVAL),
    (Op.LINK, (0, "file.txt", 7, 0, "x"), Errno.INVAL),
    (Op.SET_TIMES_PATH, (0, "file.txt", 0, 1, 1, 1 | 2), Errno.INVAL),  # ATIM and ATIM_NOW
    (Op.SET_FLAGS, (1, 0x40), Errno.INVAL),
    (Op.PREAD, (1, 1, 1 << 63), Errno.INVAL),
    (Op.SET_SIZE, (1, (1 << 64) - 1), Errno.INVAL),
    (Op.SET_SIZE, (0, 0), Errno.BADF),  # a directory
    (Op.RMDIR, (0, "."), Errno.INVAL),
    (Op.UNLINK, (0, "file.txt/"), Errno.NOTDIR),
    (Op.MKDIR, (0, ""), Errno.NOENT),
])
def test_bad_arguments_get_an_errno(tree: tuple[Path, Keep], op: Op, args: tuple[Any, ...], errno: Errno) -> None:
    _, keep = tree
    assert keep.ok(Op.OPEN, 0, "file.txt", R | W, 0)[0] == 1  # handle 1: a file
    assert keep.errno(op, *args) == errno


def test_seek_on_a_file_and_its_bounds(tree: tuple[Path, Keep]) -> None:
    _, keep = tree
    handle, _ = keep.ok(Op.OPEN, 0, "file.txt", R, 0)
    assert keep.ok(Op.SEEK, handle, -2, 2) == (4,)
    assert keep.errno(Op.SEEK, handle, -100, 0) == Errno.INVAL
    assert keep.errno(Op.SEEK, handle, 0, 3) == Errno.INVAL


def test_a_read_only_directory_answers_every_change_with_erofs(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    before = snapshot(tmp_path, served="-")  # no such directory: everything, the served one included
    server = HostFsServer(str(root), read_only=True)
    keep = Keep(server)
    reader, _ = keep.ok(Op.OPEN, 0, "file.txt", R, 0)
    assert keep.ok(Op.READ, reader, 100) == (b"inside",)
    assert keep.ok(Op.OPEN, 0, "file.txt", R | CREAT, 0)  # creating what exists is no change
    assert keep.errno(Op.OPEN, 0, "file.txt", R | CREAT | hostfs.OPEN_EXCL, 0) == Errno.EXIST
    assert keep.errno(Op.OPEN, 0, "out-rel", R | CREAT | F, 0) == Errno.NOTCAPABLE  # still confined
    for bits, fdflags in ((W, 0), (R | W, 0), (W | CREAT, 0), (R | CREAT, 0), (R | hostfs.OPEN_TRUNC, 0),
                          (R, int(FdFlags.APPEND))):
        path = "new.txt" if bits & CREAT and not bits & W else "file.txt"
        assert keep.errno(Op.OPEN, 0, path, bits, fdflags) == Errno.ROFS, (bits, fdflags)
    for op, args in ((Op.MKDIR, (0, "d")), (Op.RMDIR, (0, "sub")), (Op.UNLINK, (0, "file.txt")),
                     (Op.RENAME, (0, "file.txt", 0, "moved")), (Op.LINK, (0, "file.txt", 0, 0, "hard")),
                     (Op.SYMLINK, ("file.txt", 0, "soft")), (Op.SET_SIZE, (reader, 0)),
                     (Op.SET_TIMES, (reader, 0, 0, 2)), (Op.SET_TIMES_PATH, (0, "file.txt", 0, 0, 0, 2))):
        assert keep.errno(op, *args) == Errno.ROFS, op
    assert keep.errno(Op.WRITE, reader, b"x") == Errno.BADF
    assert server.internal_errors == []
    server.close()
    assert snapshot(tmp_path, served="-") == before


def test_open_handles_are_capped(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    server = HostFsServer(str(root), max_handles=4)
    keep = Keep(server)
    handles = [keep.ok(Op.OPEN, 0, "file.txt", R, 0)[0] for _ in range(4)]
    assert keep.errno(Op.OPEN, 0, "file.txt", R, 0) == Errno.NFILE
    keep.ok(Op.CLOSE, handles[0])
    keep.ok(Op.OPEN, 0, "file.txt", R, 0)
    assert server.open_handles == 5  # the root and four
    server.close()
    assert server.open_handles == 0
    server.close()  # idempotent


def test_readdir_pages_cover_every_entry_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    root.mkdir()
    names = sorted(f"entry-{i:03d}-{'x' * (i % 17)}" for i in range(120))
    for name in names:
        (root / name).write_text("")
    (root / ("n" * 255)).mkdir()  # the longest name there is
    monkeypatch.setattr(host_hostfs, "READDIR_PAGE", 300)
    server = HostFsServer(str(root))
    keep = Keep(server)
    seen: list[bytes] = []
    pages = 0
    more = 1
    while more:
        ino, more, page = keep.ok(Op.READDIR, 0, len(seen))
        assert ino == root.stat().st_ino and page
        seen += [e.name for e in page]
        pages += 1
    assert seen == sorted(os.fsencode(n) for n in [*names, "n" * 255])
    assert pages > 10
    assert keep.ok(Op.READDIR, 0, len(seen))[1:] == (0, [])  # past the end: nothing, not an error


def test_unknown_ops_and_bad_fields_are_answered_and_the_server_goes_on(tree: tuple[Path, Keep]) -> None:
    _, keep = tree
    answers = keep.server.receive(struct.pack("!IIB", 5, 77, 200) + struct.pack("!IIB", 5, 78, Op.CLOSE))
    assert [decode_response(a[4:], Op.CLOSE) for a in answers] == [(77, Errno.NOSYS, ()), (78, Errno.INVAL, ())]
    assert keep.ok(Op.FSTAT, 0)[0].filetype == Filetype.DIRECTORY


def test_broken_framing_is_a_protocol_error(tree: tuple[Path, Keep]) -> None:
    _, keep = tree
    with pytest.raises(HostFsProtocolError, match="exceeds the maximum"):
        keep.server.receive(struct.pack("!I", 0xFFFFFFFF))
    server = HostFsServer(str(tree[0]))
    with pytest.raises(HostFsProtocolError, match="no id"):
        server.receive(struct.pack("!I", 2) + b"ab")
    server.close()


def test_a_directory_that_cannot_be_opened_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MotteError, match=r"cannot serve directory .*: No such file or directory"):
        HostFsServer(str(tmp_path / "missing"))


# ---- fuzzing: random requests with nasty paths never escape, never crash the server ---------

NASTY_PATHS = [
    "", ".", "..", "/", "//", "../outside/secret.txt", "/etc/passwd", "out-abs", "out-rel", "out-dir",
    "out-dir/secret.txt", "out-dir/deep", "sub/up-and-out", "dangling-out", "loop1", "proc-root",
    "proc-root/etc", "sub", "sub/", "sub/..", "sub/../..", "file.txt", "file.txt/", "new", "sub/new",
    "in-rel", "a" * 300, "x/" * 50, "sub/inner.txt", ".hidden", "..." ,
]
_handles = st.just(0) | st.integers(0, 6)  # 0, the served directory, most: paths from it reach furthest
_paths = st.sampled_from(NASTY_PATHS)
_flag = st.integers(0, 1)
_times = st.sampled_from([0, 1, 1 << 62])
_ARGS: dict[Op, Any] = {
    Op.OPEN: st.tuples(_handles, _paths, st.integers(0, hostfs.OPEN_ALL) | st.sampled_from([R, R | F, F | DIR]),
                       st.sampled_from([0, 1, 2, 16])),
    Op.CLOSE: st.tuples(_handles),
    Op.READ: st.tuples(_handles, st.integers(0, 64)),
    Op.PREAD: st.tuples(_handles, st.integers(0, 64), st.integers(0, 100)),
    Op.WRITE: st.tuples(_handles, st.binary(max_size=16)),
    Op.PWRITE: st.tuples(_handles, st.integers(0, 100), st.binary(max_size=16)),
    Op.SEEK: st.tuples(_handles, st.integers(-10, 10), st.integers(0, 3)),
    Op.FSTAT: st.tuples(_handles),
    Op.STAT: st.tuples(_handles, _paths, _flag),
    Op.SET_SIZE: st.tuples(_handles, st.integers(0, 100)),
    Op.SET_TIMES: st.tuples(_handles, _times, _times, st.integers(0, 15)),
    Op.SET_TIMES_PATH: st.tuples(_handles, _paths, _flag, _times, _times, st.integers(0, 15)),
    Op.SET_FLAGS: st.tuples(_handles, st.integers(0, 31)),
    Op.SYNC: st.tuples(_handles),
    Op.READDIR: st.tuples(_handles, st.integers(0, 5)),
    Op.MKDIR: st.tuples(_handles, _paths),
    Op.RMDIR: st.tuples(_handles, _paths),
    Op.UNLINK: st.tuples(_handles, _paths),
    Op.RENAME: st.tuples(_handles, _paths, _handles, _paths),
    Op.LINK: st.tuples(_handles, _paths, _flag, _handles, _paths),
    Op.SYMLINK: st.tuples(st.sampled_from(["../outside/secret.txt", "/etc", "sub", "x"]), _handles, _paths),
    Op.READLINK: st.tuples(_handles, _paths),
}
# OPEN, one in four: what it opens, the test then reads, lists and stats (below)
_ops = st.sampled_from([*list(Op), *[Op.OPEN] * (len(Op) // 3)])
_requests = st.lists(_ops.flatmap(lambda op: _ARGS[op].map(lambda args: (op, args))), min_size=1, max_size=25)


OUTSIDE_CONTENT = (b"secret", b"more")  # what the files outside hold (make_tree); no file inside does


def reveals_outside(op: Op, response: Response, outside_inodes: set[int]) -> bool:
    """Whether an answer shows something of the outside tree: a file's bytes, or a file's status
    or a directory's listing (by inode number)."""
    if response.errno:
        return False
    values = response.values
    if op in (Op.READ, Op.PREAD):
        return any(marker in values[0] for marker in OUTSIDE_CONTENT)
    if op in (Op.STAT, Op.FSTAT):
        return values[0].ino in outside_inodes
    if op is Op.READDIR:
        return values[0] in outside_inodes or any(ino in outside_inodes for _, ino, _ in values[2])
    return False


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_requests)
def test_random_requests_never_escape_nor_crash(requests: list[tuple[Op, tuple[Any, ...]]]) -> None:
    base = Path(tempfile.mkdtemp(prefix="hostfs-fuzz-"))
    try:
        root = make_tree(base)
        before = snapshot(base)
        outside = {path.lstat().st_ino for path in [base, *base.rglob("*")] if not path.is_relative_to(root)}
        server = HostFsServer(str(root))
        keep = Keep(server)
        for op, args in requests:
            response = keep.call(op, *args)
            assert not reveals_outside(op, response, outside), (op, args)  # no read outside either
            if op is Op.OPEN and not response.errno:  # look into what was opened, as a keep would
                handle = response.values[0]
                probes = ((Op.FSTAT, (handle,)), (Op.PREAD, (handle, 64, 0)), (Op.READDIR, (handle, 0)))
                for probe, probe_args in probes:
                    assert not reveals_outside(probe, keep.call(probe, *probe_args), outside), (op, args, probe)
        assert server.internal_errors == []
        server.close()
        assert snapshot(base) == before
    finally:
        shutil.rmtree(base, ignore_errors=True)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_get_answers_or_a_protocol_error(raw: bytes) -> None:
    base = Path(tempfile.mkdtemp(prefix="hostfs-fuzz-"))
    try:
        root = make_tree(base)
        before = snapshot(base)
        server = HostFsServer(str(root))
        try:
            for answer in server.receive(raw):
                (size,) = struct.unpack_from("!I", answer)
                assert len(answer) == 4 + size
        except HostFsProtocolError:
            pass
        assert server.internal_errors == []
        server.close()
        assert snapshot(base) == before
    finally:
        shutil.rmtree(base, ignore_errors=True)
