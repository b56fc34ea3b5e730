"""Where a hung motte run is stuck: the Python stacks of a process and its children (the keep).

For the messages of tests that time out waiting for a run to end: a hang that shows up once in
many suite runs is hard to reproduce, so the failure itself must say where every thread was.
Uses py-spy (a dev dependency); without it, says so.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def python_stacks(pid: int) -> str:
    """The stacks of every thread of ``pid`` and of its child processes, as text."""
    beside = Path(sys.executable).with_name("py-spy")  # the venv's, whether or not it is on PATH
    spy = str(beside) if beside.exists() else shutil.which("py-spy")
    if spy is None:
        return "(no stacks: py-spy is not installed)"
    parts = []
    for label, target in [("motte", pid)] + [("child", child) for child in _children(pid)]:
        try:
            done = subprocess.run([spy, "dump", "--pid", str(target)], capture_output=True, text=True, timeout=30)
            parts.append(f"--- {label} {target}\n{done.stdout or done.stderr}")
        except (OSError, subprocess.TimeoutExpired) as exc:
            parts.append(f"--- {label} {target}: py-spy failed: {exc}")
    return "\n".join(parts)
