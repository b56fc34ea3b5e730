"""Python programs: ``motte run app.py`` on the nil backend against the same CPython ``.wasm`` run
directly by wasmtime-py in a fresh process, in one run.

    .venv/bin/python bench/bench_python.py [--quick]

Both sides run the pinned interpreter with the same standard library directory and the program's
folder preopened at /app, with a compiled module cached: motte's module cache on its side; on the
direct side wasmtime's own cache (``Config.cache``, what a wasmtime-py user turns on), and, for
scale, a module precompiled by hand and loaded with ``Module.deserialize_file`` (the fastest a
fresh process can load one). Stdout is a pipe on both sides, read and counted here, so CPython
block-buffers it as it would writing to a pipe. Prints both measurements of each figure and their
ratio. Targets (against wasmtime's cache): hello ≤ 1.3×, 200,000 printed lines ≤ 1.5×.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import wasmtime

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import compile_motte, repetitions  # noqa: E402

from motte.host.python_runtime import INTERPRETER, package_file, stdlib_dir  # noqa: E402

MOTTE = [sys.executable, "-m", "motte", "run", "--backend", "nil"]
DIRECT = [sys.executable, str(ROOT / "bench" / "python_direct.py")]
LINES = 200_000
PROGRAMS = {
    "hello.py": 'print("hello")\n',
    "lines.py": f'for i in range({LINES}):\n    print("line", i)\n',
}


def timed(command: list[str], expect_lines: int) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, check=True, capture_output=True)
    elapsed = time.perf_counter() - started
    got = result.stdout.count(b"\n")
    if got != expect_lines or result.stderr:
        raise SystemExit(f"{command}: {got} lines, stderr {result.stderr[-500:]!r}")
    return elapsed


def compare(label: str, sides: dict[str, list[str]], repeats: int, expect_lines: int) -> dict[str, float]:
    # Interleaved, so drifting machine load hits every side alike.
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, command in sides.items():
            times[name].append(timed(command, expect_lines))
    medians = {name: statistics.median(values) for name, values in times.items()}
    ours = medians["motte"]
    parts = "   ".join(f"{name} {value * 1000:7.1f} ms" for name, value in medians.items())
    print(f"{label:<28} {parts}")
    for name, value in medians.items():
        if name != "motte":
            print(f"{'':<28} motte / {name}: {ours / value:5.2f}x")
    return {name: ours / value for name, value in medians.items() if name != "motte"}


def main() -> None:
    repeats = repetitions()
    compile_motte()
    wasm = str(package_file(INTERPRETER))
    stdlib = str(stdlib_dir())
    with tempfile.TemporaryDirectory() as scratch:
        app = Path(scratch) / "app"
        app.mkdir()
        for name, source in PROGRAMS.items():
            (app / name).write_text(source)
        precompiled = Path(scratch) / "python.cwasm"
        precompiled.write_bytes(wasmtime.Module.from_file(wasmtime.Engine(), wasm).serialize())

        def sides(script: str) -> dict[str, list[str]]:
            return {
                "motte": [*MOTTE, str(app / script)],
                "wasmtime-cache": [*DIRECT, wasm, "wasmtime", stdlib, str(app), script],
                "precompiled": [*DIRECT, wasm, str(precompiled), stdlib, str(app), script],
            }

        for script, lines in (("hello.py", 1), ("lines.py", LINES)):
            for command in sides(script).values():  # warm every cache (and compile once)
                timed(command, lines)
        print(f"motte run --backend nil app.py vs wasmtime-py {version('wasmtime')} direct, medians of {repeats}")
        hello = compare("hello (print)", sides("hello.py"), repeats, 1)
        printed = compare(f"{LINES:,} printed lines", sides("lines.py"), max(3, repeats // 3), LINES)
    print()
    print(f"hello ratio        {hello['wasmtime-cache']:5.2f}x  (target <= 1.30x; {hello['precompiled']:.2f}x "
          "against a precompiled module)")
    print(f"200,000 lines      {printed['wasmtime-cache']:5.2f}x  (target <= 1.50x; {printed['precompiled']:.2f}x "
          "against a precompiled module)")


if __name__ == "__main__":
    main()
