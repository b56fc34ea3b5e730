"""What the benchmarks here share: their ``--quick`` option, and byte-compiling motte first."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


QUICK_REPEATS, REPEATS = 5, 15


def repetitions() -> int:
    """How many times to repeat each measurement (the command line's ``--quick``: fewer)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    return QUICK_REPEATS if parser.parse_args().quick else REPEATS


def compile_motte() -> None:
    """Byte-compile motte as an installed package would be (this environment may forbid writing .pyc)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src" / "motte")], check=True)


def to_first_output(command: list[str]) -> float:
    """Seconds from starting ``command`` to the first byte on its stdout (it must then succeed)."""
    started = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as process:
        assert process.stdout is not None
        first = process.stdout.read(1)
        elapsed = time.perf_counter() - started
        process.stdout.read()
    if not first or process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed (status {process.returncode})")
    return elapsed
