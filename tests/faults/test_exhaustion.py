"""The memory limit holds in total: tables and every other growable part of the wasm store are capped
along with linear memory (``keep/memory_limit.py``), and a refused table grow ends the workload as a
refused memory grow does (``keep/table_guard.py``)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import wasmtime

from motte.keep.engine import make_engine
from motte.keep.memory_limit import MAX_MEMORIES, MAX_TABLES, TABLE_ELEMENT_SIZE, MemoryLimit, table_bytes

LIMIT = 64 << 20

# Runs a command and prints the largest resident size of it and its descendants (each reaped by
# its parent, as the nil keep is by motte), in KiB, after its own output.
_MEASURED = """
import resource, subprocess, sys
result = subprocess.run(sys.argv[1:], capture_output=True)
sys.stdout.buffer.write(result.stderr)
print(f"\\nstatus={result.returncode} maxrss={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}")
"""


def _store(limit: int = LIMIT) -> tuple[wasmtime.Store, MemoryLimit, wasmtime.Engine]:
    memory_limit = MemoryLimit(limit)
    engine = make_engine(False, memory_limit)
    store = wasmtime.Store(engine)
    memory_limit.limit_store(store)
    return store, memory_limit, engine


def test_the_tables_share_a_sixteenth_of_the_limit_at_most_16_mib() -> None:
    assert table_bytes(LIMIT) == 4 << 20
    assert table_bytes(1 << 30) == 16 << 20  # not 64 MiB
    assert MemoryLimit(LIMIT).table_elements == (4 << 20) // TABLE_ELEMENT_SIZE // MAX_TABLES


@pytest.mark.parametrize("element", ["funcref", "externref"])
def test_a_table_grows_to_its_cap_and_no_further(element: str) -> None:
    store, memory_limit, engine = _store()
    cap = memory_limit.table_elements
    module = wasmtime.Module(engine, f"""(module (table $t 1 {element})
        (func (export "grow") (param i32) (result i32) (table.grow $t (ref.null {element[:-3]}) (local.get 0))))""")
    grow = wasmtime.Instance(store, module, []).exports(store)["grow"]
    assert isinstance(grow, wasmtime.Func)
    assert grow(store, 1 << 24) == -1  # a jump past the cap
    assert grow(store, cap - 1) == 1  # up to the cap exactly
    assert grow(store, 1) == -1


def test_a_table_that_starts_beyond_its_cap_is_refused_at_instantiation() -> None:
    store, memory_limit, engine = _store()
    module = wasmtime.Module(engine, f"(module (table {memory_limit.table_elements + 1} funcref))")
    with pytest.raises(wasmtime.WasmtimeError, match="exceeds table limits"):
        wasmtime.Instance(store, module, [])


@pytest.mark.parametrize(("item", "count", "what"), [("(table 1 funcref)", MAX_TABLES, "table count"),
                                                     ("(memory 0)", MAX_MEMORIES, "memory count")])
def test_a_store_holds_a_bounded_number_of_tables_and_memories(item: str, count: int, what: str) -> None:
    store, _, engine = _store()
    wasmtime.Instance(store, wasmtime.Module(engine, f"(module {item * count})"), [])
    store, _, engine = _store()
    with pytest.raises(wasmtime.WasmtimeError, match=what):
        wasmtime.Instance(store, wasmtime.Module(engine, f"(module {item * (count + 1)})"), [])


def test_a_store_holds_one_instance() -> None:
    store, _, engine = _store()
    module = wasmtime.Module(engine, "(module)")
    wasmtime.Instance(store, module, [])
    with pytest.raises(wasmtime.WasmtimeError, match="instance count"):
        wasmtime.Instance(store, module, [])


def test_the_gc_heap_counts_against_the_linear_memory_limit() -> None:
    store, memory_limit, engine = _store(limit=1 << 20)
    module = wasmtime.Module(engine, "(module (table 1 externref) (memory 16))")  # 1 MiB: the whole limit
    wasmtime.Instance(store, module, [])
    assert len(memory_limit._memories) == 2  # the linear memory and the GC heap, both from the allocator
    assert memory_limit.in_use() == 1 << 20


def test_table_growth_is_bounded_by_the_memory_limit(wasm) -> None:
    # 20 grows of 16M funcref entries: 2.5 GB resident without a cap on tables.
    command = [sys.executable, "-m", "motte", "run", "--backend", "nil", "--max-memory", "64M", wasm("tablegrow")]
    result = subprocess.run([sys.executable, "-c", _MEASURED, *command], capture_output=True, timeout=120)
    *stderr, summary = result.stdout.decode().rstrip("\n").split("\n")
    status, maxrss = (int(field.split("=")[1]) for field in summary.split())
    assert maxrss < 256 << 10, f"motte and its keep reached {maxrss >> 10} MiB resident"
    # The first grow is refused: the keep's guard (keep/table_guard.py) ends the workload as it
    # does for a refused memory.grow, before the workload sees -1.
    assert status == 137, "\n".join(stderr)
    assert "a table.grow by 16777216 elements was refused" in "\n".join(stderr)


def test_a_table_grow_refused_in_the_start_function_exits_as_the_memory_limit(wasm) -> None:
    # The start function runs before there is an instance whose record could be read: the guard
    # is known by its name in the trap's innermost frame, on a compiled and on a cached module.
    command = [sys.executable, "-m", "motte", "run", "--backend", "nil", "--max-memory", "64M", wasm("tablegrow_start")]
    for _ in range(2):
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 137, result.stderr
        assert "a table.grow in the module's start function was refused" in result.stderr
