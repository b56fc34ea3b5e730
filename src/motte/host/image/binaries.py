"""The ELF files of the image: the interpreter, extension modules and their shared libraries,
stripped (``strip --strip-unneeded`` output is the same for the same input)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from motte.shared.errors import MotteError


def is_elf(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) == b"\x7fELF"


def elf_interpreter(data: bytes) -> str | None:
    import struct

    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        p_type, _flags, p_offset, _v, _p, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 3:  # PT_INTERP
            return data[p_offset : p_offset + p_filesz].rstrip(b"\0").decode()
    return None


def shared_libraries(binary: Path) -> dict[str, Path]:
    """``soname -> host path`` for the whole dependency closure of ``binary`` (ldd resolves it)."""
    result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
    if result.returncode != 0:
        if "not a dynamic executable" in (result.stdout + result.stderr):
            return {}
        raise MotteError(f"ldd {binary} failed: {result.stderr.strip()}")
    libraries: dict[str, Path] = {}
    for line in result.stdout.splitlines():
        line = line.strip()
        if "=>" in line:
            name, _, rest = line.partition("=>")
            target = rest.strip().split(" (")[0].strip()
            if target == "not found":
                raise MotteError(f"{binary.name} needs {name.strip()}, which is not installed")
            if target:
                libraries[name.strip()] = Path(os.path.realpath(target))
        elif line.startswith("/"):  # the ELF interpreter
            path = line.split(" (")[0]
            libraries[os.path.basename(path)] = Path(os.path.realpath(path))
    return libraries


def strip_all(binaries: dict[str, Path]) -> dict[str, bytes]:
    """``strip --strip-unneeded`` each binary into a temporary file; deterministic for a given
    input. Without ``strip`` the files go in unstripped (larger, same behaviour)."""
    strip = shutil.which("strip")
    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="motte-strip-") as tmp:
        for index, (guest, host) in enumerate(sorted(binaries.items())):
            if strip is None:
                out[guest] = host.read_bytes()
                continue
            target = Path(tmp) / str(index)
            result = subprocess.run(
                [strip, "--strip-unneeded", "-o", str(target), str(host)], capture_output=True, text=True
            )
            if result.returncode != 0:
                raise MotteError(f"strip {host} failed: {result.stderr.strip()}")
            out[guest] = target.read_bytes()
    return out
