"""DER (X.690's distinguished encoding), as much as motte's protocols use: one reader, one writer.

The keep writes its evidence with it, the Steward and the tenant read evidence, CSRs and
certificate fields with it. Standard library only: a VM keep may encode evidence before it may
load ``cryptography`` (see ``_NOT_BEFORE_PARK`` in :mod:`motte.keep.vm_channel`).

What the reader reads comes from the network, so it accepts DER and nothing looser: low tag
numbers, definite lengths in their shortest form, every length within the bytes present, and no
bytes left over where a value must fill its container. It raises :class:`DerError` and nothing
else; each protocol turns that into its own error at its boundary.
"""

from __future__ import annotations

from typing import NamedTuple

from motte.shared.errors import MotteError

TAG_BOOLEAN = 0x01
TAG_INTEGER = 0x02
TAG_BIT_STRING = 0x03
TAG_OCTET_STRING = 0x04
TAG_OID = 0x06
TAG_UTF8STRING = 0x0C
TAG_IA5STRING = 0x16
TAG_SEQUENCE = 0x30
TAG_SET = 0x31
TAG_CONTEXT_0 = 0xA0
MAX_LENGTH_BYTES = 4  # lengths below 4 GiB: far beyond anything these protocols carry

_TAG_NAMES = {
    TAG_BOOLEAN: "BOOLEAN",
    TAG_INTEGER: "INTEGER",
    TAG_BIT_STRING: "BIT STRING",
    TAG_OCTET_STRING: "OCTET STRING",
    TAG_OID: "OBJECT IDENTIFIER",
    TAG_UTF8STRING: "UTF8String",
    TAG_IA5STRING: "IA5String",
    TAG_SEQUENCE: "SEQUENCE",
    TAG_SET: "SET",
    TAG_CONTEXT_0: "[0]",
}
_STRING_CODECS = {TAG_UTF8STRING: "utf-8", TAG_IA5STRING: "ascii"}


class DerError(MotteError):
    """Bytes that are not the DER the reader was asked for."""


# --- writing -------------------------------------------------------------------------------------
def der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def der_tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + der_length(len(content)) + content


def der_sequence(*items: bytes) -> bytes:
    return der_tlv(TAG_SEQUENCE, b"".join(items))


def der_octet_string(data: bytes) -> bytes:
    return der_tlv(TAG_OCTET_STRING, data)


def der_utf8(text: str) -> bytes:
    return der_tlv(TAG_UTF8STRING, text.encode("utf-8"))


def der_oid(dotted: str) -> bytes:
    """The OBJECT IDENTIFIER TLV of a dotted OID such as ``1.3.6.1.4.1.58270.3.1``."""
    parts = dotted.split(".")
    arcs = [int(part) for part in parts if part.isascii() and part.isdigit()]
    if len(arcs) != len(parts) or len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] >= 40):
        raise DerError(f"not a dotted OID: {dotted!r}")
    content = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        while arc := arc >> 7:
            chunk.append(0x80 | (arc & 0x7F))
        content += bytes(reversed(chunk))
    return der_tlv(TAG_OID, bytes(content))


# --- reading -------------------------------------------------------------------------------------
class Tlv(NamedTuple):
    tag: int
    content: bytes
    encoded: bytes  # the whole TLV, tag and length included


class DerReader:
    """Reads consecutive TLVs from ``data``. ``what`` names the whole in every error message."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def error(self, detail: str) -> DerError:
        return DerError(f"{self.what}: {detail}")

    @property
    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def read(self, tag: int | None = None, name: str = "value") -> Tlv:
        """The next TLV (of tag ``tag`` unless None); ``name`` says which field it is in errors."""
        data, start = self.data, self.pos
        if start + 2 > len(data):
            raise self.error(f"truncated DER at {name}")
        got, first = data[start], data[start + 1]
        if got & 0x1F == 0x1F:
            raise self.error(f"high-tag-number form at {name} is not used by this protocol")
        pos = start + 2
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            if count == 0:
                raise self.error(f"indefinite length at {name} (DER forbids it)")
            if count > MAX_LENGTH_BYTES or pos + count > len(data):
                raise self.error(f"bad length at {name}")
            length = int.from_bytes(data[pos : pos + count], "big")
            if length < 0x80 or data[pos] == 0:
                raise self.error(f"non-minimal length at {name}")
            pos += count
        end = pos + length
        if end > len(data):
            raise self.error(f"{name} claims {length} bytes but only {len(data) - pos} remain")
        if tag is not None and got != tag:
            raise self.error(f"expected {_TAG_NAMES.get(tag, hex(tag))} for {name}, got tag {got:#04x}")
        self.pos = end
        return Tlv(got, data[pos:end], data[start:end])

    def enter(self, tag: int, name: str, what: str | None = None) -> DerReader:
        """A reader over the content of the next TLV (a SEQUENCE, SET or [n]); this one moves past it."""
        return DerReader(self.read(tag, name).content, self.what if what is None else what)

    def done(self) -> None:
        if not self.at_end:
            raise self.error(f"{len(self.data) - self.pos} unexpected trailing bytes")


def read_one(data: bytes, tag: int, what: str) -> bytes:
    """The content of the single TLV of tag ``tag`` that fills ``data`` exactly."""
    reader = DerReader(data, what)
    content = reader.read(tag, what).content
    reader.done()
    return content


def read_outer(data: bytes, tag: int, name: str, what: str) -> DerReader:
    """A reader over the content of the single TLV that fills ``data`` (a message's outer SEQUENCE)."""
    outer = DerReader(data, what)
    inner = outer.enter(tag, name)
    outer.done()
    return inner


def read_integer(data: bytes, what: str) -> int:
    """The single non-negative INTEGER that fills ``data``."""
    content = read_one(data, TAG_INTEGER, what)
    if not content:
        raise DerError(f"{what}: empty INTEGER")
    if content[0] & 0x80:
        raise DerError(f"{what}: negative INTEGER")
    if len(content) > 1 and content[0] == 0 and not content[1] & 0x80:
        raise DerError(f"{what}: non-minimal INTEGER")
    return int.from_bytes(content, "big")


def read_string(data: bytes, tag: int, what: str) -> str:
    """The single UTF8String or IA5String (by ``tag``) that fills ``data``."""
    content = read_one(data, tag, what)
    try:
        return content.decode(_STRING_CODECS[tag])
    except UnicodeDecodeError:
        raise DerError(f"{what}: not a valid {_TAG_NAMES[tag]}") from None


def decode_oid(content: bytes, what: str = "OID") -> str:
    """The dotted form of an OBJECT IDENTIFIER's content octets."""
    if not content or content[-1] & 0x80:
        raise DerError(f"{what}: malformed OBJECT IDENTIFIER")
    arcs: list[int] = []
    value = 0
    for i, byte in enumerate(content):
        if value == 0 and byte == 0x80 and (i == 0 or not content[i - 1] & 0x80):
            raise DerError(f"{what}: non-minimal OBJECT IDENTIFIER arc")
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(a) for a in head + arcs[1:])
