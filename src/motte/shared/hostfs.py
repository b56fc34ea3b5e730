"""The host file protocol: one preopened host directory served over one channel stream. Sans-I/O.

A VM keep cannot open the host's directories, so the host serves each ``--dir`` on a channel
stream of kind :data:`STREAM_KIND` and the keep asks it for every file operation. The host is the
server, the keep the client; both sides treat what the other sends as untrusted input.

Every message, in both directions, is length-prefixed on the stream's bytes::

    +------------+---------------------------------------------------------+
    | length u32 | body: length bytes, at most MAX_BODY                    |
    +------------+---------------------------------------------------------+
    request body:   id u32 | op u8     | the op's request fields
    response body:  id u32 | errno u16 | the op's result fields (only when errno is 0)

Integers are big-endian. Field kinds (the letters of :data:`REQUEST_FIELDS` and
:data:`RESULT_FIELDS`): ``B`` u8, ``H`` u16, ``I`` u32, ``Q`` u64, ``q`` i64; ``p`` a path (u16
length, at most MAX_PATH bytes of UTF-8, no NUL); ``n`` a link target as raw bytes (u16 length,
at most MAX_PATH); ``d`` data (u32 length, at most MAX_DATA); ``S`` a file's status (dev, ino,
filetype, nlink, size, atim, mtim, ctim); ``E`` directory entries (u32 count, then each: ino u64,
filetype u8, name length u16, name).

Errors are WASI preview1 errno values (1..76), so the keep hands them to the workload as they are.
A handle (u32) names a file or directory the server opened; handle 0 is the preopened directory.
The keep makes one call at a time (a WASI call is synchronous) and the response carries the
request's id, so a response that answers anything else is a protocol error. The channel's HELLO
carries the protocol version both sides speak; this protocol changes with it.

Malformed input raises :class:`HostFsProtocolError` and nothing else. A request whose framing is
sound but whose fields are not raises :class:`FieldError` (a subclass) with the request id and
the errno to answer with, so the server can answer it and carry on.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Any, NamedTuple

from motte.shared.errors import MotteError

STREAM_KIND = "hostfs"
ROOT_HANDLE = 0
MAX_PATH = 4096  # bytes of a path or link target (PATH_MAX)
MAX_NAME = 255  # bytes of one directory entry's name (NAME_MAX)
MAX_DATA = 512 << 10  # bytes one read or write message carries: with its header, within a stream's window
MAX_BODY = MAX_DATA + 3 * MAX_PATH  # the largest body: data or two paths, plus fixed fields
MAX_ERRNO = 76  # the highest WASI preview1 errno (NOTCAPABLE)
MAX_FILETYPE = 7  # the highest WASI filetype (SYMBOLIC_LINK)

# WASI errno values this module answers malformed fields with (motte.shared.wasi_abi.Errno).
EILSEQ = 25
EINVAL = 28
ENAMETOOLONG = 37
ENOSYS = 52

# Bits of OPEN's flags byte.
OPEN_FOLLOW = 1 << 0
OPEN_CREAT = 1 << 1
OPEN_EXCL = 1 << 2
OPEN_TRUNC = 1 << 3
OPEN_DIRECTORY = 1 << 4
OPEN_READ = 1 << 5
OPEN_WRITE = 1 << 6
OPEN_ALL = (1 << 7) - 1


class Op(IntEnum):
    OPEN = 1
    CLOSE = 2
    READ = 3
    PREAD = 4
    WRITE = 5
    PWRITE = 6
    SEEK = 7  # also tell: SEEK (CUR, 0)
    FSTAT = 8
    STAT = 9
    SET_SIZE = 10
    SET_TIMES = 11
    SET_TIMES_PATH = 12
    SET_FLAGS = 13
    SYNC = 14
    READDIR = 15
    MKDIR = 16
    RMDIR = 17
    UNLINK = 18
    RENAME = 19
    LINK = 20
    SYMLINK = 21
    READLINK = 22


#: Request fields after the op byte.
REQUEST_FIELDS: dict[Op, str] = {
    Op.OPEN: "IpBB",  # dir, path, OPEN_* flags, WASI fdflags
    Op.CLOSE: "I",  # handle
    Op.READ: "II",  # handle, size (at most MAX_DATA)
    Op.PREAD: "IIQ",  # handle, size, offset
    Op.WRITE: "Id",  # handle, data
    Op.PWRITE: "IQd",  # handle, offset, data
    Op.SEEK: "IqB",  # handle, offset, whence
    Op.FSTAT: "I",  # handle
    Op.STAT: "IpB",  # dir, path, follow
    Op.SET_SIZE: "IQ",  # handle, size
    Op.SET_TIMES: "IQQH",  # handle, atim, mtim, WASI fstflags
    Op.SET_TIMES_PATH: "IpBQQH",  # dir, path, follow, atim, mtim, fstflags
    Op.SET_FLAGS: "IB",  # handle, WASI fdflags (APPEND is the one that changes anything)
    Op.SYNC: "I",  # handle
    Op.READDIR: "II",  # dir, index of the first entry wanted (0 takes a fresh listing)
    Op.MKDIR: "Ip",  # dir, path
    Op.RMDIR: "Ip",
    Op.UNLINK: "Ip",
    Op.RENAME: "IpIp",  # dir, old path, new dir, new path
    Op.LINK: "IpBIp",  # dir, old path, follow, new dir, new path
    Op.SYMLINK: "pIp",  # target, dir, path
    Op.READLINK: "Ip",  # dir, path
}

#: Result fields after the errno, when it is 0.
RESULT_FIELDS: dict[Op, str] = {
    Op.OPEN: "IB",  # handle, filetype
    Op.CLOSE: "",
    Op.READ: "d",
    Op.PREAD: "d",
    Op.WRITE: "I",  # bytes written
    Op.PWRITE: "I",
    Op.SEEK: "Q",  # the new offset
    Op.FSTAT: "S",
    Op.STAT: "S",
    Op.SET_SIZE: "",
    Op.SET_TIMES: "",
    Op.SET_TIMES_PATH: "",
    Op.SET_FLAGS: "",
    Op.SYNC: "",
    Op.READDIR: "QBE",  # inode of the directory itself, more entries follow (0/1), entries
    Op.MKDIR: "",
    Op.RMDIR: "",
    Op.UNLINK: "",
    Op.RENAME: "",
    Op.LINK: "",
    Op.SYMLINK: "",
    Op.READLINK: "n",
}


class HostFsProtocolError(MotteError):
    """A malformed host file protocol message: the peer is broken or hostile."""


class FieldError(HostFsProtocolError):
    """A field of a message is out of bounds; ``errno`` is the WASI errno that says why."""

    def __init__(self, message: str, errno: int, request_id: int = 0):
        super().__init__(message)
        self.errno = errno
        self.request_id = request_id


class Stat(NamedTuple):
    dev: int
    ino: int
    filetype: int
    nlink: int
    size: int
    atim: int
    mtim: int
    ctim: int


class Entry(NamedTuple):
    name: bytes
    ino: int
    filetype: int


class Request(NamedTuple):
    id: int
    op: Op
    args: tuple[Any, ...]


class Response(NamedTuple):
    id: int
    errno: int  # 0: success, ``values`` holds the op's result fields
    values: tuple[Any, ...] = ()


_LENGTH = struct.Struct("!I")
_REQUEST_HEAD = struct.Struct("!IB")
_RESPONSE_HEAD = struct.Struct("!IH")
_FIXED = {kind: struct.Struct("!" + kind) for kind in "BHIQq"}
_STAT = struct.Struct("!QQBQQQQQ")
_ENTRY_HEAD = struct.Struct("!QBH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


# ---- encoding -------------------------------------------------------------------------------


def _encode_fields(kinds: str, values: tuple[Any, ...]) -> list[bytes | memoryview]:
    """The wire form of ``values``; raises FieldError for anything the peer would refuse."""
    if len(kinds) != len(values):
        raise ValueError(f"{len(values)} values for fields {kinds!r}")
    parts: list[bytes | memoryview] = []
    for kind, value in zip(kinds, values, strict=True):
        if kind in _FIXED:
            try:
                parts.append(_FIXED[kind].pack(value))
            except struct.error:
                raise FieldError(f"value {value!r} does not fit field {kind}", EINVAL) from None
        elif kind == "p":
            try:
                raw = value.encode("utf-8", "strict")
            except UnicodeEncodeError:
                raise FieldError("a path that is not UTF-8", EILSEQ) from None
            if b"\0" in raw:
                raise FieldError("a path with NUL", EINVAL)
            if len(raw) > MAX_PATH:
                raise FieldError(f"a path of {len(raw)} bytes", ENAMETOOLONG)
            parts += (_U16.pack(len(raw)), raw)
        elif kind == "n":
            if len(value) > MAX_PATH:
                raise FieldError(f"a link target of {len(value)} bytes", ENAMETOOLONG)
            parts += (_U16.pack(len(value)), bytes(value))
        elif kind == "d":
            if len(value) > MAX_DATA:
                raise FieldError(f"{len(value)} bytes of data in one message", EINVAL)
            parts += (_U32.pack(len(value)), value)  # joined once, in _frame
        elif kind == "S":
            try:
                parts.append(_STAT.pack(*value))
            except struct.error:
                raise FieldError(f"a file status out of range: {value!r}", EINVAL) from None
        elif kind == "E":
            parts.append(_U32.pack(len(value)))
            for name, ino, filetype in value:
                if not 0 < len(name) <= MAX_NAME:
                    raise FieldError(f"an entry name of {len(name)} bytes", ENAMETOOLONG)
                parts += (_ENTRY_HEAD.pack(ino, filetype, len(name)), name)
        else:
            raise ValueError(f"unknown field kind {kind!r}")
    return parts


def _frame(parts: list[bytes | memoryview]) -> bytes:
    size = sum(len(p) for p in parts)
    if size > MAX_BODY:
        raise FieldError(f"a message body of {size} bytes", EINVAL)
    return b"".join([_LENGTH.pack(size), *parts])


def encode_request(request_id: int, op: Op, *args: Any) -> bytes:
    return _frame([_REQUEST_HEAD.pack(request_id, op), *_encode_fields(REQUEST_FIELDS[op], args)])


def encode_result(request_id: int, op: Op, *values: Any) -> bytes:
    return _frame([_RESPONSE_HEAD.pack(request_id, 0), *_encode_fields(RESULT_FIELDS[op], values)])


def encode_error(request_id: int, errno: int) -> bytes:
    if not 0 < errno <= MAX_ERRNO:
        raise ValueError(f"errno {errno} is no WASI error")
    return _frame([_RESPONSE_HEAD.pack(request_id, errno)])


ENTRY_OVERHEAD = _ENTRY_HEAD.size


# ---- decoding -------------------------------------------------------------------------------


class MessageReader:
    """Splits a stream's bytes into message bodies. Holds at most one partial message."""

    def __init__(self, max_body: int = MAX_BODY):
        self._buffer = bytearray()
        self._max_body = max_body

    def feed(self, data: bytes) -> list[bytes]:
        # Without a partial message waiting, parse ``data`` in place: each body is copied once.
        source: bytes | bytearray = data
        if self._buffer:
            self._buffer += data
            source = self._buffer
        bodies: list[bytes] = []
        offset = 0
        with memoryview(source) as view:
            while len(source) - offset >= _LENGTH.size:
                (size,) = _LENGTH.unpack_from(source, offset)
                if size > self._max_body:
                    raise HostFsProtocolError(f"a message of {size} bytes exceeds the maximum {self._max_body}")
                end = offset + _LENGTH.size + size
                if len(source) < end:
                    break
                bodies.append(bytes(view[offset + _LENGTH.size : end]))
                offset = end
            if source is data:
                self._buffer += view[offset:]
        if source is not data:
            del self._buffer[:offset]
        return bodies

    @property
    def pending(self) -> int:
        return len(self._buffer)


class _Cursor:
    __slots__ = ("body", "offset")

    def __init__(self, body: bytes, offset: int):
        self.body = body
        self.offset = offset

    def take(self, size: int, what: str) -> bytes:
        end = self.offset + size
        if end > len(self.body):
            raise FieldError(f"message truncated in {what}", EINVAL)
        piece = self.body[self.offset : end]
        self.offset = end
        return piece

    def unpack(self, fmt: struct.Struct, what: str) -> tuple[Any, ...]:
        return fmt.unpack(self.take(fmt.size, what))


def _decode_fields(kinds: str, cursor: _Cursor) -> tuple[Any, ...]:
    values: list[Any] = []
    for kind in kinds:
        if kind in _FIXED:
            values.append(cursor.unpack(_FIXED[kind], kind)[0])
        elif kind in "pn":
            (size,) = cursor.unpack(_U16, "a path length")
            if size > MAX_PATH:
                raise FieldError(f"a path of {size} bytes", ENAMETOOLONG)
            raw = cursor.take(size, "a path")
            if kind == "n":
                values.append(raw)
                continue
            if b"\0" in raw:
                raise FieldError("a path with NUL", EINVAL)
            try:
                values.append(raw.decode("utf-8", "strict"))
            except UnicodeDecodeError:
                raise FieldError("a path that is not UTF-8", EILSEQ) from None
        elif kind == "d":
            (size,) = cursor.unpack(_U32, "a data length")
            if size > MAX_DATA:
                raise FieldError(f"{size} bytes of data in one message", EINVAL)
            values.append(cursor.take(size, "data"))
        elif kind == "S":
            stat = Stat(*cursor.unpack(_STAT, "a file status"))
            if stat.filetype > MAX_FILETYPE:
                raise FieldError(f"unknown filetype {stat.filetype}", EINVAL)
            values.append(stat)
        elif kind == "E":
            values.append(_decode_entries(cursor))
        else:
            raise ValueError(f"unknown field kind {kind!r}")
    if cursor.offset != len(cursor.body):
        raise FieldError(f"{len(cursor.body) - cursor.offset} bytes after the last field", EINVAL)
    return tuple(values)


def _decode_entries(cursor: _Cursor) -> list[Entry]:
    (count,) = cursor.unpack(_U32, "an entry count")
    # Each entry takes at least ENTRY_OVERHEAD + 1 bytes: a count beyond what the body can hold
    # is a lie, refused before any list grows.
    if count * (_ENTRY_HEAD.size + 1) > len(cursor.body) - cursor.offset:
        raise FieldError(f"{count} entries cannot fit the message", EINVAL)
    entries: list[Entry] = []
    for _ in range(count):
        ino, filetype, size = cursor.unpack(_ENTRY_HEAD, "an entry")
        name = cursor.take(size, "an entry name")
        if not 0 < size <= MAX_NAME or b"/" in name or b"\0" in name or name in (b".", b".."):
            raise FieldError(f"invalid entry name {name[:64]!r}", EINVAL)
        if filetype > MAX_FILETYPE:
            raise FieldError(f"unknown filetype {filetype}", EINVAL)
        entries.append(Entry(name, ino, filetype))
    return entries


def decode_request(body: bytes) -> Request:
    """A request body (from :class:`MessageReader`). FieldError carries the id to answer."""
    if len(body) < _U32.size:
        raise HostFsProtocolError(f"a request of {len(body)} bytes has no id")
    (request_id,) = _U32.unpack_from(body)
    try:
        if len(body) < _REQUEST_HEAD.size:
            raise FieldError("a request without an op", EINVAL)
        _, op_code = _REQUEST_HEAD.unpack_from(body)
        try:
            op = Op(op_code)
        except ValueError:
            raise FieldError(f"unknown op {op_code}", ENOSYS) from None
        return Request(request_id, op, _decode_fields(REQUEST_FIELDS[op], _Cursor(body, _REQUEST_HEAD.size)))
    except FieldError as exc:
        exc.request_id = request_id
        raise


def decode_response(body: bytes, op: Op) -> Response:
    """A response body to a request of ``op``. Any flaw is a HostFsProtocolError."""
    if len(body) < _RESPONSE_HEAD.size:
        raise HostFsProtocolError(f"a response of {len(body)} bytes")
    request_id, errno = _RESPONSE_HEAD.unpack_from(body)
    if errno:
        if errno > MAX_ERRNO:
            raise HostFsProtocolError(f"a response with unknown errno {errno}")
        if len(body) != _RESPONSE_HEAD.size:
            raise HostFsProtocolError("an error response with fields")
        return Response(request_id, errno)
    try:
        values = _decode_fields(RESULT_FIELDS[op], _Cursor(body, _RESPONSE_HEAD.size))
    except FieldError as exc:
        raise HostFsProtocolError(f"a malformed {op.name} result: {exc}") from None
    return Response(request_id, 0, values)
