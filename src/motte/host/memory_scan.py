"""Search a process's memory from the host, as a hostile host would (the secret-search demo).

Reads ``/proc/<pid>/maps`` and every readable mapping through ``/proc/<pid>/mem`` (needs the
right to ptrace the process: the same user, or root). For a nil keep the process is the keep
itself; for a VM keep it is QEMU, whose memory holds the guest's RAM.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

CHUNK = 64 << 20
_MAPS_LINE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4})")


@dataclass(frozen=True)
class ScanResult:
    copies: int  # places where a confirmed copy of the secret was found
    candidates: int  # places where the prefix was seen
    scanned_bytes: int
    seconds: float


def scan_process(pid: int, prefix: bytes, length: int, confirm: Callable[[bytes], bool]) -> ScanResult:
    """Find ``length``-byte strings starting with ``prefix`` in the memory of ``pid``; count those
    ``confirm`` accepts. Raises OSError when the memory cannot be read (permissions, exited)."""
    started = time.monotonic()
    copies = candidates = scanned = 0
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        regions = []
        for line in maps:
            match = _MAPS_LINE.match(line)
            if match and match.group(3)[0] == "r" and "[vvar]" not in line and "[vsyscall]" not in line:
                regions.append((int(match.group(1), 16), int(match.group(2), 16)))
        for start, end in regions:
            offset = start
            while offset < end:
                size = min(CHUNK, end - offset)
                try:
                    mem.seek(offset)
                    data = mem.read(size + length)  # overlap, so a copy across two chunks is seen
                except OSError:
                    break  # unreadable (e.g. a guard region): skip the rest of this mapping
                if not data:
                    break
                scanned += min(len(data), size)
                position = data.find(prefix)
                while position != -1 and position < size:
                    candidates += 1
                    if confirm(data[position : position + length]):
                        copies += 1
                    position = data.find(prefix, position + 1)
                offset += size
    return ScanResult(copies, candidates, scanned, time.monotonic() - started)
