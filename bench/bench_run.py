"""Benchmarks of ``motte run`` on the nil backend against wasmtime-py run directly, in one run.

    .venv/bin/python bench/bench_run.py [--quick]

Prints, for each figure, both measurements and their ratio. Targets: start-up ≤ 1.5×,
CPU-bound ≤ 1.10×, stdout throughput ≥ 0.5× the direct run.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import compile_motte, repetitions  # noqa: E402
from tests.workloads import workload  # noqa: E402

MOTTE = [sys.executable, "-m", "motte"]
DIRECT = str(ROOT / "tests" / "workloads" / "wasmtime_wasi.py")  # MODULE STDOUT PREOPEN [ARG...]


def timed(command: list[str], stdout: object = subprocess.DEVNULL) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=stdout, stderr=subprocess.DEVNULL)  # type: ignore[arg-type]
    return time.perf_counter() - started


def compare(label: str, motte_cmd: list[str], direct_cmd: list[str], repeats: int, unit: str = "s",
            work: float | None = None) -> float:
    # Interleave the two so drifting machine load hits both alike.
    ours, theirs = [], []
    for _ in range(repeats):
        ours.append(timed(motte_cmd))
        theirs.append(timed(direct_cmd))
    m, d = statistics.median(ours), statistics.median(theirs)
    if work is None:
        print(f"{label:<44} motte {m * 1000:8.1f} ms   direct {d * 1000:8.1f} ms   ratio {m / d:5.2f}x")
        return m / d
    print(f"{label:<44} motte {work / m:8.1f} {unit}   direct {work / d:8.1f} {unit}   ratio {d / m:5.2f}x")
    return d / m


def main() -> None:
    repeats = repetitions()
    compile_motte()
    hello = str(workload("hello"))
    sha = str(workload("sha256"))
    writer = str(workload("writer"))
    subprocess.run([*MOTTE, "run", "--backend", "nil", hello], check=True, stdout=subprocess.DEVNULL)  # warm cache
    subprocess.run([*MOTTE, "run", "--backend", "nil", sha, "--", "1"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*MOTTE, "run", "--backend", "nil", writer, "--", "1"], check=True, stdout=subprocess.DEVNULL)
    direct = [sys.executable, DIRECT]
    print(f"motte run --backend nil vs wasmtime-py {sys.version.split()[0]} direct, medians of {repeats}")
    startup = compare("start-up, hello (cached module)", [*MOTTE, "run", "--backend", "nil", hello],
                      [*direct, hello, "-", ""], repeats)
    cpu = compare("CPU: SHA-256 over 64 MiB in wasm", [*MOTTE, "run", "--backend", "nil", sha, "--", "64"],
                  [*direct, sha, "-", "", "64"], max(3, repeats // 3))
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "out")
        mib = 256
        with open(out, "wb") as sink:
            throughput = compare(
                f"stdout: {mib} MiB in 4 KiB writes",
                [*MOTTE, "run", "--backend", "nil", writer, "--", str(mib), "4096"],
                [*direct, writer, out, "", str(mib), "4096"], max(3, repeats // 3), unit="MB/s", work=mib * 1.048576,
            )
            del sink
    print()
    print(f"start-up ratio   {startup:5.2f}x  (target <= 1.50x)")
    print(f"CPU-bound ratio  {cpu:5.2f}x  (target <= 1.10x)")
    print(f"throughput ratio {throughput:5.2f}x  (target >= 0.50x)")


if __name__ == "__main__":
    main()
