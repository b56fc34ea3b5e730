"""What the benchmarks here share: their ``--quick`` option, and byte-compiling motte first."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def repetitions() -> int:
    """How many times to repeat each measurement (the command line's ``--quick``: fewer)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    return 5 if parser.parse_args().quick else 15


def compile_motte() -> None:
    """Byte-compile motte as an installed package would be (this environment may forbid writing .pyc)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src" / "motte")], check=True)
