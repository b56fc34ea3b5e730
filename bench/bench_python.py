"""Python programs: ``motte run app.py`` on the nil backend against the same CPython ``.wasm`` run
directly by wasmtime-py in a fresh process, in one run; or, with ``--kvm``, on the kvm backend.

    .venv/bin/python bench/bench_python.py [--quick]
    .venv/bin/python bench/bench_python.py --kvm [--runs N] [--cold]

Both sides run the pinned interpreter with the same standard library directory and the program's
folder preopened at /app, with a compiled module cached: motte's module cache on its side; on the
direct side wasmtime's own cache (``Config.cache``, what a wasmtime-py user turns on), and, for
scale, a module precompiled by hand and loaded with ``Module.deserialize_file`` (the fastest a
fresh process can load one). Stdout is a pipe on both sides, read and counted here, so CPython
block-buffers it as it would writing to a pipe. Prints both measurements of each figure and their
ratio. Targets (against wasmtime's cache): hello ≤ 1.3×, 200,000 printed lines ≤ 1.5×.

``--kvm``: the wall time of ``motte run --backend kvm hello.py`` with the compiled interpreter in
the module cache (the keep restored from its snapshot), against the C hello world
(``src/motte/demo/hello.wasm``) on kvm as the baseline, runs interleaved; target: hello ≤ 3 s.
``--cold`` first times one run with an empty module cache (the keep compiles the interpreter:
about 80 s under TCG), in a cache directory of its own that shares the keep image and snapshots.
"""

from __future__ import annotations

import argparse
import os
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
from bench.common import QUICK_REPEATS, REPEATS, compile_motte  # noqa: E402

from motte.host.paths import cache_root  # noqa: E402
from motte.host.python_runtime import INTERPRETER, package_file, stdlib_dir  # noqa: E402

MOTTE = [sys.executable, "-m", "motte", "run", "--backend", "nil"]
DIRECT = [sys.executable, str(ROOT / "bench" / "python_direct.py")]
LINES = 200_000
PROGRAMS = {
    "hello.py": 'print("hello")\n',
    "lines.py": f'for i in range({LINES}):\n    print("line", i)\n',
}


KVM = [sys.executable, "-m", "motte", "run", "--backend", "kvm"]
C_HELLO = ROOT / "src" / "motte" / "demo" / "hello.wasm"
C_HELLO_LINES = 5
KVM_TARGET = 3.0  # seconds, Python hello warm


def timed(command: list[str], expect_lines: int, env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, check=True, capture_output=True, env=env)
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


def kvm_hello(runs: int, cold: bool) -> None:
    """Python hello on kvm, module cache warm, against the C hello on kvm; ``cold``: one run first
    with an empty module cache."""
    with tempfile.TemporaryDirectory() as scratch:
        hello = Path(scratch) / "hello.py"
        hello.write_text(PROGRAMS["hello.py"])
        python = [*KVM, str(hello)]
        if cold:
            print(f"first run, empty module cache: {cold_run(python, Path(scratch) / 'cache'):.1f} s")
        timed(python, 1)  # the cache and the snapshot are warm from here on
        timed([*KVM, str(C_HELLO)], C_HELLO_LINES)
        times: dict[str, list[float]] = {"python": [], "c": []}
        for _ in range(runs):  # interleaved: the machine's load weighs on both alike
            times["python"].append(timed(python, 1))
            times["c"].append(timed([*KVM, str(C_HELLO)], C_HELLO_LINES))
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"motte run --backend kvm, module cache warm, {runs} runs each, interleaved (s)")
    for name, label in (("python", "hello.py"), ("c", "C hello.wasm (baseline)")):
        runs_text = " ".join(f"{value:.2f}" for value in times[name])
        print(f"  {label:<24} median {medians[name]:5.2f}   runs {runs_text}")
    print(f"  hello.py beyond the C hello: {medians['python'] - medians['c']:.2f} s; "
          f"target hello.py <= {KVM_TARGET:g} s: {'met' if medians['python'] <= KVM_TARGET else 'MISSED'}")


def cold_run(command: list[str], cache: Path) -> float:
    """One run in a cache directory whose module cache (and Python standard library copy) is empty;
    the keep image, kernel and snapshots are the usual ones, shared."""
    cache.mkdir(mode=0o700)
    for entry in cache_root().iterdir():
        if entry.name not in ("modules", "python"):
            (cache / entry.name).symlink_to(entry)
    return timed(command, 1, env={**os.environ, "MOTTE_CACHE_DIR": str(cache)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--kvm", action="store_true", help="hello.py on the kvm backend against a C hello")
    parser.add_argument("--runs", type=int, default=7, help="--kvm: warm runs of each")
    parser.add_argument("--cold", action="store_true", help="--kvm: time a first run with an empty module cache")
    args = parser.parse_args()
    compile_motte()
    if args.kvm:
        kvm_hello(3 if args.quick else args.runs, args.cold)
        return
    repeats = QUICK_REPEATS if args.quick else REPEATS
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
