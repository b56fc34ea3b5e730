"""``motte demo secret-search``: the host finds the secret on backends that do not encrypt memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import motte

from motte.host.memory_scan import scan_process


def test_secret_search_finds_the_secret(backend: str) -> None:
    result = motte("demo", "secret-search", "--backend", backend, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["backend"] == backend
    assert report["secret_found"] is True and report["copies"] >= 1
    assert "host can read" in report["isolation"] or "no memory protection" in report["isolation"]


def test_the_scan_confirms_only_the_real_secret() -> None:
    marker = b"MOTTE-SECRET-" + os.urandom(16).hex().encode()
    child = subprocess.Popen([sys.executable, "-c", f"import time; s = {marker!r}; time.sleep(30)"])
    try:
        import time

        time.sleep(0.5)
        found = scan_process(child.pid, b"MOTTE-SECRET-", len(marker), lambda candidate: candidate == marker)
        assert found.copies >= 1
        missed = scan_process(child.pid, b"MOTTE-SECRET-", len(marker), lambda candidate: False)
        assert missed.copies == 0 and missed.candidates >= 1
    finally:
        child.kill()
        child.wait()
