"""How the keep runtime reports a workload's end when a WASI call fails inside motte's own code:
an internal error (motte's exit status 125), never "the workload trapped"."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import wasmtime
from tests.conftest import endpoint_pair

from motte.keep.runtime import KeepRuntime
from motte.keep.wasi.hostcall import GuestMemory, HostFunctions
from motte.shared.control import Exit, Launch, LaunchStreams, LaunchTerms
from motte.shared.enarx_config import default_config
from motte.shared.endpoint import Endpoint
from motte.shared.errors import EXIT_MOTTE_ERROR, EXIT_TRAP

LAUNCH = Launch(LaunchTerms(wasm_size=1, wasm_sha256="0" * 64, config=default_config()),
                LaunchStreams(wasm=1, stdio={0: 3, 1: 5, 2: 7}))
CALLS_SCHED_YIELD = """
(module
  (import "wasi_snapshot_preview1" "sched_yield" (func $yield (result i32)))
  (memory (export "memory") 1)
  (func (export "_start") (drop (call $yield)) %s))
"""


@pytest.fixture
def keep_endpoint() -> Iterator[Endpoint]:
    with endpoint_pair() as (_, keep):
        yield keep


def run(keep_endpoint: Endpoint, sched_yield: object, after: str = "") -> Exit:
    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    host = HostFunctions(linker)
    host.define("wasi_snapshot_preview1", "sched_yield", "", "i", sched_yield)  # type: ignore[arg-type]
    module = wasmtime.Module(engine, CALLS_SCHED_YIELD % after)
    runtime = KeepRuntime(keep_endpoint)
    return runtime._execute(wasmtime.Store(engine), linker, host, module, GuestMemory(), LAUNCH)


def test_an_exception_in_a_wasi_call_is_an_internal_error(keep_endpoint: Endpoint) -> None:
    def broken() -> int:
        raise OverflowError("timestamp too large to convert to C _PyTime_t")

    outcome = run(keep_endpoint, broken)
    assert (outcome.status, outcome.reason) == (EXIT_MOTTE_ERROR, "error")
    assert outcome.message == ("internal error in the keep runtime, in sched_yield: "
                               "OverflowError: timestamp too large to convert to C _PyTime_t")


def test_a_trap_of_the_workloads_own_is_still_a_trap(keep_endpoint: Endpoint) -> None:
    outcome = run(keep_endpoint, lambda: 0, after="unreachable")
    assert (outcome.status, outcome.reason) == (EXIT_TRAP, "trap")
