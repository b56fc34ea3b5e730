"""An OCI bundle's ``config.json``, read as a keep's workload: entry point, args, env, dirs, memory.

The entry point is the convention crun and runwasi follow: ``process.args[0]`` names a ``.wasm``
file in the rootfs, or the ``module.wasm.image/variant=compat`` annotation says it is one whatever
its name. Bind mounts of directories become preopened directories; the rootfs is preopened at
``/``. ``linux.resources.memory.limit`` caps the workload's memory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from motte.shared.errors import MotteError

VARIANT_ANNOTATION = "module.wasm.image/variant"
#: Which keep runs the container: nil, kvm or auto (the strongest this host has).
BACKEND_ANNOTATION = "motte.backend"
#: The runtime's own default backend, for a container without the annotation.
BACKEND_ENV = "MOTTE_OCI_BACKEND"
BACKENDS = ("auto", "nil", "kvm")
DEFAULT_MEMORY = 1 << 30
MIN_MEMORY = 64 << 10  # one wasm page
MAX_CONFIG_SIZE = 4 << 20
#: Mounts a Linux container gets by default; a wasm workload has no use for them.
SYSTEM_PREFIXES = ("/proc", "/sys", "/dev")


@dataclass(frozen=True)
class ContainerSpec:
    """What a bundle asks of its keep."""

    bundle: Path
    entry: Path  # the host path of the wasm module, inside the rootfs
    args: tuple[str, ...]  # the workload's arguments after its name
    env: dict[str, str]
    dirs: tuple[tuple[str, str], ...]  # (host, guest), writable
    read_only_dirs: tuple[tuple[str, str], ...]  # (host, guest)
    memory_limit: int
    backend: str  # nil, kvm or auto
    terminal: bool
    annotations: dict[str, str] = field(default_factory=dict)


def load_bundle(bundle: Path, default_backend: str | None = None) -> ContainerSpec:
    """Read and check ``bundle/config.json``."""
    import json

    from motte.outside.user_files import read_user_text

    path = bundle / "config.json"
    text = read_user_text(path, what="OCI bundle config", limit=MAX_CONFIG_SIZE,
                          hint="give the bundle directory containerd prepared")
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise MotteError(f"{path}: not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise MotteError(f"{path}: not a JSON object")
    return container_spec(config, bundle.resolve(), default_backend or os.environ.get(BACKEND_ENV) or "auto")


def is_wasm_bundle(bundle: Path) -> bool:
    """Whether the bundle's entry point is a wasm module (by the convention above); False for any
    other container, e.g. a Kubernetes pod's native pause container, which runc runs instead."""
    import json

    try:
        config = json.loads((bundle / "config.json").read_bytes()[:MAX_CONFIG_SIZE])
        args = config["process"]["args"]
        variant = (config.get("annotations") or {}).get(VARIANT_ANNOTATION)
        return variant == "compat" or str(args[0]).endswith(".wasm")
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return True  # not readable as a container at all: load_bundle says why


def container_spec(config: Mapping[str, Any], bundle: Path, default_backend: str = "auto") -> ContainerSpec:
    """The keep's workload from a parsed ``config.json`` of the bundle at ``bundle`` (absolute)."""
    annotations = _strings(config.get("annotations") or {}, "annotations")
    process = _object(config.get("process"), "process")
    args = process.get("args")
    if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
        raise MotteError("config.json: process.args must be a non-empty list of strings",
                         hint="give the image an entry point: the path of its .wasm module")
    root = _object(config.get("root"), "root")
    rootfs = bundle / str(root.get("path", "rootfs"))
    cwd = str(process.get("cwd") or "/")
    entry = _entry_point(rootfs, cwd, args[0], annotations.get(VARIANT_ANNOTATION) == "compat")
    rootfs_dir = (str(rootfs.resolve()), "/")
    writable, read_only = _mounts(config.get("mounts") or [])
    if root.get("readonly"):
        read_only = [rootfs_dir, *read_only]
    else:
        writable = [rootfs_dir, *writable]
    backend = annotations.get(BACKEND_ANNOTATION, default_backend)
    if backend not in BACKENDS:
        raise MotteError(f"config.json: annotation {BACKEND_ANNOTATION}={backend!r} is not a backend",
                         hint=f"use one of {', '.join(BACKENDS)}")
    return ContainerSpec(
        bundle=bundle,
        entry=entry,
        args=tuple(args[1:]),
        env=_environment(process.get("env") or []),
        dirs=tuple(writable),
        read_only_dirs=tuple(read_only),
        memory_limit=_memory_limit(config),
        backend=backend,
        terminal=bool(process.get("terminal")),
        annotations=annotations,
    )


def _entry_point(rootfs: Path, cwd: str, name: str, compat: bool) -> Path:
    if not compat and not name.endswith(".wasm"):
        raise MotteError(f"config.json: the entry point {name!r} is not a .wasm module",
                         hint=f"name the module's path in the image, or annotate it {VARIANT_ANNOTATION}=compat")
    guest = PurePosixPath(cwd) / name  # (an absolute name replaces cwd)
    # Resolved on the host: a symlink in the image must not lead out of the rootfs.
    root = os.path.realpath(rootfs)
    host = os.path.realpath(os.path.join(root, *guest.parts[1:]))
    if os.path.commonpath([root, host]) != root:
        raise MotteError(f"config.json: the entry point {name!r} leads out of the container's rootfs",
                         hint="use a path inside the image, without symlinks that leave it")
    return Path(host)


def _mounts(mounts: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Bind-mounted directories, as (writable, read-only) preopens."""
    if not isinstance(mounts, list):
        raise MotteError("config.json: mounts must be a list")
    writable: list[tuple[str, str]] = []
    read_only: list[tuple[str, str]] = []
    for mount in mounts:
        mount = _object(mount, "mounts[]")
        options = mount.get("options") or []
        destination = str(mount.get("destination", ""))
        source = str(mount.get("source", ""))
        is_bind = mount.get("type") == "bind" or "bind" in options or "rbind" in options
        if not is_bind or not destination.startswith("/") or destination.startswith(SYSTEM_PREFIXES):
            continue
        if not os.path.isdir(source):
            continue  # a file (resolv.conf, hosts...): WASI preopens directories only
        (read_only if "ro" in options else writable).append((os.path.realpath(source), destination))
    return writable, read_only


def _memory_limit(config: Mapping[str, Any]) -> int:
    linux = config.get("linux") or {}
    resources = linux.get("resources") or {} if isinstance(linux, dict) else {}
    memory = resources.get("memory") or {} if isinstance(resources, dict) else {}
    limit = memory.get("limit") if isinstance(memory, dict) else None
    if limit is None or (isinstance(limit, int) and limit <= 0):  # unset, or -1: no limit
        return DEFAULT_MEMORY
    if not isinstance(limit, int) or limit < MIN_MEMORY:
        raise MotteError(f"config.json: linux.resources.memory.limit {limit!r} is below one wasm page",
                         hint=f"give at least {MIN_MEMORY} bytes")
    return limit


def _environment(items: Any) -> dict[str, str]:
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise MotteError("config.json: process.env must be a list of KEY=VALUE strings")
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MotteError(f"config.json: process.env entry {item!r} is not KEY=VALUE")
        env[key] = value
    return env


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MotteError(f"config.json: {what} must be an object")
    return value


def _strings(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise MotteError(f"config.json: {what} must map strings to strings")
    return dict(value)
