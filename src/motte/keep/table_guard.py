"""Guards a module's ``table.grow`` instructions, so that a grow the memory cap refuses ends the workload.

wasmtime caps tables with the store's limits (:mod:`motte.keep.memory_limit`), and a ``table.grow``
past them returns -1 to the workload without a word to the embedder: its C API has no hook for it.
So before compiling, the keep rewrites a module that grows tables. Each ``table.grow t`` becomes a
call of a guard function appended to the module, which grows the table and, when the grow fails
although the table's own maximum allowed it, stores the refused count in an exported global
(:data:`REFUSED_EXPORT`) and traps. The runtime reads that global after a trap and ends the workload
as it does for a refused ``memory.grow``. Nothing already in the module moves in any index space:
the new types, functions, global and export come after all the existing ones.

A module whose code section lacks the instruction's bytes comes back as the same object after one
regular-expression scan; only the function bodies holding those bytes are decoded, instruction by
instruction. A module that is rewritten is validated by wasmtime first, so an invalid one gets
wasmtime's own error; a valid one this decoder cannot read is refused (:class:`TableGuardError`),
never run unguarded.

The record is a global, which survives the compiled-module cache (which holds the guarded module)
without a record of where the guards are; and the guards are named (:data:`GUARD_NAME`) in the
module's name section, so that a refusal in the start function, which runs before there is an
instance to read the global from, is known by the trap's innermost frame (without the count). A
backtrace of a rewritten module gives offsets in the rewritten bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

import wasmtime

from motte.shared.errors import MotteError

#: The exported i64 global a guard sets to the element count of the grow it saw refused (0: none).
REFUSED_EXPORT = "motte:table.grow refused"
#: The guards' name in the module's name section: a trap's innermost frame shows it (a refusal in
#: the start function, before there is an instance whose global could be read).
GUARD_NAME = "motte:table.grow guard"

# table.grow is 0xFC then the u32 LEB128 15, which an encoder may pad up to five bytes.
_TABLE_GROW = re.compile(rb"\xfc(?:\x0f|\x8f\x80{0,3}\x00)")
_HEADER = b"\0asm\x01\0\0\0"
_TYPE, _IMPORT, _FUNCTION, _TABLE, _GLOBAL, _EXPORT, _CODE = 1, 2, 3, 4, 6, 7, 10
# The order non-custom sections must come in (13, tags, sits between memories and globals).
_SECTION_ORDER = (1, 2, 3, 4, 5, 13, 6, 7, 8, 9, 12, 10, 11)
_I32, _I64 = 0x7F, 0x7E
_PREFIXED_TYPE = (0x63, 0x64)  # (ref null ht) and (ref ht): a heap type follows

# The immediates of each instruction, one letter each: u a LEB128 number (index, constant, heap
# type), b a block type, m a memarg, 1/4/8/v that many bytes (v: 16), t a br_table, s select's
# types, c try_table's catches.
_OPCODES: dict[int, str] = {
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
_PREFIXED: dict[int, dict[int, str]] = {
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


class TableGuardError(MotteError):
    """A module wasmtime accepts that the table.grow guard cannot read or extend."""


class _Undecodable(Exception):
    """The bytes at ``offset`` are not what the decoder expects."""

    def __init__(self, offset: int, what: str):
        super().__init__(f"{what} at offset {offset:#x}")


class _Section(NamedTuple):
    id: int
    header: int  # offset of the id byte
    start: int  # offset of the payload
    end: int


class _Table(NamedTuple):
    reftype: bytes  # the element type, as encoded
    index_type: int  # _I32, or _I64 for a table64
    maximum: int  # declared, or the largest its index type allows


class _Body(NamedTuple):
    size_at: int  # offset of its size
    start: int  # offset of its locals, then its instructions
    end: int


class _Grow(NamedTuple):
    at: int  # offset of the instruction
    after: int
    table: int


def guard_table_growth(engine: wasmtime.Engine, wasm: bytes) -> bytes:
    """``wasm`` with each ``table.grow`` guarded, or ``wasm`` itself if it has none.

    Raises wasmtime's error for an invalid module that would be rewritten, and
    :class:`TableGuardError` for a valid one the guard cannot read."""
    try:
        return _guarded(wasm, lambda: wasmtime.Module.validate(engine, wasm))
    except _Undecodable as exc:
        wasmtime.Module.validate(engine, wasm)  # an invalid module gets wasmtime's own error
        raise TableGuardError(f"cannot guard the module's table.grow instructions: {exc}",
                              hint="motte does not run a module whose table growth it cannot cap") from None


def _guarded(wasm: bytes, validate: Callable[[], None]) -> bytes:
    sections = _sections(wasm)
    code = next((section for section in sections if section.id == _CODE), None)
    if code is None or _TABLE_GROW.search(wasm, code.start, code.end) is None:
        return wasm
    bodies = _bodies(wasm, code)
    grows = _grows(wasm, bodies, code)
    if not grows:
        return wasm  # the bytes were only inside immediates
    validate()
    return _Rewrite(wasm, sections).apply(bodies, grows)


def _uleb(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Undecodable(pos, "an over-long LEB128 number")


def _skip_leb(data: bytes, pos: int) -> int:
    while data[pos] & 0x80:
        pos += 1
    return pos + 1


def _encode_uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _encode_sleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40):
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def _sections(wasm: bytes) -> list[_Section]:
    if wasm[:8] != _HEADER:
        raise _Undecodable(0, "no WebAssembly module header")
    sections = []
    pos = 8
    try:
        while pos < len(wasm):
            size, start = _uleb(wasm, pos + 1)
            if start + size > len(wasm):
                raise _Undecodable(pos, "a section running past the end")
            sections.append(_Section(wasm[pos], pos, start, start + size))
            pos = start + size
    except IndexError:
        raise _Undecodable(pos, "a truncated section header") from None
    return sections


def _bodies(wasm: bytes, code: _Section) -> list[_Body]:
    count, pos = _uleb(wasm, code.start)
    bodies = []
    for _ in range(count):
        size, start = _uleb(wasm, pos)
        bodies.append(_Body(pos, start, start + size))
        pos = start + size
    if pos != code.end:
        raise _Undecodable(code.start, "a code section whose bodies do not fill it")
    return bodies


def _grows(wasm: bytes, bodies: list[_Body], code: _Section) -> dict[int, list[_Grow]]:
    """The table.grow instructions of each body (by its number) that holds the byte pattern."""
    matches = [match.start() for match in _TABLE_GROW.finditer(wasm, code.start, code.end)]
    found: dict[int, list[_Grow]] = {}
    next_match = 0
    for number, body in enumerate(bodies):
        if next_match == len(matches):
            break
        if matches[next_match] >= body.end:
            continue
        while next_match < len(matches) and matches[next_match] < body.end:
            next_match += 1
        try:
            grows = _body_grows(wasm, body, matches[next_match - 1])
        except IndexError:
            raise _Undecodable(body.start, "a function body that ends mid-instruction") from None
        if grows:
            found[number] = grows
    return found


def _body_grows(data: bytes, body: _Body, last_match: int) -> list[_Grow]:
    """The table.grow instructions of ``body`` up to ``last_match``: none can start after it."""
    groups, pos = _uleb(data, body.start)
    for _ in range(groups):  # the locals: a count and a type each
        pos = _skip_valtype(data, _skip_leb(data, pos))
    grows = []
    while pos <= last_match:
        immediates = _OPCODES.get(data[pos])
        if immediates == "":  # the commonest kinds, inline: this loop is the guard's whole cost
            pos += 1
        elif immediates == "u" or (immediates == "m" and data[pos + 1] < 0x40):  # a one-byte memarg flags
            pos += 1 if immediates == "u" else 2
            while data[pos] & 0x80:
                pos += 1
            pos += 1
        else:
            at = pos
            pos, grown = _instruction(data, pos)
            if grown is not None:
                grows.append(_Grow(at, pos, grown))
    if pos > body.end:
        raise _Undecodable(body.end, "a function body whose last instruction runs past its end")
    return grows


def _instruction(data: bytes, pos: int) -> tuple[int, int | None]:
    """The offset after the instruction at ``pos``, and the table it grows if it is a table.grow."""
    opcode = data[pos]
    if opcode in _PREFIXED:
        sub, after = _uleb(data, pos + 1)
        if opcode == 0xFC and sub == 15:
            table, after = _uleb(data, after)
            return after, table
        immediates = _PREFIXED[opcode].get(sub)
        name = f"{opcode:#04x} {sub}"
    else:
        immediates = _OPCODES.get(opcode)
        after = pos + 1
        name = f"{opcode:#04x}"
    if immediates is None:
        raise _Undecodable(pos, f"opcode {name}, unknown to the decoder")
    return _skip_immediates(data, after, immediates), None


def _skip_immediates(data: bytes, pos: int, immediates: str) -> int:
    for kind in immediates:
        if kind == "u":
            pos = _skip_leb(data, pos)
        elif kind == "m":  # flags (bit 6: a memory index follows), then the offset
            flags, pos = _uleb(data, pos)
            pos = _skip_leb(data, _skip_leb(data, pos) if flags & 0x40 else pos)
        elif kind == "b":  # empty, a value type, or a type index (s33)
            pos = _skip_leb(data, pos + 1 if data[pos] in _PREFIXED_TYPE else pos)
        elif kind == "t":
            count, pos = _uleb(data, pos)
            for _ in range(count + 1):
                pos = _skip_leb(data, pos)
        elif kind == "s":
            count, pos = _uleb(data, pos)
            for _ in range(count):
                pos = _skip_valtype(data, pos)
        elif kind == "c":  # each catch: its kind, a tag (kinds 0 and 1), a label
            count, pos = _uleb(data, pos)
            for _ in range(count):
                catch = data[pos]
                pos = _skip_leb(data, pos + 1)
                if catch < 2:
                    pos = _skip_leb(data, pos)
        else:
            pos += {"1": 1, "4": 4, "8": 8, "v": 16}[kind]
    return pos


def _skip_valtype(data: bytes, pos: int) -> int:
    return _skip_leb(data, pos + 1) if data[pos] in _PREFIXED_TYPE else pos + 1


class _Rewrite:
    """The index spaces of a module that the guards extend, and the extending."""

    def __init__(self, wasm: bytes, sections: list[_Section]):
        self.wasm = wasm
        self.sections = sections
        self.by_id = {section.id: section for section in sections}
        self.functions = self.globals = 0
        self.tables: list[_Table] = []
        try:
            self._read_imports()
            self._read_tables()
            self.types = self._type_count()
            self.functions += self._vector(_FUNCTION)[0]
            self.globals += self._vector(_GLOBAL)[0]
            self._check_export_names()
        except IndexError:
            raise _Undecodable(len(wasm), "a section that ends early") from None

    def apply(self, bodies: list[_Body], grows: dict[int, list[_Grow]]) -> bytes:
        used = sorted({grow.table for found in grows.values() for grow in found})
        guard_of = {table: self.functions + number for number, table in enumerate(used)}
        refused = self.globals  # the index of the appended global
        types = [self._guard_type(self.tables[table]) for table in used]
        replaced = {
            _TYPE: self._extended(_TYPE, b"".join(types), len(used)),
            _FUNCTION: self._extended(_FUNCTION, b"".join(_encode_uleb(self.types + n) for n in range(len(used))),
                                      len(used)),
            _GLOBAL: self._extended(_GLOBAL, bytes([_I64, 1, 0x42, 0, 0x0B]), 1),  # (mut i64) = 0
            _EXPORT: self._extended(_EXPORT, _name(REFUSED_EXPORT) + b"\x03" + _encode_uleb(refused), 1),
            _CODE: self._code(bodies, grows, guard_of, [self._guard_body(t, refused) for t in used]),
        }
        return self._assemble(replaced, *self._named(self.functions, len(used)))

    def _read_imports(self) -> None:
        count, pos = self._vector(_IMPORT)
        for _ in range(count):
            for _ in range(2):  # module and field names
                length, pos = _uleb(self.wasm, pos)
                pos += length
            kind = self.wasm[pos]
            pos += 1
            if kind == 0:
                self.functions += 1
                pos = _skip_leb(self.wasm, pos)
            elif kind == 1:
                pos = self._read_table_type(pos)
            elif kind == 2:
                pos = self._skip_limits(pos)[0]
            elif kind == 3:
                self.globals += 1
                pos = _skip_valtype(self.wasm, pos) + 1
            elif kind == 4:
                pos = _skip_leb(self.wasm, pos + 1)
            else:
                raise _Undecodable(pos - 1, f"import kind {kind:#04x}, unknown to the decoder")

    def _read_tables(self) -> None:
        count, pos = self._vector(_TABLE)
        for _ in range(count):
            if self.wasm[pos] == 0x40:  # a table with an initial value: 0x40 0x00 tabletype expr
                pos = _skip_constant(self.wasm, self._read_table_type(pos + 2))
            else:
                pos = self._read_table_type(pos)

    def _read_table_type(self, pos: int) -> int:
        after = _skip_valtype(self.wasm, pos)
        reftype = self.wasm[pos:after]
        pos, is64, maximum = self._skip_limits(after)
        index_type = _I64 if is64 else _I32
        if maximum is None:
            maximum = (1 << (64 if is64 else 32)) - 1
        self.tables.append(_Table(reftype, index_type, maximum))
        return pos

    def _skip_limits(self, pos: int) -> tuple[int, bool, int | None]:
        flags = self.wasm[pos]
        pos = _skip_leb(self.wasm, pos + 1)  # the minimum
        maximum = None
        if flags & 1:
            maximum, pos = _uleb(self.wasm, pos)
        if flags & 8:  # a memory's page size
            pos = _skip_leb(self.wasm, pos)
        return pos, bool(flags & 4), maximum

    def _type_count(self) -> int:
        count, pos = self._vector(_TYPE)
        types = 0
        for _ in range(count):
            if self.wasm[pos] == 0x4E:  # a recursion group
                members, pos = _uleb(self.wasm, pos + 1)
            else:
                members = 1
            for _member in range(members):
                pos = self._skip_subtype(pos)
            types += members
        return types

    def _skip_subtype(self, pos: int) -> int:
        data = self.wasm
        if data[pos] in (0x50, 0x4F):  # sub, sub final: supertypes, then the composite type
            supertypes, pos = _uleb(data, pos + 1)
            for _ in range(supertypes):
                pos = _skip_leb(data, pos)
        kind = data[pos]
        pos += 1
        if kind == 0x60:  # func: parameters, results
            for _vector in range(2):
                count, pos = _uleb(data, pos)
                for _ in range(count):
                    pos = _skip_valtype(data, pos)
            return pos
        fields = 1
        if kind == 0x5F:  # struct
            fields, pos = _uleb(data, pos)
        elif kind != 0x5E:  # array
            raise _Undecodable(pos - 1, f"composite type {kind:#04x}, unknown to the decoder")
        for _ in range(fields):  # a storage type (i8 and i16 are one byte), then mutability
            pos = (pos + 1 if data[pos] in (0x78, 0x77) else _skip_valtype(data, pos)) + 1
        return pos

    def _vector(self, section_id: int) -> tuple[int, int]:
        """How many entries the section has (none if it is absent), and where the first starts."""
        section = self.by_id.get(section_id)
        return (0, 0) if section is None else _uleb(self.wasm, section.start)

    def _check_export_names(self) -> None:
        count, pos = self._vector(_EXPORT)
        for _ in range(count):
            length, pos = _uleb(self.wasm, pos)
            if self.wasm[pos:pos + length] == REFUSED_EXPORT.encode():
                raise TableGuardError(f"the module exports {REFUSED_EXPORT!r}, a name motte reserves")
            pos = _skip_leb(self.wasm, pos + length + 1)

    def _extended(self, section_id: int, entries: bytes, added: int) -> bytes:
        """The payload of the vector section ``section_id`` with ``entries`` appended."""
        section = self.by_id.get(section_id)
        count, pos = self._vector(section_id)
        existing = b"" if section is None else self.wasm[pos:section.end]
        return _encode_uleb(count + added) + existing + entries

    @staticmethod
    def _guard_type(table: _Table) -> bytes:
        """(func (param reftype index) (result index))"""
        return b"\x60\x02" + table.reftype + bytes([table.index_type, 1, table.index_type])

    def _guard_body(self, table: int, refused: int) -> bytes:
        index_type, maximum = self.tables[table].index_type, self.tables[table].maximum
        wide = index_type == _I64
        const, eq, sub, ge_u = (0x42, 0x51, 0x7D, 0x5A) if wide else (0x41, 0x46, 0x6B, 0x4F)
        bits = 64 if wide else 32
        signed_maximum = maximum - (1 << bits) if maximum >> (bits - 1) else maximum
        t = _encode_uleb(table)
        code = b"".join([
            b"\x20\x00\x20\x01\xfc\x0f", t, b"\x22\x02",  # local.tee 2 (table.grow t (local.get 0) (local.get 1))
            bytes([const, 0x7F, eq, 0x04, 0x40]),  # if (result == -1)
            # The grow failed. Refused by the table's own maximum (size + delta > maximum) is the
            # workload's business; refused by the cap (it fitted the maximum) ends it.
            bytes([const]), _encode_sleb(signed_maximum), b"\xfc\x10", t, bytes([sub]),
            bytes([0x20, 0x01, ge_u, 0x04, 0x40]),  # if (maximum - size >= delta)
            b"\x20\x01", b"" if wide else b"\xad", b"\x24", _encode_uleb(refused),  # refused = delta
            b"\x00\x0b\x0b",  # unreachable, end, end
            b"\x20\x02\x0b",  # the result
        ])
        body = b"\x01\x01" + bytes([index_type]) + code  # one local: the result
        return _encode_uleb(len(body)) + body

    def _code(self, bodies: list[_Body], grows: dict[int, list[_Grow]], guard_of: dict[int, int],
              guards: list[bytes]) -> bytes:
        wasm = self.wasm
        section = self.by_id[_CODE]
        parts = [_encode_uleb(len(bodies) + len(guards))]
        copied = _uleb(wasm, section.start)[1]  # bodies up to here are copied as they are
        for number, found in grows.items():
            body = bodies[number]
            pieces, pos = [], body.start
            for grow in found:
                pieces += [wasm[pos:grow.at], b"\x10", _encode_uleb(guard_of[grow.table])]  # call the guard
                pos = grow.after
            pieces.append(wasm[pos:body.end])
            rewritten = b"".join(pieces)
            parts += [wasm[copied:body.size_at], _encode_uleb(len(rewritten)), rewritten]
            copied = body.end
        parts += [wasm[copied:section.end], *guards]
        return b"".join(parts)

    def _named(self, first: int, count: int) -> tuple[_Section | None, bytes | None]:
        """The module's name section (None if it has none) and its payload with the ``count`` guards
        from function ``first`` on named; None for a name section this cannot read (it stays as it
        is, and the guards unnamed)."""
        entries = b"".join(_encode_uleb(first + n) + _name(GUARD_NAME) for n in range(count))
        wasm = self.wasm
        section = next((s for s in self.sections if s.id == 0 and _custom_name(wasm, s) == b"name"), None)
        if section is None:
            return None, _name("name") + b"\x01" + _sized(_encode_uleb(count) + entries)
        out = [_name("name")]
        named = False  # the function names subsection (id 1) comes after the module's name (0)
        try:
            length, pos = _uleb(wasm, section.start)
            pos += length  # past the custom section's own name
            while pos < section.end:
                kind = wasm[pos]
                size, content = _uleb(wasm, pos + 1)
                end = content + size
                if kind == 1:
                    existing, first_entry = _uleb(wasm, content)
                    out.append(b"\x01" + _sized(_encode_uleb(existing + count) + wasm[first_entry:end] + entries))
                    named = True
                else:
                    if kind > 1 and not named:
                        out.append(b"\x01" + _sized(_encode_uleb(count) + entries))
                        named = True
                    out.append(wasm[pos:end])
                pos = end
            if pos != section.end:
                return section, None
        except IndexError:
            return section, None
        if not named:
            out.append(b"\x01" + _sized(_encode_uleb(count) + entries))
        return section, b"".join(out)

    def _assemble(self, replaced: dict[int, bytes], names: _Section | None, names_payload: bytes | None) -> bytes:
        out = [_HEADER]
        missing = {section_id for section_id in replaced if section_id not in self.by_id}
        for section in self.sections:
            rank = _SECTION_ORDER.index(section.id) if section.id in _SECTION_ORDER else -1
            for section_id in sorted(missing, key=_SECTION_ORDER.index):
                if rank > _SECTION_ORDER.index(section_id):
                    out.append(_section(section_id, replaced[section_id]))
                    missing.discard(section_id)
            if section.id in replaced:
                out.append(_section(section.id, replaced[section.id]))
            elif section is names and names_payload is not None:
                out.append(_section(0, names_payload))
            else:
                out.append(self.wasm[section.header:section.end])
        if names is None and names_payload is not None:
            out.append(_section(0, names_payload))  # (a name section comes last)
        return b"".join(out)


def _skip_constant(data: bytes, pos: int) -> int:
    """Past a constant expression (it has no blocks: its first end closes it)."""
    while data[pos] != 0x0B:
        pos = _instruction(data, pos)[0]
    return pos + 1


def _name(text: str) -> bytes:
    raw = text.encode()
    return _encode_uleb(len(raw)) + raw


def _sized(payload: bytes) -> bytes:
    return _encode_uleb(len(payload)) + payload


def _custom_name(wasm: bytes, section: _Section) -> bytes | None:
    try:
        length, pos = _uleb(wasm, section.start)
    except IndexError:
        return None
    return wasm[pos:pos + length]


def _section(section_id: int, payload: bytes) -> bytes:
    return bytes([section_id]) + _encode_uleb(len(payload)) + payload
