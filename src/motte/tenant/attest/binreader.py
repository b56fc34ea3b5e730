"""A bounded little-endian reader: every read checks the length, and failures are typed."""

from __future__ import annotations

import struct

from motte.tenant.attest.claims import Reason, VerificationError


class Reader:
    def __init__(self, data: bytes, what: str, offset: int = 0, end: int | None = None) -> None:
        self.data = data
        self.what = what
        self.pos = offset
        self.end = len(data) if end is None else end

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or n > self.remaining:
            raise VerificationError(
                Reason.MALFORMED,
                f"{self.what}: {field} needs {n} bytes at offset {self.pos}, {self.remaining} left",
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u16(self, field: str) -> int:
        value: int = struct.unpack("<H", self.take(2, field))[0]
        return value

    def u32(self, field: str) -> int:
        value: int = struct.unpack("<I", self.take(4, field))[0]
        return value

    def sub(self, n: int, field: str) -> Reader:
        """A reader over the next ``n`` bytes; this reader moves past them."""
        start = self.pos
        self.take(n, field)
        return Reader(self.data, f"{self.what}/{field}", start, start + n)

    def expect_end(self, field: str) -> None:
        if self.remaining:
            raise VerificationError(Reason.MALFORMED, f"{self.what}: {self.remaining} unexpected bytes after {field}")
