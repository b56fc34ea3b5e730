"""The workloads build, are valid modules, are cached, and sha256.wasm agrees with Python."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import wasmtime

from tests.workloads import (
    SOURCE_DIR,
    WorkloadBuildError,
    build_source,
    names,
    sha256_reference,
    workload,
)

EXPECTED = {
    "args_env", "clock_random", "echo", "exit", "fds", "files", "hello", "hello_wat", "memhog",
    "nostart", "poll", "sha256", "spin", "stdin_lines", "trap", "writer",
}  # fmt: skip


def test_every_expected_workload_has_a_source() -> None:
    assert set(names()) >= EXPECTED


@pytest.mark.parametrize("name", names())
def test_workload_builds_to_a_valid_module(name: str) -> None:
    path = workload(name)
    assert path.name == f"{name}.wasm"
    assert path.is_file()
    data = path.read_bytes()
    assert data.startswith(b"\0asm")
    wasmtime.Module.validate(wasmtime.Engine(), data)  # raises if invalid


def test_cache_skips_an_unchanged_source_and_rebuilds_a_changed_one(tmp_path: Path) -> None:
    src = tmp_path / "cached.c"
    shutil.copy(SOURCE_DIR / "hello.c", src)
    out_dir = tmp_path / "build"

    first = build_source(src, out_dir)
    first_stat = first.stat()
    time.sleep(0.05)  # so a rewrite would show in mtime_ns on any filesystem clock
    start = time.monotonic()
    again = build_source(src, out_dir)
    cached_s = time.monotonic() - start
    assert again == first
    assert again.stat().st_mtime_ns == first_stat.st_mtime_ns
    assert again.stat().st_ino == first_stat.st_ino  # not replaced
    assert cached_s < 0.5

    src.write_text(src.read_text().replace("Hello from a motte keep!", "Hello, changed!"))
    rebuilt = build_source(src, out_dir)
    assert rebuilt.stat().st_ino != first_stat.st_ino
    assert b"Hello, changed!" in rebuilt.read_bytes()


def test_cache_rebuilds_a_tampered_output(tmp_path: Path) -> None:
    src = tmp_path / "tampered.wat"
    shutil.copy(SOURCE_DIR / "hello.wat", src)
    out = build_source(src, tmp_path)
    good = out.read_bytes()
    out.write_bytes(b"\0asm garbage")
    assert build_source(src, tmp_path).read_bytes() == good


def test_compiler_errors_are_reported_with_stderr(tmp_path: Path) -> None:
    src = tmp_path / "broken.c"
    src.write_text("int main(void) { return undeclared_thing; }\n")
    with pytest.raises(WorkloadBuildError, match="undeclared_thing"):
        build_source(src, tmp_path / "build")
    assert not (tmp_path / "build" / "broken.wasm").exists()
    assert not [p for p in os.listdir(tmp_path / "build") if p.endswith((".wasm", ".tmp"))]


def test_unknown_workload_is_a_clear_error() -> None:
    with pytest.raises(WorkloadBuildError, match="unknown workload 'no_such_thing'"):
        workload("no_such_thing")


def test_sha256_wasm_matches_the_python_reference(tmp_path: Path) -> None:
    engine = wasmtime.Engine()
    module = wasmtime.Module.from_file(engine, str(workload("sha256")))
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()
    wasi.argv = ["sha256", "1"]
    stdout = tmp_path / "stdout"
    wasi.stdout_file = str(stdout)
    store.set_wasi(wasi)
    instance = linker.instantiate(store, module)
    start = instance.exports(store)["_start"]
    assert isinstance(start, wasmtime.Func)
    start(store)  # returning from main is exit status 0 (no ExitTrap)
    assert stdout.read_text() == f"sha256={sha256_reference(1)} mib=1\n"
