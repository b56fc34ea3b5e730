"""An OCI bundle's ``config.json``, read as a keep's workload: entry point, args, env, dirs, memory.

The entry point is the convention crun and runwasi follow: ``process.args[0]`` names a ``.wasm``
file in the rootfs, or the ``module.wasm.image/variant=compat`` annotation says it is one whatever
its name. Bind mounts of directories become preopened directories; the rootfs is preopened at
``/``. ``linux.resources.memory.limit`` caps the workload's memory.

The workload config (its sockets, as ``motte run --wasmcfgfile`` takes them) is motte's own
convention, which crun and runwasi have no equivalent of: the file the ``motte.wasmcfgfile``
annotation names in the rootfs, or else an ``Enarx.toml`` beside the entry point. The host reads it
(as it reads ``--wasmcfgfile``); the paths it names must stay inside the rootfs. The network
namespace is ``linux.namespaces``' ``network`` entry: a path to join, a new one, or (no entry) the
host's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from motte.shared.errors import MotteError

if TYPE_CHECKING:
    from motte.shared.enarx_config import WorkloadConfig

VARIANT_ANNOTATION = "module.wasm.image/variant"
#: Which keep runs the container: nil, kvm or auto (the strongest this host has).
BACKEND_ANNOTATION = "motte.backend"
#: The runtime's own default backend, for a container without the annotation.
BACKEND_ENV = "MOTTE_OCI_BACKEND"
BACKENDS = ("auto", "nil", "kvm")
#: A path in the rootfs of the workload's config (Enarx.toml); absolute, or relative to process.cwd.
CONFIG_ANNOTATION = "motte.wasmcfgfile"
#: The workload config looked for beside the entry point when no annotation names one.
CONFIG_NAME = "Enarx.toml"
DEFAULT_MEMORY = 1 << 30
MIN_MEMORY = 64 << 10  # one wasm page
MAX_CONFIG_SIZE = 4 << 20
#: Mounts a Linux container gets by default; a wasm workload has no use for them.
SYSTEM_PREFIXES = ("/proc", "/sys", "/dev")


@dataclass(frozen=True)
class ContainerSpec:
    """What a bundle asks of its keep."""

    bundle: Path
    rootfs: Path  # resolved: the paths the workload config names stay inside it
    entry: Path  # the host path of the wasm module, inside the rootfs
    args: tuple[str, ...]  # the workload's arguments after its name
    env: dict[str, str]
    dirs: tuple[tuple[str, str], ...]  # (host, guest), writable
    read_only_dirs: tuple[tuple[str, str], ...]  # (host, guest)
    memory_limit: int
    backend: str  # nil, kvm or auto
    terminal: bool
    annotations: dict[str, str] = field(default_factory=dict)
    config_file: Path | None = None  # the host path of the workload config, inside the rootfs
    # config.json's network namespace: None, none asked for (the host's); "" a new one; else the path to join.
    network_namespace: str | None = None


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
    config_file = _config_file(rootfs, cwd, entry, annotations.get(CONFIG_ANNOTATION))
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
        rootfs=Path(os.path.realpath(rootfs)),
        entry=entry,
        args=tuple(args[1:]),
        env=_environment(process.get("env") or []),
        dirs=tuple(writable),
        read_only_dirs=tuple(read_only),
        memory_limit=_memory_limit(config),
        backend=backend,
        terminal=bool(process.get("terminal")),
        annotations=annotations,
        config_file=config_file,
        network_namespace=_network_namespace(config.get("linux") or {}),
    )


def _entry_point(rootfs: Path, cwd: str, name: str, compat: bool) -> Path:
    if not compat and not name.endswith(".wasm"):
        raise MotteError(f"config.json: the entry point {name!r} is not a .wasm module",
                         hint=f"name the module's path in the image, or annotate it {VARIANT_ANNOTATION}=compat")
    return _in_rootfs(rootfs, cwd, name, "the entry point")


def _in_rootfs(rootfs: Path, cwd: str, name: str, what: str) -> Path:
    """The host path of ``name`` in the container (relative to ``cwd``), which must stay in the rootfs."""
    guest = PurePosixPath(cwd) / name  # (an absolute name replaces cwd)
    # Resolved on the host: a symlink in the image must not lead out of the rootfs.
    root = os.path.realpath(rootfs)
    host = os.path.realpath(os.path.join(root, *guest.parts[1:]))
    if os.path.commonpath([root, host]) != root:
        raise MotteError(f"config.json: {what} {name!r} leads out of the container's rootfs",
                         hint="use a path inside the image, without symlinks that leave it")
    return Path(host)


def _config_file(rootfs: Path, cwd: str, entry: Path, named: str | None) -> Path | None:
    if named is None:
        beside = entry.parent / CONFIG_NAME
        return beside if beside.is_file() else None
    path = _in_rootfs(rootfs, cwd, named, f"the workload config ({CONFIG_ANNOTATION})")
    if not path.is_file():
        raise MotteError(f"config.json: annotation {CONFIG_ANNOTATION}={named!r}: no such file in the image",
                         hint="name the Enarx.toml's path in the image")
    return path


def workload_config(spec: ContainerSpec) -> WorkloadConfig:
    """The image's workload config (the default, stdio only, if it has none), with the container's
    arguments after its own and the container's environment over its own."""
    from motte.host.workload_files import load_config

    config = load_config(spec.config_file)
    if spec.config_file is not None:
        _check_config_paths(config, spec.config_file, spec.rootfs)
    return config.with_extra(args=spec.args, env=spec.env)


def _check_config_paths(config: WorkloadConfig, config_file: Path, rootfs: Path) -> None:
    """Refuse a workload config that names a file (a CA bundle) outside the rootfs: the image is
    the tenant's, the host's files are not (motte-oci reads them as root)."""
    names = [("steward_ca", config.steward_ca)]
    names += [(f"files[{fd}].ca", file.ca) for fd, file in enumerate(config.files)]
    for what, name in names:
        if name is None:
            continue
        if os.path.isabs(name):
            raise MotteError(f"{config_file}: {what} {name!r}: in an image, name it relative to the Enarx.toml",
                             hint="the host would read an absolute path outside the image")
        host = os.path.realpath(config_file.parent / name)
        if os.path.commonpath([str(rootfs), host]) != str(rootfs):
            raise MotteError(f"{config_file}: {what} {name!r} leads out of the container's rootfs",
                             hint="use a path inside the image, without symlinks that leave it")


def _network_namespace(linux: Any) -> str | None:
    namespaces = _object(linux, "linux").get("namespaces") or []
    if not isinstance(namespaces, list):
        raise MotteError("config.json: linux.namespaces must be a list")
    for namespace in namespaces:
        namespace = _object(namespace, "linux.namespaces[]")
        if namespace.get("type") != "network":
            continue
        path = namespace.get("path") or ""
        if not isinstance(path, str) or (path and not path.startswith("/")):
            raise MotteError(f"config.json: the network namespace path {path!r} is not an absolute path")
        return path
    return None


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
