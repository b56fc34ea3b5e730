"""The module cache protocol: a VM keep asks the host for a compiled module it stored. Sans-I/O.

A VM keep cannot open the host's cache directory, and compiling a large module under emulation
takes minutes, so the host keeps the compiled artefacts for it. The keep opens one channel stream
of kind :data:`STREAM_KIND` (no metadata) when it is about to compile a module; the host answers,
or resets the stream at once (reason :data:`NO_CACHE`) when it keeps no cache for this run.

Every message is length-prefixed on the stream's bytes, as in :mod:`motte.shared.hostfs` (whose
:class:`~motte.shared.hostfs.MessageReader` splits them)::

    +------------+------------------------------------------+
    | length u32 | body: length bytes, at most MAX_BODY     |
    +------------+------------------------------------------+
    request body:  op u8 | key: 32 bytes | PUT only: the artefact (the rest of the body)
    answer body:   found u8 (0 or 1) | when found: the artefact (the rest of the body)

The key is the cache key :class:`motte.keep.engine.ModuleCache` computes (a SHA-256 of the module's
digest and everything that shapes the machine code). GET has one answer; PUT has none (the keep
does not wait for the host's disk). The keep sends EOF after its last request. It reads an
answer's head (:func:`decode_answer_head`), then the artefact straight into where it loads it
from, so a large artefact is not copied on the way. What the keep stores is opaque to the host: a
plain compiled module from a kvm keep, a sealed one from an SNP keep (:mod:`motte.keep.sealing`).
Each side treats what the other sends as untrusted input: malformed input raises
:class:`ModuleCacheProtocolError`.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import NamedTuple

from motte.shared.errors import MotteError
from motte.shared.hostfs import MessageReader

STREAM_KIND = "module-cache"
NO_CACHE = "no module cache"  # the host's reset reason when it keeps no cache for this run
KEY_SIZE = 32
MAX_ARTEFACT = 256 << 20  # bytes of one stored artefact (a compiled CPython is tens of MB)
MAX_BODY = 1 + KEY_SIZE + MAX_ARTEFACT
MAX_PUTS = 4  # artefacts one stream may store: a run compiles one module

_LENGTH = struct.Struct(">I")
_REQUEST_HEAD = struct.Struct(f">B{KEY_SIZE}s")
_FOUND = struct.Struct(">B")
_ANSWER_HEAD = struct.Struct(">IB")  # length, found
ANSWER_HEAD_SIZE = _ANSWER_HEAD.size


class Op(IntEnum):
    GET = 1
    PUT = 2


class ModuleCacheProtocolError(MotteError):
    """A malformed module cache message: the peer is broken or hostile."""


class Request(NamedTuple):
    op: Op
    key: str  # 64 hex digits
    artefact: bytes = b""  # PUT only


def reader() -> MessageReader:
    """Splits a module cache stream's bytes into message bodies."""
    return MessageReader(max_body=MAX_BODY)


def _key_bytes(key: str) -> bytes:
    try:
        raw = bytes.fromhex(key)
    except ValueError:
        raw = b""
    if len(raw) != KEY_SIZE:
        raise ValueError(f"a module cache key is {KEY_SIZE * 2} hex digits, not {key!r}")
    return raw


def _check_size(artefact: bytes | bytearray | memoryview) -> None:
    if len(artefact) > MAX_ARTEFACT:
        raise ValueError(f"an artefact of {len(artefact)} bytes exceeds the maximum {MAX_ARTEFACT}")


def encode_get(key: str) -> bytes:
    return _LENGTH.pack(_REQUEST_HEAD.size) + _REQUEST_HEAD.pack(Op.GET, _key_bytes(key))


def encode_put(key: str, artefact: bytes | bytearray | memoryview) -> list[bytes | memoryview]:
    """A PUT as parts to write in order (the artefact is not copied)."""
    _check_size(artefact)
    head = _REQUEST_HEAD.pack(Op.PUT, _key_bytes(key))
    return [_LENGTH.pack(len(head) + len(artefact)) + head, memoryview(artefact)]


def encode_answer(artefact: bytes | bytearray | memoryview | None) -> list[bytes | memoryview]:
    """A GET's answer as parts to write in order: the artefact, or None for "not stored"."""
    if artefact is None:
        return [_LENGTH.pack(_FOUND.size) + _FOUND.pack(0)]
    _check_size(artefact)
    return [_LENGTH.pack(_FOUND.size + len(artefact)) + _FOUND.pack(1), memoryview(artefact)]


def decode_request(body: bytes) -> Request:
    if len(body) < _REQUEST_HEAD.size:
        raise ModuleCacheProtocolError(f"a module cache request of {len(body)} bytes is truncated")
    op, key = _REQUEST_HEAD.unpack_from(body)
    if op == Op.GET:
        if len(body) != _REQUEST_HEAD.size:
            raise ModuleCacheProtocolError("a module cache GET carries trailing bytes")
        return Request(Op.GET, key.hex())
    if op == Op.PUT:
        return Request(Op.PUT, key.hex(), body[_REQUEST_HEAD.size :])
    raise ModuleCacheProtocolError(f"unknown module cache op {op}")


def decode_answer_head(head: bytes) -> int | None:
    """From an answer's first :data:`ANSWER_HEAD_SIZE` bytes: the size of the artefact that follows
    them, or None for "not stored". The keep receives the artefact itself where it wants it."""
    length, found = _ANSWER_HEAD.unpack(head)
    if length < _FOUND.size or found > 1:
        raise ModuleCacheProtocolError("a module cache answer must start with found = 0 or 1")
    if found == 0:
        if length != _FOUND.size:
            raise ModuleCacheProtocolError("a module cache miss carries trailing bytes")
        return None
    size: int = length - _FOUND.size
    if size > MAX_ARTEFACT:
        raise ModuleCacheProtocolError(f"an artefact of {size} bytes exceeds the maximum {MAX_ARTEFACT}")
    return size
