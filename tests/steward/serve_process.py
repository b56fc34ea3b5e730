"""Run ``motte steward serve`` as a real process and find its URL; always stopped afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class ServeProcess:
    proc: subprocess.Popen[bytes]
    url: str
    stderr: list[bytes] = field(default_factory=list)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


@contextmanager
def serve_process(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Iterator[ServeProcess]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "motte", "steward", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None and proc.stderr is not None
    stderr: list[bytes] = []
    drain = threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    drain.start()
    first: list[bytes] = []
    reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    try:
        line = first[0].decode() if first else ""
        if "listening on " not in line:
            proc.kill()
            proc.wait(10)
            drain.join(5)
            raise AssertionError(f"steward did not start: {line!r} {b''.join(stderr).decode()}")
        url = line.split("listening on ", 1)[1].split()[0]
        yield ServeProcess(proc, url, stderr)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        drain.join(10)
        assert not drain.is_alive(), "a process still holds the Steward's stderr: an orphaned worker?"
        proc.stdout.close()
        proc.stderr.close()
