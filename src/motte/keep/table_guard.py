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

from motte.keep.wasm_binary import (
    CODE,
    EXPORT,
    FUNCTION,
    GLOBAL,
    HEADER,
    I32,
    I64,
    IMPORT,
    OPCODES,
    SECTION_ORDER,
    TABLE,
    TYPE,
    Section,
    Undecodable,
    custom_name,
    encode_name,
    encode_section,
    encode_sleb,
    encode_uleb,
    instruction,
    read_sections,
    sized,
    skip_constant,
    skip_leb,
    skip_valtype,
    uleb,
)
from motte.shared.errors import MotteError

#: The exported i64 global a guard sets to the element count of the grow it saw refused (0: none).
REFUSED_EXPORT = "motte:table.grow refused"
#: The guards' name in the module's name section: a trap's innermost frame shows it (a refusal in
#: the start function, before there is an instance whose global could be read).
GUARD_NAME = "motte:table.grow guard"

# table.grow is 0xFC then the u32 LEB128 15, which an encoder may pad up to five bytes.
_TABLE_GROW = re.compile(rb"\xfc(?:\x0f|\x8f\x80{0,3}\x00)")


class TableGuardError(MotteError):
    """A module wasmtime accepts that the table.grow guard cannot read or extend."""


class _Table(NamedTuple):
    reftype: bytes  # the element type, as encoded
    index_type: int  # I32, or I64 for a table64
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
    except Undecodable as exc:
        wasmtime.Module.validate(engine, wasm)  # an invalid module gets wasmtime's own error
        raise TableGuardError(f"cannot guard the module's table.grow instructions: {exc}",
                              hint="motte does not run a module whose table growth it cannot cap") from None


def _guarded(wasm: bytes, validate: Callable[[], None]) -> bytes:
    sections = read_sections(wasm)
    code = next((section for section in sections if section.id == CODE), None)
    if code is None or _TABLE_GROW.search(wasm, code.start, code.end) is None:
        return wasm
    bodies = _bodies(wasm, code)
    grows = _grows(wasm, bodies, code)
    if not grows:
        return wasm  # the bytes were only inside immediates
    validate()
    return _Rewrite(wasm, sections).apply(bodies, grows)


def _bodies(wasm: bytes, code: Section) -> list[_Body]:
    count, pos = uleb(wasm, code.start)
    bodies = []
    for _ in range(count):
        size, start = uleb(wasm, pos)
        bodies.append(_Body(pos, start, start + size))
        pos = start + size
    if pos != code.end:
        raise Undecodable(code.start, "a code section whose bodies do not fill it")
    return bodies


def _grows(wasm: bytes, bodies: list[_Body], code: Section) -> dict[int, list[_Grow]]:
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
            raise Undecodable(body.start, "a function body that ends mid-instruction") from None
        if grows:
            found[number] = grows
    return found


def _body_grows(data: bytes, body: _Body, last_match: int) -> list[_Grow]:
    """The table.grow instructions of ``body`` up to ``last_match``: none can start after it."""
    groups, pos = uleb(data, body.start)
    for _ in range(groups):  # the locals: a count and a type each
        pos = skip_valtype(data, skip_leb(data, pos))
    grows = []
    while pos <= last_match:
        immediates = OPCODES.get(data[pos])
        if immediates == "":  # the commonest kinds, inline: this loop is the guard's whole cost
            pos += 1
        elif immediates == "u" or (immediates == "m" and data[pos + 1] < 0x40):  # a one-byte memarg flags
            pos += 1 if immediates == "u" else 2
            while data[pos] & 0x80:
                pos += 1
            pos += 1
        else:
            at = pos
            pos, grown = instruction(data, pos)
            if grown is not None:
                grows.append(_Grow(at, pos, grown))
    if pos > body.end:
        raise Undecodable(body.end, "a function body whose last instruction runs past its end")
    return grows


class _Rewrite:
    """The index spaces of a module that the guards extend, and the extending."""

    def __init__(self, wasm: bytes, sections: list[Section]):
        self.wasm = wasm
        self.sections = sections
        self.by_id = {section.id: section for section in sections}
        self.functions = self.globals = 0
        self.tables: list[_Table] = []
        try:
            self._read_imports()
            self._read_tables()
            self.types = self._type_count()
            self.functions += self._vector(FUNCTION)[0]
            self.globals += self._vector(GLOBAL)[0]
            self._check_export_names()
        except IndexError:
            raise Undecodable(len(wasm), "a section that ends early") from None

    def apply(self, bodies: list[_Body], grows: dict[int, list[_Grow]]) -> bytes:
        used = sorted({grow.table for found in grows.values() for grow in found})
        guard_of = {table: self.functions + number for number, table in enumerate(used)}
        refused = self.globals  # the index of the appended global
        types = [self._guard_type(self.tables[table]) for table in used]
        replaced = {
            TYPE: self._extended(TYPE, b"".join(types), len(used)),
            FUNCTION: self._extended(FUNCTION, b"".join(encode_uleb(self.types + n) for n in range(len(used))),
                                      len(used)),
            GLOBAL: self._extended(GLOBAL, bytes([I64, 1, 0x42, 0, 0x0B]), 1),  # (mut i64) = 0
            EXPORT: self._extended(EXPORT, encode_name(REFUSED_EXPORT) + b"\x03" + encode_uleb(refused), 1),
            CODE: self._code(bodies, grows, guard_of, [self._guard_body(t, refused) for t in used]),
        }
        return self._assemble(replaced, *self._named(self.functions, len(used)))

    def _read_imports(self) -> None:
        count, pos = self._vector(IMPORT)
        for _ in range(count):
            for _ in range(2):  # module and field names
                length, pos = uleb(self.wasm, pos)
                pos += length
            kind = self.wasm[pos]
            pos += 1
            if kind == 0:
                self.functions += 1
                pos = skip_leb(self.wasm, pos)
            elif kind == 1:
                pos = self._read_table_type(pos)
            elif kind == 2:
                pos = self._skip_limits(pos)[0]
            elif kind == 3:
                self.globals += 1
                pos = skip_valtype(self.wasm, pos) + 1
            elif kind == 4:
                pos = skip_leb(self.wasm, pos + 1)
            else:
                raise Undecodable(pos - 1, f"import kind {kind:#04x}, unknown to the decoder")

    def _read_tables(self) -> None:
        count, pos = self._vector(TABLE)
        for _ in range(count):
            if self.wasm[pos] == 0x40:  # a table with an initial value: 0x40 0x00 tabletype expr
                pos = skip_constant(self.wasm, self._read_table_type(pos + 2))
            else:
                pos = self._read_table_type(pos)

    def _read_table_type(self, pos: int) -> int:
        after = skip_valtype(self.wasm, pos)
        reftype = self.wasm[pos:after]
        pos, is64, maximum = self._skip_limits(after)
        index_type = I64 if is64 else I32
        if maximum is None:
            maximum = (1 << (64 if is64 else 32)) - 1
        self.tables.append(_Table(reftype, index_type, maximum))
        return pos

    def _skip_limits(self, pos: int) -> tuple[int, bool, int | None]:
        flags = self.wasm[pos]
        pos = skip_leb(self.wasm, pos + 1)  # the minimum
        maximum = None
        if flags & 1:
            maximum, pos = uleb(self.wasm, pos)
        if flags & 8:  # a memory's page size
            pos = skip_leb(self.wasm, pos)
        return pos, bool(flags & 4), maximum

    def _type_count(self) -> int:
        count, pos = self._vector(TYPE)
        types = 0
        for _ in range(count):
            if self.wasm[pos] == 0x4E:  # a recursion group
                members, pos = uleb(self.wasm, pos + 1)
            else:
                members = 1
            for _member in range(members):
                pos = self._skip_subtype(pos)
            types += members
        return types

    def _skip_subtype(self, pos: int) -> int:
        data = self.wasm
        if data[pos] in (0x50, 0x4F):  # sub, sub final: supertypes, then the composite type
            supertypes, pos = uleb(data, pos + 1)
            for _ in range(supertypes):
                pos = skip_leb(data, pos)
        kind = data[pos]
        pos += 1
        if kind == 0x60:  # func: parameters, results
            for _vector in range(2):
                count, pos = uleb(data, pos)
                for _ in range(count):
                    pos = skip_valtype(data, pos)
            return pos
        fields = 1
        if kind == 0x5F:  # struct
            fields, pos = uleb(data, pos)
        elif kind != 0x5E:  # array
            raise Undecodable(pos - 1, f"composite type {kind:#04x}, unknown to the decoder")
        for _ in range(fields):  # a storage type (i8 and i16 are one byte), then mutability
            pos = (pos + 1 if data[pos] in (0x78, 0x77) else skip_valtype(data, pos)) + 1
        return pos

    def _vector(self, section_id: int) -> tuple[int, int]:
        """How many entries the section has (none if it is absent), and where the first starts."""
        section = self.by_id.get(section_id)
        return (0, 0) if section is None else uleb(self.wasm, section.start)

    def _check_export_names(self) -> None:
        count, pos = self._vector(EXPORT)
        for _ in range(count):
            length, pos = uleb(self.wasm, pos)
            if self.wasm[pos:pos + length] == REFUSED_EXPORT.encode():
                raise TableGuardError(f"the module exports {REFUSED_EXPORT!r}, a name motte reserves")
            pos = skip_leb(self.wasm, pos + length + 1)

    def _extended(self, section_id: int, entries: bytes, added: int) -> bytes:
        """The payload of the vector section ``section_id`` with ``entries`` appended."""
        section = self.by_id.get(section_id)
        count, pos = self._vector(section_id)
        existing = b"" if section is None else self.wasm[pos:section.end]
        return encode_uleb(count + added) + existing + entries

    @staticmethod
    def _guard_type(table: _Table) -> bytes:
        """(func (param reftype index) (result index))"""
        return b"\x60\x02" + table.reftype + bytes([table.index_type, 1, table.index_type])

    def _guard_body(self, table: int, refused: int) -> bytes:
        index_type, maximum = self.tables[table].index_type, self.tables[table].maximum
        wide = index_type == I64
        const, eq, sub, ge_u = (0x42, 0x51, 0x7D, 0x5A) if wide else (0x41, 0x46, 0x6B, 0x4F)
        bits = 64 if wide else 32
        signed_maximum = maximum - (1 << bits) if maximum >> (bits - 1) else maximum
        t = encode_uleb(table)
        code = b"".join([
            b"\x20\x00\x20\x01\xfc\x0f", t, b"\x22\x02",  # local.tee 2 (table.grow t (local.get 0) (local.get 1))
            bytes([const, 0x7F, eq, 0x04, 0x40]),  # if (result == -1)
            # The grow failed. Refused by the table's own maximum (size + delta > maximum) is the
            # workload's business; refused by the cap (it fitted the maximum) ends it.
            bytes([const]), encode_sleb(signed_maximum), b"\xfc\x10", t, bytes([sub]),
            bytes([0x20, 0x01, ge_u, 0x04, 0x40]),  # if (maximum - size >= delta)
            b"\x20\x01", b"" if wide else b"\xad", b"\x24", encode_uleb(refused),  # refused = delta
            b"\x00\x0b\x0b",  # unreachable, end, end
            b"\x20\x02\x0b",  # the result
        ])
        body = b"\x01\x01" + bytes([index_type]) + code  # one local: the result
        return encode_uleb(len(body)) + body

    def _code(self, bodies: list[_Body], grows: dict[int, list[_Grow]], guard_of: dict[int, int],
              guards: list[bytes]) -> bytes:
        wasm = self.wasm
        section = self.by_id[CODE]
        parts = [encode_uleb(len(bodies) + len(guards))]
        copied = uleb(wasm, section.start)[1]  # bodies up to here are copied as they are
        for number, found in grows.items():
            body = bodies[number]
            pieces, pos = [], body.start
            for grow in found:
                pieces += [wasm[pos:grow.at], b"\x10", encode_uleb(guard_of[grow.table])]  # call the guard
                pos = grow.after
            pieces.append(wasm[pos:body.end])
            rewritten = b"".join(pieces)
            parts += [wasm[copied:body.size_at], encode_uleb(len(rewritten)), rewritten]
            copied = body.end
        parts += [wasm[copied:section.end], *guards]
        return b"".join(parts)

    def _named(self, first: int, count: int) -> tuple[Section | None, bytes | None]:
        """The module's name section (None if it has none) and its payload with the ``count`` guards
        from function ``first`` on named; None for a name section this cannot read (it stays as it
        is, and the guards unnamed)."""
        entries = b"".join(encode_uleb(first + n) + encode_name(GUARD_NAME) for n in range(count))
        wasm = self.wasm
        section = next((s for s in self.sections if s.id == 0 and custom_name(wasm, s) == b"name"), None)
        if section is None:
            return None, encode_name("name") + b"\x01" + sized(encode_uleb(count) + entries)
        out = [encode_name("name")]
        named = False  # the function names subsection (id 1) comes after the module's name (0)
        try:
            length, pos = uleb(wasm, section.start)
            pos += length  # past the custom section's own name
            while pos < section.end:
                kind = wasm[pos]
                size, content = uleb(wasm, pos + 1)
                end = content + size
                if kind == 1:
                    existing, first_entry = uleb(wasm, content)
                    out.append(b"\x01" + sized(encode_uleb(existing + count) + wasm[first_entry:end] + entries))
                    named = True
                else:
                    if kind > 1 and not named:
                        out.append(b"\x01" + sized(encode_uleb(count) + entries))
                        named = True
                    out.append(wasm[pos:end])
                pos = end
            if pos != section.end:
                return section, None
        except IndexError:
            return section, None
        if not named:
            out.append(b"\x01" + sized(encode_uleb(count) + entries))
        return section, b"".join(out)

    def _assemble(self, replaced: dict[int, bytes], names: Section | None, names_payload: bytes | None) -> bytes:
        out = [HEADER]
        missing = {section_id for section_id in replaced if section_id not in self.by_id}
        for section in self.sections:
            rank = SECTION_ORDER.index(section.id) if section.id in SECTION_ORDER else -1
            for section_id in sorted(missing, key=SECTION_ORDER.index):
                if rank > SECTION_ORDER.index(section_id):
                    out.append(encode_section(section_id, replaced[section_id]))
                    missing.discard(section_id)
            if section.id in replaced:
                out.append(encode_section(section.id, replaced[section.id]))
            elif section is names and names_payload is not None:
                out.append(encode_section(0, names_payload))
            else:
                out.append(self.wasm[section.header:section.end])
        if names is None and names_payload is not None:
            out.append(encode_section(0, names_payload))  # (a name section comes last)
        return b"".join(out)


