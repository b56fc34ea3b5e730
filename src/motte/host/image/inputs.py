"""Everything the image bytes depend on, and the image key: the SHA-256 of all of it.

The inputs are the kernel package, the host's Python build, the versions of the packages copied
in, motte's in-keep sources, this builder's own sources, busybox and the CA bundle. Cheap enough
to compute on every launch: large files are hashed once per version.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import motte
from motte.host.image import kernel as kernel_mod
from motte.host.image.cache import images_root
from motte.host.image.layout import GUEST_DIR
from motte.shared.errors import MotteError

#: Bumped when the image layout changes in a way the hashed sources do not show.
FORMAT = 1
#: The distribution whose CA bundle is the keep's system trust store, and the file in it.
CA_BUNDLE_PACKAGE = "certifi"
CA_BUNDLE_FILE = "cacert.pem"


def motte_root() -> Path:
    return Path(motte.__file__).resolve().parent


def keep_source_files() -> list[tuple[str, Path]]:
    """``(path inside the motte package, host path)`` of every file of motte that goes in."""
    root = motte_root()
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


def _known_sha256(path: Path) -> str:
    """The SHA-256 of a large input that rarely changes (libpython, busybox: 25 ms to hash on
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
    digest = kernel_mod.sha256_file(path)
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


def busybox_path() -> Path:
    for candidate in ("/usr/bin/busybox", "/bin/busybox"):
        if os.path.exists(candidate):
            return Path(os.path.realpath(candidate))
    raise MotteError("busybox is needed to build the keep image", hint="apt-get install busybox-static")


def _busybox_identity() -> str:
    try:
        path = busybox_path()
    except MotteError:
        return "missing"
    return _known_sha256(path)


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
