"""The WebAssembly binary format, as far as the keep reads and writes it: LEB128 numbers, sections,
and a decoder that steps over one instruction at a time (every opcode wasmtime accepts by default,
and legacy exceptions). Pure functions on bytes; :mod:`motte.keep.table_guard` uses them."""

from __future__ import annotations

from typing import NamedTuple

HEADER = b"\0asm\x01\0\0\0"
TYPE, IMPORT, FUNCTION, TABLE, GLOBAL, EXPORT, CODE = 1, 2, 3, 4, 6, 7, 10
# The order non-custom sections must come in (13, tags, sits between memories and globals).
SECTION_ORDER = (1, 2, 3, 4, 5, 13, 6, 7, 8, 9, 12, 10, 11)
I32, I64 = 0x7F, 0x7E
PREFIXED_TYPE = (0x63, 0x64)  # (ref null ht) and (ref ht): a heap type follows

# The immediates of each instruction, one letter each: u a LEB128 number (index, constant, heap
# type), b a block type, m a memarg, 1/4/8/v that many bytes (v: 16), t a br_table, s select's
# types, c try_table's catches.
OPCODES: dict[int, str] = {
    0x00: "", 0x01: "", 0x02: "b", 0x03: "b", 0x04: "b", 0x05: "", 0x06: "b", 0x07: "u", 0x08: "u",
    0x09: "u", 0x0A: "", 0x0B: "", 0x0C: "u", 0x0D: "u", 0x0E: "t", 0x0F: "", 0x10: "u", 0x11: "uu",
    0x12: "u", 0x13: "uu", 0x14: "u", 0x15: "u", 0x18: "u", 0x19: "", 0x1A: "", 0x1B: "", 0x1C: "s",
    0x1F: "bc",
    **dict.fromkeys(range(0x20, 0x27), "u"),  # locals, globals, table.get/set
    **dict.fromkeys(range(0x28, 0x3F), "m"),  # loads and stores
    0x3F: "u", 0x40: "u", 0x41: "u", 0x42: "u", 0x43: "4", 0x44: "8",
    **dict.fromkeys(range(0x45, 0xC5), ""),  # numeric
    0xD0: "u", 0xD1: "", 0xD2: "u", 0xD3: "", 0xD4: "", 0xD5: "u", 0xD6: "u",
}
PREFIXED: dict[int, dict[int, str]] = {
    0xFB: {  # GC
        0: "u", 1: "u", 2: "uu", 3: "uu", 4: "uu", 5: "uu", 6: "u", 7: "u", 8: "uu", 9: "uu", 10: "uu",
        11: "u", 12: "u", 13: "u", 14: "u", 15: "", 16: "u", 17: "uu", 18: "uu", 19: "uu",
        20: "u", 21: "u", 22: "u", 23: "u", 24: "1uuu", 25: "1uuu", **dict.fromkeys(range(26, 31), ""),
    },
    0xFC: {  # saturating truncation, bulk memory and tables, wide arithmetic
        **dict.fromkeys(range(8), ""), 8: "uu", 9: "u", 10: "uu", 11: "u", 12: "uu", 13: "u", 14: "uu",
        15: "u", 16: "u", 17: "u", 18: "u", **dict.fromkeys(range(19, 23), ""),
    },
    0xFD: {  # SIMD and relaxed SIMD
        **dict.fromkeys(range(0x114), ""), **dict.fromkeys(range(12), "m"), 12: "v", 13: "v",
        **dict.fromkeys(range(21, 35), "1"), **dict.fromkeys(range(84, 92), "m1"), 92: "m", 93: "m",
    },
    0xFE: {0: "m", 1: "m", 2: "m", 3: "1", **dict.fromkeys(range(0x10, 0x4F), "m")},  # threads
}


class Undecodable(Exception):
    """The bytes at ``offset`` are not what the decoder expects."""

    def __init__(self, offset: int, what: str):
        super().__init__(f"{what} at offset {offset:#x}")


class Section(NamedTuple):
    id: int
    header: int  # offset of the id byte
    start: int  # offset of the payload
    end: int


def uleb(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise Undecodable(pos, "an over-long LEB128 number")


def skip_leb(data: bytes, pos: int) -> int:
    while data[pos] & 0x80:
        pos += 1
    return pos + 1


def encode_uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_sleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40):
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def read_sections(wasm: bytes) -> list[Section]:
    if wasm[:8] != HEADER:
        raise Undecodable(0, "no WebAssembly module header")
    sections = []
    pos = 8
    try:
        while pos < len(wasm):
            size, start = uleb(wasm, pos + 1)
            if start + size > len(wasm):
                raise Undecodable(pos, "a section running past the end")
            sections.append(Section(wasm[pos], pos, start, start + size))
            pos = start + size
    except IndexError:
        raise Undecodable(pos, "a truncated section header") from None
    return sections


def instruction(data: bytes, pos: int) -> tuple[int, int | None]:
    """The offset after the instruction at ``pos``, and the table it grows if it is a table.grow."""
    opcode = data[pos]
    if opcode in PREFIXED:
        sub, after = uleb(data, pos + 1)
        if opcode == 0xFC and sub == 15:
            table, after = uleb(data, after)
            return after, table
        immediates = PREFIXED[opcode].get(sub)
        name = f"{opcode:#04x} {sub}"
    else:
        immediates = OPCODES.get(opcode)
        after = pos + 1
        name = f"{opcode:#04x}"
    if immediates is None:
        raise Undecodable(pos, f"opcode {name}, unknown to the decoder")
    return skip_immediates(data, after, immediates), None


def skip_immediates(data: bytes, pos: int, immediates: str) -> int:
    for kind in immediates:
        if kind == "u":
            pos = skip_leb(data, pos)
        elif kind == "m":  # flags (bit 6: a memory index follows), then the offset
            flags, pos = uleb(data, pos)
            pos = skip_leb(data, skip_leb(data, pos) if flags & 0x40 else pos)
        elif kind == "b":  # empty, a value type, or a type index (s33)
            pos = skip_leb(data, pos + 1 if data[pos] in PREFIXED_TYPE else pos)
        elif kind == "t":
            count, pos = uleb(data, pos)
            for _ in range(count + 1):
                pos = skip_leb(data, pos)
        elif kind == "s":
            count, pos = uleb(data, pos)
            for _ in range(count):
                pos = skip_valtype(data, pos)
        elif kind == "c":  # each catch: its kind, a tag (kinds 0 and 1), a label
            count, pos = uleb(data, pos)
            for _ in range(count):
                catch = data[pos]
                pos = skip_leb(data, pos + 1)
                if catch < 2:
                    pos = skip_leb(data, pos)
        else:
            pos += {"1": 1, "4": 4, "8": 8, "v": 16}[kind]
    return pos


def skip_valtype(data: bytes, pos: int) -> int:
    return skip_leb(data, pos + 1) if data[pos] in PREFIXED_TYPE else pos + 1


def skip_constant(data: bytes, pos: int) -> int:
    """Past a constant expression (it has no blocks: its first end closes it)."""
    while data[pos] != 0x0B:
        pos = instruction(data, pos)[0]
    return pos + 1


def encode_name(text: str) -> bytes:
    raw = text.encode()
    return encode_uleb(len(raw)) + raw


def sized(payload: bytes) -> bytes:
    return encode_uleb(len(payload)) + payload


def custom_name(wasm: bytes, section: Section) -> bytes | None:
    try:
        length, pos = uleb(wasm, section.start)
    except IndexError:
        return None
    return wasm[pos:pos + length]


def encode_section(section_id: int, payload: bytes) -> bytes:
    return bytes([section_id]) + encode_uleb(len(payload)) + payload
