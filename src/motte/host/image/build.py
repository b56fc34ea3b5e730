"""Build the keep image: a reproducible initramfs holding Python, wasmtime, cryptography and
motte's in-keep code, next to the pinned kernel (see :mod:`motte.host.image.kernel`).

Reproducible means: the same inputs give the same bytes, so the launch measurement of a keep can
be computed in advance and written into a verifier policy. The inputs are the kernel package, the
host's Python build, the versions of the packages copied in, motte's in-keep sources and this
builder's own sources; their SHA-256 is the image *key*, and the cache holds one image per key.
Everything else is fixed: file order, timestamps, owners and inode numbers in the cpio
(:mod:`motte.host.image.cpio`), sourceless ``.pyc`` files with unchecked hashes and guest paths
as their file names, ``strip --strip-unneeded`` output, and the LZ4 block settings.

What goes in (and only that, since it is the keep's trusted computing base):

* motte: ``motte/__init__.py``, ``motte/keep/**`` and ``motte/shared/**``; never ``motte.host``,
  ``motte.tenant`` or ``motte.cli`` (the build fails if the keep code imports them);
* the standard-library modules the keep code imports, found by importing it in a clean
  subprocess and reading ``sys.modules`` (including imports made inside functions, which are read
  from the sources' syntax trees), plus a fixed list of modules it may import lazily;
* ``wasmtime`` and ``cryptography`` whole, and any other package the trace finds (``_cffi_backend``);
* the interpreter, ``libpython`` and every shared library they need (``ldd`` closure), stripped;
* busybox (static), ``/init``, the kernel modules /init loads, and the self-test script;
* the system trust store: Mozilla's CA bundle from the pinned ``certifi`` package (never the host's
  own store, which its administrator may have added CAs to), at the default CA file of the
  OpenSSL that goes in, so ``ssl.create_default_context`` in the keep verifies against it.

Guest layout: the interpreter is ``/usr/bin/python3.11``; ``/usr/bin/python3.11._pth`` pins
``sys.path`` to ``/usr/lib/python3.11`` (+ ``lib-dynload``, ``site-packages``), which also implies
isolated mode, so nothing in the environment can redirect imports; shared libraries live in
``/usr/lib/x86_64-linux-gnu`` (the loader's default path), ``/lib64`` holds the ELF interpreter.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import motte
from motte.host.image import kernel as kernel_mod
from motte.host.image.cache import cache_root, locked
from motte.host.image.cpio import Archive
from motte.host.image.kernel import Kernel, ensure_kernel, lz4_legacy_compress
from motte.shared.errors import MotteError
from motte.shared.vm_port import PORT_NAME

Progress = Callable[[str], None]

#: Bumped when the image layout changes in a way the hashed sources do not show.
FORMAT = 1
PY = f"{sys.version_info.major}.{sys.version_info.minor}"
GUEST_STDLIB = f"usr/lib/python{PY}"
GUEST_DYNLOAD = f"{GUEST_STDLIB}/lib-dynload"
GUEST_SITE = f"{GUEST_STDLIB}/site-packages"
GUEST_LIBDIR = "usr/lib/x86_64-linux-gnu"
GUEST_PYTHON = f"usr/bin/python{PY}"
LZ4_LEVEL = 9  # lz4 HC: 2-3x smaller than the fast mode and decompressed just as fast

#: The keep imports these lazily or on some paths only (TLS, attestation, config parsing, argument
#: parsing, the Steward POST). A trace of one run would miss them (the VM notes record a missing
#: hashlib), so they are always in.
LAZY_STDLIB = (
    "argparse", "asyncio", "base64", "binascii", "bisect", "calendar", "collections", "concurrent.futures",
    "contextlib", "copy", "ctypes", "dataclasses", "datetime", "email.parser", "encodings.idna",
    "encodings.ascii", "encodings.latin_1", "encodings.utf_8", "enum", "errno", "fcntl", "fnmatch",
    "functools", "hashlib", "heapq", "hmac", "http.client", "io", "ipaddress", "itertools", "json",
    "logging", "math", "mmap", "operator", "os", "pathlib", "platform", "posixpath", "queue", "random",
    "re", "resource", "secrets", "select", "selectors", "shlex", "signal", "socket", "ssl", "stat",
    "string", "struct", "tempfile", "textwrap", "threading", "time", "tomllib", "traceback", "typing",
    "urllib.parse", "urllib.request", "uuid", "warnings", "weakref", "zlib",
)  # fmt: skip
#: Copied whole (every submodule, data files), as the engine and crypto library of the keep.
WHOLE_PACKAGES = ("wasmtime", "cryptography")
#: Top-level names the keep must never import (the trust boundary); checked after the trace.
FORBIDDEN = ("motte.host", "motte.tenant", "motte.cli")
#: Never copied even if some package imports it: dev-only or host-only.
SKIP_TOP_LEVEL = ("_distutils_hack", "pip", "setuptools", "pkg_resources", "_pytest", "pytest")
BUSYBOX_APPLETS = ("sh", "mount", "insmod", "reboot", "poweroff", "sleep", "cat", "ls", "dmesg", "grep")

GUEST_DIR = Path(__file__).parent / "guest"


# ---- inputs and key -------------------------------------------------------------------------


def _motte_root() -> Path:
    return Path(motte.__file__).resolve().parent


def keep_source_files() -> list[tuple[str, Path]]:
    """``(path inside the motte package, host path)`` of every file of motte that goes in."""
    root = _motte_root()
    files = [("__init__.py", root / "__init__.py")]
    for sub in ("keep", "shared"):
        for path in sorted((root / sub).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.append((path.relative_to(root).as_posix(), path))
    return files


def _builder_files() -> list[Path]:
    here = Path(__file__).parent
    return sorted([*here.glob("*.py"), *(p for p in GUEST_DIR.iterdir() if p.is_file())])


def _dist_version(name: str) -> str | None:
    """The installed version of a distribution, from the name of its ``.dist-info`` directory on
    ``sys.path`` (the first one wins, as in importlib.metadata, which costs 12 ms to import on
    every launch); importlib.metadata only for other layouts (``.egg-info``)."""
    prefix = f"{name.replace('-', '_').lower()}-"
    for entry in sys.path:
        try:
            items = os.listdir(entry or ".")
        except OSError:
            continue
        for item in items:
            if item.endswith(".dist-info") and item.lower().startswith(prefix):
                return item[len(prefix) : -len(".dist-info")]
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def image_inputs() -> dict[str, Any]:
    """Everything the image bytes depend on, as a JSON-able dict. Cheap: read on every launch."""

    def digest(files: Iterable[tuple[str, Path]]) -> str:
        h = hashlib.sha256()
        for name, path in files:
            data = path.read_bytes()
            h.update(f"{name}\0{len(data)}\0".encode())
            h.update(data)
        return h.hexdigest()

    return {
        "format": FORMAT,
        "kernel": {"package": kernel_mod.PIN.package, "version": kernel_mod.PIN.version,
                   "sha256": kernel_mod.PIN.sha256},
        # The interpreter binary is a small launcher; libpython holds the interpreter proper.
        "python": {"version": sys.version, "binaries": {p.name: _known_sha256(p) for p in _python_binaries()}},
        "packages": {name: _dist_version(name) for name in ("wasmtime", "cryptography", "cffi")},
        "motte_keep_sources": digest(keep_source_files()),
        "builder_sources": digest((p.name, p) for p in _builder_files()),
        "busybox": _busybox_identity(),
        "ca_bundle": _ca_bundle_identity(),
    }  # fmt: skip


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _known_sha256(path: Path) -> str:
    """``_file_sha256`` of a large input that rarely changes (libpython, busybox: 25 ms to hash on
    every launch), remembered by the file's size, inode, mtime and ctime. The ctime cannot be set
    from user space, so a changed file is never taken for the one that was hashed."""
    info = path.stat()
    identity = [info.st_size, info.st_ino, info.st_mtime_ns, info.st_ctime_ns]
    memo = images_root() / ".digests.json"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    entry = known.get(str(path)) if isinstance(known, dict) else None
    if isinstance(entry, dict) and entry.get("identity") == identity:
        return str(entry["sha256"])
    digest = _file_sha256(path)
    if time.time_ns() - info.st_ctime_ns < 2 * 10**9:
        return digest  # changed moments ago: it could change again within the same clock tick
    known = known if isinstance(known, dict) else {}
    known[str(path)] = {"identity": identity, "sha256": digest}
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        temporary = memo.with_name(f"{memo.name}.{os.getpid()}")
        temporary.write_text(json.dumps(known, sort_keys=True) + "\n")
        temporary.replace(memo)
    except OSError:
        pass  # only a cache
    return digest


def _python_binaries() -> list[Path]:
    python = Path(os.path.realpath(sys.executable))
    binaries = [python]
    libdir, library = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and library and os.path.exists(os.path.join(libdir, library)):
        binaries.append(Path(os.path.realpath(os.path.join(libdir, library))))
    return binaries


def image_key(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _busybox_path() -> Path:
    for candidate in ("/usr/bin/busybox", "/bin/busybox"):
        if os.path.exists(candidate):
            return Path(os.path.realpath(candidate))
    raise MotteError("busybox is needed to build the keep image", hint="apt-get install busybox-static")


def _busybox_identity() -> str:
    try:
        path = _busybox_path()
    except MotteError:
        return "missing"
    return _known_sha256(path)


#: The distribution whose CA bundle is the keep's system trust store, and the file in it.
CA_BUNDLE_PACKAGE = "certifi"
CA_BUNDLE_FILE = "cacert.pem"


def ca_bundle_path() -> Path:
    """The CA bundle that goes into the image, found without importing its package."""
    import importlib.util

    spec = importlib.util.find_spec(CA_BUNDLE_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / CA_BUNDLE_FILE
        if path.is_file():
            return path
    raise MotteError(f"the keep image needs the CA bundle of the {CA_BUNDLE_PACKAGE} package, which is not installed",
                     hint=f"run dev/setup, or pip install {CA_BUNDLE_PACKAGE} (the version pyproject.toml pins)")


def _ca_bundle_identity() -> dict[str, str | None] | str:
    try:
        path = ca_bundle_path()
    except MotteError:
        return "missing"
    return {"package": CA_BUNDLE_PACKAGE, "version": _dist_version(CA_BUNDLE_PACKAGE), "sha256": _known_sha256(path)}


def guest_ca_file() -> str:
    """Where the keep's OpenSSL looks for its default CA file (``OPENSSLDIR/cert.pem``; on Debian
    ``/usr/lib/ssl/cert.pem``), as a path in the image. It is the host's OpenSSL that goes in
    (the ``ldd`` closure of ``_ssl``), so the host's compiled-in default is the guest's."""
    import ssl

    default = ssl.get_default_verify_paths().openssl_cafile
    if not default or not default.startswith("/"):
        raise MotteError(f"OpenSSL has no usable default CA file path: {default!r}")
    path = default.lstrip("/")
    if path.startswith(("bin/", "lib/")):
        path = f"usr/{path}"  # merged /usr: /bin and /lib are links into /usr in the image
    return path


# ---- the image on disk ----------------------------------------------------------------------


@dataclass(frozen=True)
class KeepImage:
    key: str
    directory: Path
    kernel: Kernel
    initrd: Path
    manifest: dict[str, Any] = field(repr=False)

    @property
    def vmlinux(self) -> Path:
        return self.kernel.vmlinux

    def cmdline(self, mode: str | None = None, console: bool = False) -> str:
        return kernel_cmdline(mode, console)


def kernel_cmdline(mode: str | None = None, console: bool = False) -> str:
    """The guest kernel command line; part of the launch measurement, so fixed and explicit.

    ``panic=-1`` turns a guest panic into a reset (QEMU exits at once instead of hanging until the
    watchdog); ``printk.devkmsg=on`` keeps the keep's diagnostics that /init sends to /dev/kmsg.
    """
    words = ["console=ttyS0" if console else "quiet", "panic=-1", "printk.devkmsg=on"]
    if mode:
        words.append(f"MOTTE_MODE={mode}")
    return " ".join(words)


def images_root() -> Path:
    return cache_root() / "image"


def cached_image(key: str | None = None) -> KeepImage | None:
    """The cached image for the current inputs (or ``key``), if it exists; no building."""
    key = key or image_key(image_inputs())
    return _load_image(images_root() / key[:24], key)


def _load_image(directory: Path, key: str) -> KeepImage | None:
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("key") != key:
        return None
    kernel = kernel_mod.cached_kernel()
    initrd = directory / "keep.cpio.lz4"
    if kernel is None or not initrd.is_file():
        return None
    return KeepImage(key, directory, kernel, initrd, manifest)


def ensure_image(progress: Progress | None = None, *, force: bool = False) -> KeepImage:
    """The keep image for the current inputs, building it if the cache has none."""
    say = progress or (lambda _message: None)
    inputs = image_inputs()
    key = image_key(inputs)
    directory = images_root() / key[:24]
    if not force:
        image = _load_image(directory, key)
        if image is not None:
            return image
    kernel = ensure_kernel(say)
    with locked(images_root() / ".build.lock"):
        if not force:
            image = _load_image(directory, key)
            if image is not None:
                return image
        staging = Path(tempfile.mkdtemp(prefix=".build-", dir=images_root()))
        try:
            build_into(staging, kernel, inputs, say)
            staging.chmod(0o755)
            if directory.exists():
                shutil.rmtree(directory)
            staging.rename(directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _prune(keep=directory)
    image = _load_image(directory, key)
    assert image is not None
    return image


def _prune(keep: Path, retain: int = 3) -> None:
    """Drop old images (other keys) beyond the newest ``retain``: each is 25-30 MB."""
    others = [p for p in images_root().iterdir() if p.is_dir() and p != keep and not p.name.startswith(".")]
    others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in others[retain - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


def build_into(out: Path, kernel: Kernel, inputs: dict[str, Any], say: Progress) -> dict[str, Any]:
    """Build ``keep.cpio.lz4`` and ``manifest.json`` into the directory ``out``."""
    started = time.monotonic()
    archive = build_archive(kernel, say)
    say(f"writing the cpio archive ({len(archive)} entries)")
    cpio = archive.to_bytes()
    say(f"compressing {len(cpio) / 1e6:.1f} MB with lz4 (legacy format, level {LZ4_LEVEL})")
    compressed = lz4_legacy_compress(cpio, LZ4_LEVEL)
    (out / "keep.cpio.lz4").write_bytes(compressed)
    key = image_key(inputs)
    manifest = {
        "key": key,
        "inputs": inputs,
        "kernel": {"release": kernel.pin.release, "vmlinux_sha256": kernel.vmlinux_sha256,
                   "modules": [m.name for m in kernel.modules]},
        "initrd": {"file": "keep.cpio.lz4", "size": len(compressed), "cpio_size": len(cpio),
                   "entries": len(archive), "sha256": hashlib.sha256(compressed).hexdigest(),
                   "sha384": hashlib.sha384(compressed).hexdigest()},
        "cmdline": kernel_cmdline(),
        "build_seconds": round(time.monotonic() - started, 2),
    }  # fmt: skip
    # Written last: its presence (with the right key) marks a complete image.
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


# ---- the archive ----------------------------------------------------------------------------


def build_archive(kernel: Kernel, say: Progress) -> Archive:
    archive = Archive()
    _add_skeleton(archive)
    say("tracing the modules the keep runtime imports")
    files = trace_python_files(say)
    sources: dict[str, Path] = {}  # guest .py path -> host source
    binaries: dict[str, Path] = {}  # guest path -> host ELF
    for guest, host in sorted(files.items()):
        if guest.endswith(".py"):
            sources[guest] = host
        elif _is_elf(host):
            binaries[guest] = host
        else:
            archive.add_file(guest, host.read_bytes(), 0o644)
    say(f"compiling {len(sources)} modules to sourceless .pyc")
    for guest, data in compile_sources(sources).items():
        archive.add_file(guest, data, 0o644)
    python = Path(os.path.realpath(sys.executable))
    binaries[GUEST_PYTHON] = python
    say(f"stripping {len(binaries)} binaries and resolving their shared libraries")
    libraries: dict[str, Path] = {}
    for _guest, host in sorted(binaries.items()):
        libraries.update(_shared_libraries(host))
    for soname, host in sorted(libraries.items()):
        if soname.startswith("ld-linux"):
            binaries[f"{GUEST_LIBDIR}/{soname}"] = host
            archive.add_symlink(f"lib64/{soname}", f"/{GUEST_LIBDIR}/{soname}")
        else:
            binaries[f"{GUEST_LIBDIR}/{soname}"] = host
    for guest, data in strip_all(binaries).items():
        archive.add_file(guest, data, 0o755)
    archive.add_symlink(f"usr/bin/python{sys.version_info.major}", f"python{PY}")
    # Pins sys.path (and implies -I -S): see the module docstring.
    pth = "\n".join([f"/{GUEST_STDLIB}", f"/{GUEST_DYNLOAD}", f"/{GUEST_SITE}"]) + "\n"
    archive.add_file(f"{GUEST_PYTHON}._pth", pth.encode(), 0o644)
    say("adding busybox, /init and the kernel modules")
    busybox = _busybox_path()
    if _elf_interpreter(busybox.read_bytes()) is not None:
        raise MotteError(f"{busybox} is dynamically linked", hint="apt-get install busybox-static")
    archive.add_file("usr/bin/busybox", busybox.read_bytes(), 0o755)
    for applet in BUSYBOX_APPLETS:
        archive.add_symlink(f"usr/bin/{applet}", "busybox")
    for module in kernel.modules:
        archive.add_file(f"usr/lib/modules/{module.name}.ko", module.path.read_bytes(), 0o644)
    archive.add_file("init", render_init(kernel).encode(), 0o755)
    say("adding the system trust store")
    archive.add_file(guest_ca_file(), ca_bundle_path().read_bytes(), 0o644)
    return archive


def _add_skeleton(archive: Archive) -> None:
    for directory in ("dev", "proc", "sys", "run", "usr/bin", "usr/lib", GUEST_LIBDIR, "lib64"):
        archive.add_dir(directory)
    archive.add_dir("tmp", 0o1777)
    # merged /usr, as on Debian: "#!/bin/sh" and "/lib/..." paths resolve
    archive.add_symlink("bin", "usr/bin")
    archive.add_symlink("lib", "usr/lib")
    # The kernel opens /dev/console for init before /init mounts devtmpfs over /dev.
    archive.add_chardev("dev/console", 5, 1, 0o600)
    archive.add_file("etc/hostname", b"keep\n")


def render_init(kernel: Kernel) -> str:
    template = (GUEST_DIR / "init.sh").read_text()
    required = " ".join(m.name for m in kernel.modules if not m.optional)
    optional = " ".join(m.name for m in kernel.modules if m.optional)
    return (template.replace("@MODULES@", required).replace("@OPTIONAL_MODULES@", optional)
            .replace("@PORT_NAME@", PORT_NAME))


# ---- tracing --------------------------------------------------------------------------------

_TRACE_SCRIPT = r"""
import importlib, json, pkgutil, sys
request = json.loads(sys.stdin.read())
sys.path[:] = request["path"]
failed = {}
def attempt(name):
    try:
        importlib.import_module(name)
    except Exception as exc:  # a module that cannot import on this host is reported, not fatal
        failed[name] = f"{type(exc).__name__}: {exc}"
for name in request["modules"]:
    attempt(name)
for package in request["whole"]:
    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        attempt(info.name)
files = {}
for name, module in list(sys.modules.items()):
    path = getattr(module, "__file__", None)
    if path:
        files[name] = path
json.dump({"files": files, "failed": failed}, sys.stdout)
"""


def _module_name(rel: str) -> str:
    """``keep/wasi/abi.py`` -> ``motte.keep.wasi.abi``; ``keep/__init__.py`` -> ``motte.keep``."""
    parts = ["motte", *rel.removesuffix(".py").split("/")]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports_of(source: Path, module: str) -> tuple[set[str], set[str]]:
    """Modules a source file imports, including inside functions (lazy imports).

    Returns ``(modules, maybe_modules)``: for ``from x import y``, ``x.y`` may be a submodule or
    just an attribute, so failing to import it is no error.
    """
    tree = ast.parse(source.read_bytes(), filename=str(source))
    package = module if source.name == "__init__.py" else module.rpartition(".")[0]
    modules: set[str] = set()
    maybe: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            modules.add(target)
            maybe.update(f"{target}.{alias.name}" for alias in node.names if alias.name != "*")
    return modules, maybe - modules


def trace_python_files(say: Progress | None = None) -> dict[str, Path]:
    """Map guest path -> host file for every Python file the keep needs."""
    motte_files = keep_source_files()
    wanted: set[str] = set(LAZY_STDLIB)
    maybe: set[str] = set()
    own: set[str] = set()  # motte's keep modules that exist: each must import
    for rel, path in motte_files:
        if path.suffix != ".py":
            continue
        module = _module_name(rel)
        found, optional = _imports_of(path, module)
        wanted |= found
        maybe |= optional
        if path.name != "__main__.py":  # importing __main__ would run the keep
            wanted.add(module)
            own.add(module)
    maybe -= wanted
    forbidden = sorted(w for w in wanted | maybe if w.startswith(FORBIDDEN))
    if forbidden:
        raise MotteError(
            f"the keep code imports host-side modules: {', '.join(forbidden)}",
            hint="code in motte.keep and motte.shared may not import motte.host, motte.tenant or motte.cli",
        )
    host_path = [p for p in sys.path if p and os.path.isdir(p)]
    request = {"path": host_path, "modules": sorted(wanted) + sorted(maybe), "whole": list(WHOLE_PACKAGES)}
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _TRACE_SCRIPT],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env={"PATH": os.defpath, "PYTHONHASHSEED": "0"},
    )
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-1:] or ["no output"]
        raise MotteError(f"tracing the keep's imports failed: {tail[0]}")
    traced = json.loads(result.stdout)
    unresolved = _check_trace(traced, wanted, own)
    if unresolved and say:
        say(f"warning: imports that do not resolve on the host, left out: {', '.join(unresolved)}")
    return _classify(traced["files"], motte_files)


def _check_trace(traced: dict[str, Any], wanted: set[str], own: set[str]) -> list[str]:
    """Fail on what would break the keep; return the other imports that did not resolve."""
    leaked = sorted(name for name in traced["files"] if name.startswith(FORBIDDEN))
    if leaked:
        raise MotteError(f"the keep code pulls in host-side modules: {', '.join(leaked)}")
    unresolved = []
    for name, error in sorted(traced["failed"].items()):
        if name in own or name in LAZY_STDLIB:
            raise MotteError(f"module {name}, which the keep needs, does not import on the host: {error}")
        if name in wanted:
            # An import inside a function, or behind ``try/except ImportError``: the keep fails
            # only if that path runs, as it would on the host.
            unresolved.append(name)
    return unresolved


def _classify(files: dict[str, str], motte_files: list[tuple[str, Path]]) -> dict[str, Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    dynload = stdlib / "lib-dynload"
    site_dirs = sorted({Path(p).resolve() for p in sys.path if p.endswith("site-packages")}, key=str)
    motte_root = _motte_root()
    out: dict[str, Path] = {}
    whole_roots: set[Path] = set()
    for name, raw in sorted(files.items()):
        path = Path(raw).resolve()
        if name.split(".")[0] in SKIP_TOP_LEVEL or path.is_relative_to(motte_root):
            continue  # motte is added from its file list below, to include exactly keep + shared
        if path.is_relative_to(dynload):
            out[f"{GUEST_DYNLOAD}/{path.relative_to(dynload).as_posix()}"] = path
        elif path.is_relative_to(stdlib) and "site-packages" not in path.parts:
            out[f"{GUEST_STDLIB}/{path.relative_to(stdlib).as_posix()}"] = path
        else:
            site = next((s for s in site_dirs if path.is_relative_to(s)), None)
            if site is None:
                raise MotteError(f"module {name} lives outside the interpreter and site-packages: {path}")
            rel = path.relative_to(site)
            if len(rel.parts) == 1:
                out[f"{GUEST_SITE}/{rel.as_posix()}"] = path  # a top-level module (_cffi_backend)
            else:
                whole_roots.add(site / rel.parts[0])
    # Packages from site-packages go in whole: their data files (wasmtime's _libwasmtime.so) and
    # lazily imported submodules come along.
    for root in sorted(whole_roots):
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyi"):
                out[f"{GUEST_SITE}/{path.relative_to(root.parent).as_posix()}"] = path
    for motte_rel, motte_path in motte_files:
        out[f"{GUEST_SITE}/motte/{motte_rel}"] = motte_path
    out["usr/lib/motte/selftest.py"] = GUEST_DIR / "selftest.py"
    # getpath's landmark for the standard library (os is frozen, so the trace may not list it).
    out.setdefault(f"{GUEST_STDLIB}/os.py", stdlib / "os.py")
    return out


# ---- compiling ------------------------------------------------------------------------------

_COMPILE_SCRIPT = r"""
import importlib.util, json, marshal, sys
jobs = json.loads(sys.stdin.read())
out = {}
for guest, host in jobs:
    source = open(host, "rb").read()
    code = compile(source, "/" + guest, "exec", dont_inherit=True, optimize=0)
    data = importlib.util.MAGIC_NUMBER + (1).to_bytes(4, "little") + importlib.util.source_hash(source)
    out[guest] = (data + marshal.dumps(code)).hex()
json.dump(out, sys.stdout)
"""


def compile_sources(sources: dict[str, Path]) -> dict[str, bytes]:
    """Compile to sourceless ``.pyc`` (PEP 552 hash-based, unchecked: no mtime, no source needed).

    Done in one fresh interpreter with a fixed hash seed and a sorted job list: ``marshal`` output
    depends on object reference counts and set order, which are then the same on every build.
    The code objects carry the guest path, so tracebacks in the keep name its own files.
    """
    jobs = [(guest, str(host)) for guest, host in sorted(sources.items())]
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _COMPILE_SCRIPT],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        env={"PATH": os.defpath, "PYTHONHASHSEED": "0"},
    )
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-1:] or ["no output"]
        raise MotteError(f"compiling the keep's modules failed: {tail[0]}")
    compiled = json.loads(result.stdout)
    return {guest.removesuffix(".py") + ".pyc": bytes.fromhex(data) for guest, data in compiled.items()}


# ---- binaries -------------------------------------------------------------------------------


def _is_elf(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) == b"\x7fELF"


def _elf_interpreter(data: bytes) -> str | None:
    import struct

    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        p_type, _flags, p_offset, _v, _p, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 3:  # PT_INTERP
            return data[p_offset : p_offset + p_filesz].rstrip(b"\0").decode()
    return None


def _shared_libraries(binary: Path) -> dict[str, Path]:
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
