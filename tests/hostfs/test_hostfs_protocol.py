"""The host file protocol's encoding: round trips, bounds, and any bytes -> a typed error."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from motte.shared import hostfs
from motte.shared.hostfs import (
    MAX_BODY,
    MAX_DATA,
    MAX_PATH,
    Entry,
    FieldError,
    HostFsProtocolError,
    MessageReader,
    Op,
    Stat,
    decode_request,
    decode_response,
    encode_error,
    encode_request,
    encode_result,
)
from motte.shared.wasi_abi import Errno

STAT = Stat(1, 2, 4, 1, 100, 10, 20, 30)

REQUESTS: dict[Op, tuple[Any, ...]] = {
    Op.OPEN: (0, "a/b.txt", hostfs.OPEN_CREAT | hostfs.OPEN_WRITE, 1),
    Op.CLOSE: (7,),
    Op.READ: (7, MAX_DATA),
    Op.PREAD: (7, 10, (1 << 63) - 1),
    Op.WRITE: (7, b"hello"),
    Op.PWRITE: (7, 5, b"\0" * 1000),
    Op.SEEK: (7, -3, 2),
    Op.FSTAT: (0,),
    Op.STAT: (0, "ünïcode/päth", 1),
    Op.SET_SIZE: (7, 1 << 40),
    Op.SET_TIMES: (7, 1, 2, 0xF),
    Op.SET_TIMES_PATH: (0, "x", 0, (1 << 64) - 1, 0, 5),
    Op.SET_FLAGS: (7, 1),
    Op.SYNC: (7,),
    Op.READDIR: (3, 1000),
    Op.MKDIR: (0, "d" * MAX_PATH),
    Op.RMDIR: (0, "d"),
    Op.UNLINK: (0, "f"),
    Op.RENAME: (0, "old", 3, "new"),
    Op.LINK: (0, "old", 1, 0, "new"),
    Op.SYMLINK: ("../t", 0, "link"),
    Op.READLINK: (0, "link"),
}

RESULTS: dict[Op, tuple[Any, ...]] = {
    Op.OPEN: (9, 4),
    Op.CLOSE: (),
    Op.READ: (b"x" * MAX_DATA,),
    Op.PREAD: (b"",),
    Op.WRITE: (5,),
    Op.PWRITE: (1000,),
    Op.SEEK: (1 << 62,),
    Op.FSTAT: (STAT,),
    Op.STAT: (STAT,),
    Op.SET_SIZE: (),
    Op.SET_TIMES: (),
    Op.SET_TIMES_PATH: (),
    Op.SET_FLAGS: (),
    Op.SYNC: (),
    Op.READDIR: (99, 1, [Entry(b"a", 1, 4), Entry(b"\xff\xfename", 2, 3)]),
    Op.MKDIR: (),
    Op.RMDIR: (),
    Op.UNLINK: (),
    Op.RENAME: (),
    Op.LINK: (),
    Op.SYMLINK: (),
    Op.READLINK: (b"\xff/not/utf8",),
}


def body(message: bytes) -> bytes:
    (size,) = struct.unpack_from("!I", message)
    assert len(message) == 4 + size
    return message[4:]


def test_the_tables_cover_every_op() -> None:
    assert set(REQUESTS) == set(Op) == set(RESULTS) == set(hostfs.REQUEST_FIELDS) == set(hostfs.RESULT_FIELDS)


def test_the_errno_constants_are_wasi_s() -> None:
    assert (hostfs.EILSEQ, hostfs.EINVAL, hostfs.ENAMETOOLONG, hostfs.ENOSYS) == (
        Errno.ILSEQ, Errno.INVAL, Errno.NAMETOOLONG, Errno.NOSYS)
    assert max(Errno) == hostfs.MAX_ERRNO


@pytest.mark.parametrize("op", list(Op))
def test_requests_round_trip(op: Op) -> None:
    request = decode_request(body(encode_request(0xFFFFFFFF, op, *REQUESTS[op])))
    assert request == (0xFFFFFFFF, op, REQUESTS[op])


@pytest.mark.parametrize("op", list(Op))
def test_results_round_trip(op: Op) -> None:
    response = decode_response(body(encode_result(42, op, *RESULTS[op])), op)
    assert response == (42, 0, RESULTS[op])


@pytest.mark.parametrize("errno", [1, int(Errno.NOENT), hostfs.MAX_ERRNO])
def test_errors_round_trip_for_any_op(errno: int) -> None:
    assert decode_response(body(encode_error(5, errno)), Op.READ) == (5, errno, ())


def test_only_wasi_errnos_can_be_sent_or_received() -> None:
    for errno in (0, hostfs.MAX_ERRNO + 1):
        with pytest.raises(ValueError):
            encode_error(1, errno)
    with pytest.raises(HostFsProtocolError, match="unknown errno 77"):
        decode_response(struct.pack("!IH", 1, 77), Op.CLOSE)
    with pytest.raises(HostFsProtocolError, match="error response with fields"):
        decode_response(struct.pack("!IH", 1, 44) + b"x", Op.CLOSE)


def test_the_largest_messages_fit_the_body_bound() -> None:
    assert len(body(encode_request(1, Op.PWRITE, 1, 2, b"x" * MAX_DATA))) <= MAX_BODY
    assert len(body(encode_request(1, Op.LINK, 1, "a" * MAX_PATH, 1, 2, "b" * MAX_PATH))) <= MAX_BODY


# ---- bounds on the sending side: nothing the peer would refuse goes out --------------------


@pytest.mark.parametrize(("op", "args", "errno"), [
    (Op.MKDIR, (0, "d" * (MAX_PATH + 1)), Errno.NAMETOOLONG),
    (Op.MKDIR, (0, "a\0b"), Errno.INVAL),
    (Op.MKDIR, (0, "\udcff"), Errno.ILSEQ),  # a lone surrogate is no UTF-8
    (Op.WRITE, (1, b"x" * (MAX_DATA + 1)), Errno.INVAL),
    (Op.CLOSE, (-1,), Errno.INVAL),
    (Op.CLOSE, (1 << 32,), Errno.INVAL),
    (Op.SEEK, (1, 1 << 63, 0), Errno.INVAL),
])
def test_the_encoder_refuses_what_the_peer_would(op: Op, args: tuple[Any, ...], errno: Errno) -> None:
    with pytest.raises(FieldError) as caught:
        encode_request(1, op, *args)
    assert caught.value.errno == errno


def test_the_encoder_refuses_overlong_names_and_targets() -> None:
    with pytest.raises(FieldError):
        encode_result(1, Op.READDIR, 0, 0, [Entry(b"n" * 256, 1, 4)])
    with pytest.raises(FieldError):
        encode_result(1, Op.READLINK, b"t" * (MAX_PATH + 1))


# ---- malformed requests: the framing holds, so the server answers with an errno ------------


def request_body(request_id: int, op: int, fields: bytes) -> bytes:
    return struct.pack("!IB", request_id, op) + fields


def path(raw: bytes) -> bytes:
    return struct.pack("!H", len(raw)) + raw


@pytest.mark.parametrize(("raw", "errno"), [
    (request_body(3, 99, b""), Errno.NOSYS),
    (request_body(3, 0, b""), Errno.NOSYS),
    (struct.pack("!I", 3), Errno.INVAL),  # no op
    (request_body(3, Op.CLOSE, b"\0\0"), Errno.INVAL),  # truncated handle
    (request_body(3, Op.CLOSE, b"\0\0\0\0\0"), Errno.INVAL),  # a byte too many
    (request_body(3, Op.MKDIR, b"\0\0\0\0" + path(b"a\0b")), Errno.INVAL),
    (request_body(3, Op.MKDIR, b"\0\0\0\0" + path(b"\xff\xfe")), Errno.ILSEQ),
    (request_body(3, Op.MKDIR, b"\0\0\0\0" + struct.pack("!H", MAX_PATH + 1) + b"a" * (MAX_PATH + 1)),
     Errno.NAMETOOLONG),
    (request_body(3, Op.MKDIR, b"\0\0\0\0" + struct.pack("!H", 10) + b"abc"), Errno.INVAL),  # path cut short
    (request_body(3, Op.WRITE, b"\0\0\0\0" + struct.pack("!I", MAX_DATA + 1)), Errno.INVAL),
])
def test_malformed_fields_name_the_request_and_the_errno(raw: bytes, errno: Errno) -> None:
    with pytest.raises(FieldError) as caught:
        decode_request(raw)
    assert (caught.value.request_id, caught.value.errno) == (3, errno)


def test_a_request_too_short_for_an_id_is_a_protocol_error() -> None:
    with pytest.raises(HostFsProtocolError) as caught:
        decode_request(b"\0\0\0")
    assert not isinstance(caught.value, FieldError)


# ---- malformed responses: every flaw is a protocol error for the keep -----------------------


def entries_result(entries: bytes, count: int) -> bytes:
    return struct.pack("!IHQBI", 1, 0, 9, 0, count) + entries


def entry(name: bytes, filetype: int = 4) -> bytes:
    return struct.pack("!QBH", 1, filetype, len(name)) + name


@pytest.mark.parametrize("raw", [
    entries_result(entry(b"."), 1),
    entries_result(entry(b".."), 1),
    entries_result(entry(b"a/b"), 1),
    entries_result(entry(b"a\0"), 1),
    entries_result(entry(b""), 1),
    entries_result(entry(b"n" * 256), 1),
    entries_result(entry(b"a", filetype=8), 1),
    entries_result(entry(b"a"), 2),  # a count the body cannot hold
    entries_result(b"", 0xFFFFFFFF),
    entries_result(entry(b"a") + b"junk", 1),
])
def test_bad_directory_entries_are_refused(raw: bytes) -> None:
    with pytest.raises(HostFsProtocolError):
        decode_response(raw, Op.READDIR)


def test_a_status_with_an_unknown_filetype_is_refused() -> None:
    raw = struct.pack("!IH", 1, 0) + struct.pack("!QQBQQQQQ", 1, 2, 8, 1, 0, 0, 0, 0)
    with pytest.raises(HostFsProtocolError, match="filetype"):
        decode_response(raw, Op.FSTAT)


@pytest.mark.parametrize("raw", [b"", b"\0\0\0\1\0", struct.pack("!IH", 1, 0) + b"\0" * 3])
def test_short_responses_are_refused(raw: bytes) -> None:
    with pytest.raises(HostFsProtocolError):
        decode_response(raw, Op.READ)


# ---- framing --------------------------------------------------------------------------------


def test_messages_split_anywhere_come_out_whole() -> None:
    stream = b"".join(encode_request(i, Op.WRITE, 1, bytes([i]) * (i * 37)) for i in range(20))
    expected = MessageReader().feed(stream)
    assert len(expected) == 20
    for step in (1, 3, 7, 4096):
        reader = MessageReader()
        got: list[bytes] = []
        for offset in range(0, len(stream), step):
            got += reader.feed(stream[offset : offset + step])
        assert got == expected and reader.pending == 0


def test_an_oversized_length_is_refused_before_its_body_arrives() -> None:
    reader = MessageReader()
    with pytest.raises(HostFsProtocolError, match="exceeds the maximum"):
        reader.feed(struct.pack("!I", MAX_BODY + 1))
    assert MessageReader().feed(struct.pack("!I", MAX_BODY)) == []  # the limit itself is fine (and waits)


# ---- fuzzing: any bytes give a result or a typed error, nothing else -------------------------


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_any_request_body_decodes_or_fails_typed(raw: bytes) -> None:
    try:
        request = decode_request(raw)
    except HostFsProtocolError:
        return
    assert isinstance(request.op, Op)
    assert body(encode_request(request.id, request.op, *request.args)) == raw  # one encoding per request


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(list(Op)), st.binary(max_size=300))
def test_any_response_body_decodes_or_fails_typed(op: Op, raw: bytes) -> None:
    try:
        response = decode_response(raw, op)
    except HostFsProtocolError:
        return
    assert 0 <= response.errno <= hostfs.MAX_ERRNO


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_any_byte_stream_frames_or_fails_typed(chunks: list[bytes]) -> None:
    reader = MessageReader(max_body=1000)
    try:
        for chunk in chunks:
            for message in reader.feed(chunk):
                assert len(message) <= 1000
    except HostFsProtocolError:
        pass
    assert reader.pending < 4 + 1000


def _field(kind: str) -> st.SearchStrategy[Any]:
    return {
        "B": st.integers(0, 0xFF), "H": st.integers(0, 0xFFFF), "I": st.integers(0, 0xFFFFFFFF),
        "Q": st.integers(0, (1 << 64) - 1), "q": st.integers(-(1 << 63), (1 << 63) - 1),
        "p": st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=40),
        "n": st.binary(max_size=40), "d": st.binary(max_size=200),
    }[kind]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_well_formed_request_round_trips(data: st.DataObject) -> None:
    op = data.draw(st.sampled_from(list(Op)))
    args = tuple(data.draw(_field(kind)) for kind in hostfs.REQUEST_FIELDS[op])
    request_id = data.draw(st.integers(0, 0xFFFFFFFF))
    assert decode_request(body(encode_request(request_id, op, *args))) == (request_id, op, args)
