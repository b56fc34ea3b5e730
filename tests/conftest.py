"""Shared fixtures: the workloads built from tests/workloads, and the backends to run them on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.workloads import workload

ROOT = Path(__file__).resolve().parents[1]


def motte(*args: str, input: bytes | None = None, timeout: float = 120, env: dict[str, str] | None = None,
          cwd: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the motte CLI in a fresh process, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "motte", *args], input=input if input is not None else b"",
        capture_output=True, timeout=timeout, env=full_env, cwd=cwd,
    )


@pytest.fixture(scope="session")
def wasm() -> object:
    return lambda name: str(workload(name))


