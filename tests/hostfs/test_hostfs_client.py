"""The keep's end of a served directory against a broken or hostile host.

Whatever the host answers, the workload gets a WASI errno (EIO once the host broke the protocol,
and from then on) or, past its deadline, the deadline: never another exception in the keep.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import motte.keep.wasi.remote_fs as remote_fs
from motte.keep.wasi.files import DeadlineExceeded
from motte.keep.wasi.remote_fs import HostFsClient, RemoteDir, RemoteFile
from motte.shared import hostfs
from motte.shared.endpoint import Endpoint
from motte.shared.hostfs import MAX_DATA, Entry, Op, Request, Stat, decode_request, encode_error, encode_result
from motte.shared.transport import SocketTransport
from motte.shared.wasi_abi import Errno, FdFlags, Filetype, WasiError

Answer = Callable[[Request], bytes]
STAT = Stat(1, 2, int(Filetype.REGULAR_FILE), 1, 10, 0, 0, 0)


class FakeHost:
    """An endpoint double: takes the keep's requests, answers with whatever ``answer`` makes."""

    def __init__(self, answer: Answer):
        self.answer = answer
        self.requests: list[Request] = []
        self.inbox = b""
        self.eof_sent = False

    def write(self, stream: int, data: bytes, deadline: float | None = None) -> None:
        self.requests.append(decode_request(bytes(data)[4:]))
        self.inbox += self.answer(self.requests[-1])

    def read(self, stream: int, size: int, timeout: float | None = None) -> bytes:
        data, self.inbox = self.inbox[:size], self.inbox[size:]
        return data  # b"" once the answer is used up: the host ended the stream

    def eof(self, stream: int) -> None:
        self.eof_sent = True


def honest(request: Request) -> bytes:
    """A well-behaved host over a tiny in-memory tree: a file "f" with 10 bytes, a directory "d"."""
    op, args = request.op, request.args
    if op is Op.OPEN:
        return encode_result(request.id, op, 7 if args[1] == "f" else 8,
                             Filetype.REGULAR_FILE if args[1] == "f" else Filetype.DIRECTORY)
    if op in (Op.READ, Op.PREAD):
        return encode_result(request.id, op, b"x" * min(args[1], 10))
    if op in (Op.WRITE, Op.PWRITE):
        return encode_result(request.id, op, len(args[-1]))
    if op is Op.SEEK:
        return encode_result(request.id, op, 3)
    if op in (Op.FSTAT, Op.STAT):
        return encode_result(request.id, op, STAT)
    if op is Op.READDIR:
        return encode_result(request.id, op, 5, 0, [Entry(b"f", 9, 4)])
    if op is Op.READLINK:
        return encode_result(request.id, op, b"target")
    return encode_result(request.id, op)


def client_with(answer: Answer) -> tuple[HostFsClient, FakeHost]:
    host = FakeHost(answer)
    return HostFsClient(host, 1), host  # type: ignore[arg-type]


def test_an_honest_host_serves_every_call() -> None:
    client, host = client_with(honest)
    root = RemoteDir.preopen(client, "/data")
    file = root.open("f", follow=True, oflags_creat=False, excl=False, trunc=False, directory=False,
                     read=True, write=True, fdflags=FdFlags(0))
    assert isinstance(file, RemoteFile) and file.filetype == Filetype.REGULAR_FILE
    assert file.read(100, None) == b"x" * 10
    assert file.write(b"abc", None) == 3
    assert file.seek(0, 1) == 3
    assert root.readdir() == [(b".", 5, Filetype.DIRECTORY), (b"..", 0, Filetype.DIRECTORY),
                              (b"f", 9, Filetype.REGULAR_FILE)]
    assert root.readlink("l") == b"target"
    sub = root.open("d", follow=True, oflags_creat=False, excl=False, trunc=False, directory=True,
                    read=True, write=False, fdflags=FdFlags(0))
    assert isinstance(sub, RemoteDir) and sub.handle == 8
    root.rename("a", sub, "b")
    assert host.requests[-1].args == (0, "a", 8, "b")
    file.close()
    file.close()  # idempotent: one CLOSE
    assert [r.op for r in host.requests].count(Op.CLOSE) == 1
    assert client.broken is None


def test_regular_files_are_read_and_written_in_bounded_chunks() -> None:
    sizes: list[int] = []

    def answer(request: Request) -> bytes:
        if request.op is Op.READ:
            sizes.append(request.args[1])
            return encode_result(request.id, Op.READ, b"y" * (request.args[1] if len(sizes) < 3 else 5))
        if request.op is Op.WRITE:
            sizes.append(len(request.args[1]))
        return honest(request)

    client, _ = client_with(answer)
    file = RemoteFile(client, 7, Filetype.REGULAR_FILE, FdFlags(0), readable=True, writable=True)
    assert len(file.read(4 * MAX_DATA, None)) == 2 * MAX_DATA + 5  # the third answer was short: the end
    assert sizes == [MAX_DATA] * 3
    sizes.clear()
    assert file.write(b"z" * (MAX_DATA + 1), None) == MAX_DATA + 1
    assert sizes == [MAX_DATA, 1]
    sizes.clear()
    pipe = RemoteFile(client, 7, Filetype.CHARACTER_DEVICE, FdFlags(0), readable=True, writable=False)
    pipe.read(3 * MAX_DATA, None)
    assert sizes == [MAX_DATA]  # not a regular file: one read, as read(2) would do


def test_a_host_error_is_the_workload_s_errno_and_breaks_nothing() -> None:
    client, _ = client_with(lambda r: encode_error(r.id, Errno.NOENT) if r.op is Op.STAT else honest(r))
    root = RemoteDir.preopen(client, "/data")
    with pytest.raises(WasiError) as caught:
        root.stat_path("missing", True)
    assert caught.value.errno == Errno.NOENT
    assert client.broken is None
    root.mkdir("d")


def frame(raw: bytes) -> bytes:
    return struct.pack("!I", len(raw)) + raw


def result_body(request: Request, fields: bytes) -> bytes:
    return frame(struct.pack("!IH", request.id, 0) + fields)


HOSTILE: dict[str, tuple[Answer, Callable[[RemoteDir], object]]] = {
    "wrong id": (lambda r: encode_result(r.id + 1, r.op), lambda d: d.mkdir("x")),
    "more bytes than asked": (lambda r: encode_result(r.id, Op.READ, b"x" * 20) if r.op is Op.READ else honest(r),
                              lambda d: _file(d).read(10, None)),
    "more bytes written than sent": (lambda r: encode_result(r.id, Op.WRITE, 99) if r.op is Op.WRITE else honest(r),
                                     lambda d: _file(d).write(b"abc", None)),
    "an offset beyond off_t": (lambda r: encode_result(r.id, Op.SEEK, 1 << 63) if r.op is Op.SEEK else honest(r),
                               lambda d: _file(d).seek(0, 0)),
    "an unknown filetype": (lambda r: encode_result(r.id, Op.OPEN, 1, 9), lambda d: _file(d)),
    "a file for O_DIRECTORY": (lambda r: encode_result(r.id, Op.OPEN, 1, 4),
                               lambda d: d.open("d", follow=True, oflags_creat=False, excl=False, trunc=False,
                                                directory=True, read=True, write=False, fdflags=FdFlags(0))),
    "an unknown errno": (lambda r: frame(struct.pack("!IH", r.id, 200)), lambda d: d.mkdir("x")),
    "a status with a bad filetype": (lambda r: result_body(r, struct.pack("!QQBQQQQQ", 1, 1, 99, 1, 0, 0, 0, 0)),
                                     lambda d: d.stat_path("f", True)),
    "fields after the result": (lambda r: result_body(r, b"extra"), lambda d: d.mkdir("x")),
    "a length beyond the maximum": (lambda r: struct.pack("!I", hostfs.MAX_BODY + 1), lambda d: d.mkdir("x")),
    "half a message, then the end": (lambda r: encode_result(r.id, r.op)[:3], lambda d: d.mkdir("x")),
    "no answer at all": (lambda r: b"", lambda d: d.mkdir("x")),
    "endless empty directory pages": (lambda r: encode_result(r.id, Op.READDIR, 1, 1, []), lambda d: d.readdir()),
    "an entry named ..": (lambda r: result_body(r, struct.pack("!QBI", 1, 0, 1) + struct.pack("!QBH", 1, 3, 2) + b".."),
                          lambda d: d.readdir()),
}


def _file(directory: RemoteDir) -> Any:
    return directory.open("f", follow=True, oflags_creat=False, excl=False, trunc=False, directory=False,
                          read=True, write=True, fdflags=FdFlags(0))


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_answer_is_eio_and_the_directory_stays_broken(case: str) -> None:
    answer, action = HOSTILE[case]
    client, host = client_with(answer)
    root = RemoteDir.preopen(client, "/data")
    with pytest.raises(WasiError) as caught:
        action(root)
    assert caught.value.errno == Errno.IO
    assert client.broken
    sent = len(host.requests)
    with pytest.raises(WasiError) as again:
        root.mkdir("y")
    assert again.value.errno == Errno.IO and len(host.requests) == sent  # nothing more goes out
    root.close()  # closing a broken directory is quiet: the host cleans up when the stream ends


def test_a_stale_extra_message_breaks_the_next_call() -> None:
    client, _ = client_with(lambda r: encode_result(r.id, r.op) * 2)
    root = RemoteDir.preopen(client, "/data")
    root.mkdir("a")
    with pytest.raises(WasiError) as caught:
        root.mkdir("b")
    assert caught.value.errno == Errno.IO and "answered request 1, not 2" in str(caught.value)


def test_a_listing_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote_fs, "MAX_LISTING", 50)
    page = [Entry(b"e%d" % i, i, 4) for i in range(20)]
    client, _ = client_with(lambda r: encode_result(r.id, Op.READDIR, 1, 1, page))
    with pytest.raises(WasiError) as caught:
        RemoteDir.preopen(client, "/data").readdir()
    assert caught.value.errno == Errno.NOMEM


def test_bad_arguments_fail_before_anything_is_sent() -> None:
    client, host = client_with(honest)
    root = RemoteDir.preopen(client, "/data")
    file = RemoteFile(client, 7, Filetype.REGULAR_FILE, FdFlags.APPEND, readable=True, writable=True)
    cases: list[tuple[Callable[[], object], Errno]] = [
        (lambda: root.mkdir("x" * (hostfs.MAX_PATH + 1)), Errno.NAMETOOLONG),
        (lambda: file.pread(1, 1 << 63), Errno.INVAL),
        (lambda: file.set_size(1 << 63), Errno.INVAL),
        (lambda: file.pwrite(b"x", 1 << 63), Errno.INVAL),
        (lambda: file.seek(0, 3), Errno.INVAL),
        (lambda: file.set_flags(FdFlags.SYNC), Errno.NOTSUP),
        (lambda: root.open("d", follow=True, oflags_creat=False, excl=False, trunc=False, directory=True,
                           read=False, write=True, fdflags=FdFlags(0)), Errno.ISDIR),
    ]
    for action, errno in cases:
        with pytest.raises(WasiError) as caught:
            action()
        assert caught.value.errno == errno
    assert host.requests == []


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["mkdir", "read", "stat", "readdir", "open", "seek", "readlink"]), st.binary(max_size=120),
       st.booleans())
def test_any_answer_gives_a_result_or_a_wasi_error(action: str, raw: bytes, framed: bool) -> None:
    def answer(request: Request) -> bytes:
        body = struct.pack("!I", request.id) + raw if framed else raw  # a plausible id, then noise
        return frame(body) if framed else body

    client, _ = client_with(answer)
    root = RemoteDir.preopen(client, "/data")
    file = RemoteFile(client, 7, Filetype.REGULAR_FILE, FdFlags(0), readable=True, writable=True)
    actions: dict[str, Callable[[], object]] = {
        "mkdir": lambda: root.mkdir("x"), "read": lambda: file.read(64, None),
        "stat": lambda: root.stat_path("x", True),
        "readdir": root.readdir, "open": lambda: _file(root), "seek": lambda: file.seek(1, 0),
        "readlink": lambda: root.readlink("x"),
    }
    try:
        actions[action]()
    except WasiError:
        pass


# ---- over a real channel: the host goes away, resets, or stalls past the deadline -----------


@pytest.fixture
def channel() -> Iterator[tuple[Endpoint, Endpoint, int]]:
    a, b = socket.socketpair()
    host = Endpoint(SocketTransport(a), "host").start()
    keep = Endpoint(SocketTransport(b), "keep").start()
    host.send_hello()
    keep.send_hello()
    host.await_hello(5)
    keep.await_hello(5)
    stream = host.open_stream(hostfs.STREAM_KIND, guest="/data")
    keep.accept_stream(5)
    yield host, keep, stream
    host.close()
    keep.close()


def _after(delay: float, action: Callable[[], None]) -> None:
    timer = threading.Timer(delay, action)
    timer.daemon = True
    timer.start()


def test_a_reset_stream_is_eio(channel: tuple[Endpoint, Endpoint, int]) -> None:
    host, keep, stream = channel
    client = HostFsClient(keep, stream)
    _after(0.1, lambda: host.reset(stream, "gone"))
    with pytest.raises(WasiError) as caught:
        RemoteDir.preopen(client, "/d").mkdir("x")
    assert caught.value.errno == Errno.IO and "ended the directory's stream" in str(caught.value)


def test_a_closed_channel_is_eio(channel: tuple[Endpoint, Endpoint, int]) -> None:
    host, keep, stream = channel
    client = HostFsClient(keep, stream)
    _after(0.1, host.close)
    with pytest.raises(WasiError) as caught:
        RemoteDir.preopen(client, "/d").mkdir("x")
    assert caught.value.errno == Errno.IO


def test_a_host_that_stalls_meets_the_workload_s_deadline(channel: tuple[Endpoint, Endpoint, int]) -> None:
    _, keep, stream = channel
    started = time.monotonic()
    client = HostFsClient(keep, stream, deadline=started + 0.3)
    with pytest.raises(DeadlineExceeded):
        RemoteDir.preopen(client, "/d").mkdir("x")
    assert 0.25 < time.monotonic() - started < 5
    assert client.broken  # an answer may still come: it must never be taken for the next call's


def test_closing_the_client_ends_the_stream(channel: tuple[Endpoint, Endpoint, int]) -> None:
    host, keep, stream = channel
    client = HostFsClient(keep, stream)
    directory = RemoteDir.preopen(client, "/d")
    client.close()
    assert host.read(stream, 10, timeout=5) == b""  # EOF
    directory.close()  # after the end, closing sends nothing and fails nothing
    with pytest.raises(WasiError) as caught:
        directory.mkdir("x")
    assert caught.value.errno == Errno.IO
