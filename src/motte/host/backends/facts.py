"""Raw facts about this host, read-only (``/proc``, ``/sys``): what the backends' checks are made of."""

from __future__ import annotations

import platform
import re


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return None


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    text = cpuinfo if cpuinfo is not None else read_text("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_model(cpuinfo: str | None = None) -> str:
    text = cpuinfo if cpuinfo is not None else read_text("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return "unknown"


def kernel_version(release: str | None = None) -> tuple[int, ...]:
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release or platform.release())
    return tuple(int(g) for g in match.groups(default="0")) if match else (0, 0, 0)


def module_param(module: str, param: str) -> str | None:
    return read_text(f"/sys/module/{module}/parameters/{param}")
