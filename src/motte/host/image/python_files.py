"""The Python files of the image: which modules the keep needs, where they go, compiled how.

* motte: ``motte/__init__.py``, ``motte/keep/**`` and ``motte/shared/**``; never ``motte.host``,
  ``motte.tenant`` or ``motte.cli`` (the build fails if the keep code imports them);
* the standard-library modules the keep code imports, found by importing it in a clean
  subprocess and reading ``sys.modules`` (including imports made inside functions, which are read
  from the sources' syntax trees), plus a fixed list of modules it may import lazily;
* ``wasmtime`` and ``cryptography`` whole, and any other package the trace finds (``_cffi_backend``).

Everything goes in as sourceless ``.pyc`` files with unchecked hashes and guest paths as their
file names.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

from motte.host.image.inputs import keep_source_files, motte_root
from motte.host.image.kernel import Progress
from motte.host.image.layout import GUEST_DIR, GUEST_DYNLOAD, GUEST_SITE, GUEST_STDLIB
from motte.shared.errors import MotteError

#: The keep imports these lazily or on some paths only (TLS, attestation, config parsing, argument
#: parsing, the Steward POST). A trace of one run would miss them, so they are always in.
LAZY_STDLIB = (
    "argparse", "asyncio", "base64", "binascii", "bisect", "calendar", "collections", "concurrent.futures",
    "contextlib", "copy", "ctypes", "dataclasses", "datetime", "email.parser", "encodings.idna",
    "encodings.ascii", "encodings.latin_1", "encodings.utf_8", "enum", "errno", "fcntl", "fnmatch",
    "functools", "hashlib", "heapq", "hmac", "http.client", "io", "ipaddress", "itertools", "json",
    "logging", "math", "mmap", "operator", "os", "pathlib", "platform", "posixpath", "queue", "random",
    "re", "resource", "secrets", "select", "selectors", "shlex", "signal", "socket", "ssl", "stat",
    "string", "struct", "tempfile", "textwrap", "threading", "time", "traceback", "typing",
    "urllib.parse", "urllib.request", "uuid", "warnings", "weakref", "zlib",
)  # fmt: skip
#: Copied whole (every submodule, data files), as the engine and crypto library of the keep.
WHOLE_PACKAGES = ("wasmtime", "cryptography")
#: Top-level names the keep must never import (the trust boundary); checked after the trace.
FORBIDDEN = ("motte.host", "motte.tenant", "motte.cli", "motte.registry", "motte.steward", "motte.outside")
#: Never copied even if some package imports it: dev-only or host-only.
SKIP_TOP_LEVEL = ("_distutils_hack", "pip", "setuptools", "pkg_resources", "_pytest", "pytest")


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
    """``keep/wasi/files.py`` -> ``motte.keep.wasi.files``; ``keep/__init__.py`` -> ``motte.keep``."""
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
    traced = _run_python(_TRACE_SCRIPT, request, "tracing the keep's imports")
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
    own_root = motte_root()
    out: dict[str, Path] = {}
    whole_roots: set[Path] = set()
    for name, raw in sorted(files.items()):
        path = Path(raw).resolve()
        if name.split(".")[0] in SKIP_TOP_LEVEL or path.is_relative_to(own_root):
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
    compiled = _run_python(_COMPILE_SCRIPT, jobs, "compiling the keep's modules")
    return {guest.removesuffix(".py") + ".pyc": bytes.fromhex(data) for guest, data in compiled.items()}


def _run_python(script: str, request: object, what: str) -> Any:
    """Run ``script`` in a fresh isolated interpreter with a fixed hash seed, with ``request`` as
    JSON on its stdin; what it prints, as JSON."""
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env={"PATH": os.defpath, "PYTHONHASHSEED": "0"},
    )
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-1:] or ["no output"]
        raise MotteError(f"{what} failed: {tail[0]}")
    return json.loads(result.stdout)
