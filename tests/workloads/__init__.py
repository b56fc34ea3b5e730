"""The guest programs motte's tests and benchmarks run, built from the sources in this folder.

Every ``*.c`` file here is compiled with zig's clang (from the ``ziglang`` package) for
``wasm32-wasi``, and every ``*.wat`` file is assembled with ``wasmtime.wat2wasm``. A workload is
named after its source's stem (``hello.c`` -> ``"hello"``); a ``.wat`` whose stem is also a ``.c``
stem gets a ``_wat`` suffix (``hello.wat`` -> ``"hello_wat"``). What each one does and prints is
described at the top of its source.

    from tests.workloads import workload
    wasm_path = workload("hello")      # builds tests/workloads/build/hello.wasm on first use

Builds land in ``tests/workloads/build/`` (git-ignored) as ``<name>.wasm`` next to a sidecar
``<name>.wasm.sha256``. The sidecar holds a key (SHA-256 over the source, the compiler flags and
the compiler's version) and the SHA-256 of the built file; an unchanged source is not rebuilt.
Builds are safe to run from several processes at once (pytest-xdist): each build holds a lock
file and writes through a temporary file that is moved into place with ``os.replace``.

``python -m tests.workloads`` (from the repository root) builds them all.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "BUILD_DIR",
    "C_FLAGS",
    "SOURCE_DIR",
    "WRITER_PATTERN",
    "WorkloadBuildError",
    "build_all",
    "build_source",
    "names",
    "sha256_reference",
    "source",
    "workload",
    "writer_expected",
    "zig_command",
]

SOURCE_DIR = Path(__file__).resolve().parent
BUILD_DIR = SOURCE_DIR / "build"

#: Flags given to ``zig cc`` for every C workload. ``-s`` strips debug info and the name
#: section: it takes hello.wasm from ~900 KB to ~3 KB.
C_FLAGS: tuple[str, ...] = ("-target", "wasm32-wasi", "-O2", "-s", "-Wall")

#: Extra flags for single workloads (e.g. ``-lwasi-emulated-signal``); none need any today.
EXTRA_C_FLAGS: dict[str, tuple[str, ...]] = {}

#: Longest a single compile may take: zig's first run builds wasi-libc (~20 s on 2 cores).
COMPILE_TIMEOUT_S = 600

#: The 64-byte pattern ``writer.c`` repeats on stdout.
WRITER_PATTERN = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.\n"

_KEY_VERSION = "motte-workloads-v1"


class WorkloadBuildError(RuntimeError):
    """A workload could not be built (unknown name, compiler error, assembler error)."""


def zig_command(src: Path, out: Path, name: str | None = None) -> list[str]:
    """The exact command line that compiles the C source ``src`` to ``out``."""
    extra = EXTRA_C_FLAGS.get(name or src.stem, ())
    return [sys.executable, "-m", "ziglang", "cc", *C_FLAGS, *extra, "-o", str(out), str(src)]


def _sources() -> dict[str, Path]:
    found: dict[str, Path] = {}
    c_stems = {p.stem for p in SOURCE_DIR.glob("*.c")}
    for path in sorted(SOURCE_DIR.glob("*.c")) + sorted(SOURCE_DIR.glob("*.wat")):
        name = path.stem
        if path.suffix == ".wat" and name in c_stems:
            name += "_wat"
        found[name] = path
    return found


def names() -> list[str]:
    """Names of every workload, sorted."""
    return sorted(_sources())


def source(name: str) -> Path:
    """The source file of workload ``name`` (a file name such as ``"hello.wat"`` also works)."""
    sources = _sources()
    if name in sources:
        return sources[name]
    by_file = {path.name: path for path in sources.values()}
    if name in by_file:
        return by_file[name]
    raise WorkloadBuildError(f"unknown workload {name!r}; known: {', '.join(sorted(sources))}")


def _name_of(src: Path) -> str:
    for name, path in _sources().items():
        if path == src:
            return name
    return src.stem


def _compiler_id(kind: str) -> str:
    package = "ziglang" if kind == ".c" else "wasmtime"
    try:
        return f"{package}=={importlib.metadata.version(package)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{package}==unknown"


def _build_key(src: Path, name: str) -> str:
    """SHA-256 over everything that decides the output: source, flags, compiler version."""
    h = hashlib.sha256()
    h.update(_KEY_VERSION.encode() + b"\0")
    h.update(_compiler_id(src.suffix).encode() + b"\0")
    if src.suffix == ".c":
        h.update(" ".join((*C_FLAGS, *EXTRA_C_FLAGS.get(name, ()))).encode() + b"\0")
        # Headers it includes with quotes (beside it, or the demo's shared ones) decide it too.
        for include in sorted(set(re.findall(r'^\s*#\s*include\s+"([^"]+)"', src.read_text(), re.M))):
            header = src.parent / include
            h.update(include.encode() + b"\0" + header.read_bytes() + b"\0")
    h.update(src.read_bytes())
    return h.hexdigest()


def _sidecar(out: Path) -> Path:
    return out.with_name(out.name + ".sha256")


def _is_current(out: Path, key: str) -> bool:
    """True when ``out`` was built from ``key`` and has not been altered since."""
    try:
        recorded = _sidecar(out).read_text().split()
        data = out.read_bytes()
    except OSError:
        return False
    return len(recorded) == 2 and recorded[0] == key and recorded[1] == hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """An exclusive lock between processes (a no-op where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; keeps under other users must read it
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _compile_c(src: Path, out_dir: Path, name: str) -> bytes:
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".wasm")
    os.close(fd)
    cmd = zig_command(src, Path(tmp), name)
    try:
        try:
            proc = subprocess.run(
                cmd, cwd=out_dir, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise WorkloadBuildError(f"compiling {src.name} timed out after {exc.timeout} s") from exc
        if proc.returncode != 0:
            raise WorkloadBuildError(
                f"compiling {src.name} failed (exit {proc.returncode}):\n"
                f"$ {' '.join(cmd)}\n{proc.stderr.strip() or proc.stdout.strip()}"
            )
        data = Path(tmp).read_bytes()
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    if not data.startswith(b"\0asm"):
        raise WorkloadBuildError(f"compiling {src.name} produced no wasm module")
    return data


def _assemble_wat(src: Path) -> bytes:
    import wasmtime

    try:
        return bytes(wasmtime.wat2wasm(src.read_text()))
    except wasmtime.WasmtimeError as exc:
        raise WorkloadBuildError(f"assembling {src.name} failed:\n{exc}") from exc


def build_source(src: Path, out_dir: Path, name: str | None = None, force: bool = False) -> Path:
    """Build one ``.c`` or ``.wat`` file to ``out_dir/<name>.wasm`` unless it is up to date.

    ``name`` defaults to the file's stem. Returns the path of the module.
    """
    src = Path(src).resolve()
    if src.suffix not in (".c", ".wat"):
        raise WorkloadBuildError(f"don't know how to build {src.name}: expected .c or .wat")
    name = name or src.stem
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}.wasm"
    key = _build_key(src, name)
    if not force and _is_current(out, key):
        return out
    with _locked(out_dir / f".{name}.lock"):
        # Another process may have built it while we waited for the lock.
        if not force and _is_current(out, key):
            return out
        data = _compile_c(src, out_dir, name) if src.suffix == ".c" else _assemble_wat(src)
        _atomic_write(out, data)
        _atomic_write(_sidecar(out), f"{key} {hashlib.sha256(data).hexdigest()}\n".encode())
    return out


def workload(name: str, force: bool = False) -> Path:
    """Path of the built ``<name>.wasm``, building it first if its source changed or it is missing.

    Raises :class:`WorkloadBuildError` for an unknown name or a failed build (with the
    compiler's stderr). ``force`` rebuilds even an up-to-date module.
    """
    src = source(name)
    return build_source(src, BUILD_DIR, _name_of(src), force=force)


def build_all(force: bool = False) -> dict[str, Path]:
    """Build every workload; returns name -> path of the module."""
    return {name: build_source(src, BUILD_DIR, name, force=force) for name, src in sorted(_sources().items())}


def _sha256_period_block() -> bytes:
    """The first 64 KiB of the stream ``sha256.c`` hashes.

    Byte ``i`` is ``(i*31 + (i >> 8)) & 0xff``. Writing ``i = 256*k + j`` that is
    ``(31*j + k) & 0xff``: 256-byte blocks of ``31*j`` shifted by ``k``, and since
    ``k`` only matters mod 256 the stream repeats every 64 KiB.
    """
    base = bytes((31 * j) & 0xFF for j in range(256))
    return b"".join(base.translate(bytes((b + k) & 0xFF for b in range(256))) for k in range(256))


def sha256_reference(mib: int) -> str:
    """The hex digest ``sha256.wasm <mib>`` prints, computed with hashlib."""
    block = _sha256_period_block()
    h = hashlib.sha256()
    for _ in range(mib * (1024 * 1024 // len(block))):
        h.update(block)
    return h.hexdigest()


def writer_expected(nbytes: int) -> bytes:
    """The first ``nbytes`` bytes ``writer.wasm`` writes to stdout."""
    reps = -(-nbytes // len(WRITER_PATTERN))
    return (WRITER_PATTERN * reps)[:nbytes]
