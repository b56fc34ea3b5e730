"""What the tenant deploys: a ``.wasm``, or a folder with ``main.wasm`` and ``Enarx.toml`` (the
layout of an Enarx package), with the CA bundles its config names read from that folder."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

from motte.outside.enarx_toml import parse_enarx_toml
from motte.outside.net_config import read_network_files
from motte.outside.user_files import read_user_file, read_user_text
from motte.shared.control import MAX_WASM_SIZE
from motte.shared.enarx_config import WorkloadConfig
from motte.shared.errors import MotteError

MAIN_WASM = "main.wasm"
CONFIG_NAME = "Enarx.toml"
MAX_CONFIG = 1 << 20


class PackageError(MotteError):
    """The package cannot be deployed as it is."""


class Package(NamedTuple):
    wasm: bytes
    config: WorkloadConfig
    ca_bundles: dict[int, str]  # TLS connect fd -> PEM
    steward_ca: str | None
    source: str  # what the user named, for messages
    registry_name: str | None = None  # fetched from a registry: "host/user/repo:tag" (the keep binds it)

    @property
    def wasm_sha256(self) -> str:
        return hashlib.sha256(self.wasm).hexdigest()


def load_package(path: Path) -> Package:
    """Read a package from ``path`` (a file or a folder), or fail with one line saying what is wrong."""
    if path.is_dir():
        wasm_path, config_path = path / MAIN_WASM, path / CONFIG_NAME
        if not wasm_path.is_file():
            raise PackageError(f"{path}: the package has no {MAIN_WASM}",
                               hint=f"a package folder holds {MAIN_WASM} and, optionally, {CONFIG_NAME}")
    elif path.exists():
        wasm_path, config_path = path, None
    else:
        raise PackageError(f"{path}: no such file or folder")
    wasm = read_user_file(wasm_path, what="workload", limit=MAX_WASM_SIZE, error=PackageError)
    if wasm[:4] != b"\0asm":
        raise PackageError(f"{wasm_path}: not a WebAssembly module (it does not start with \\0asm)")
    if config_path is None or not config_path.exists():
        return Package(wasm, WorkloadConfig(), {}, None, str(path))
    text = read_user_text(config_path, what="workload config", limit=MAX_CONFIG, error=PackageError)
    config = parse_enarx_toml(text, source=str(config_path))
    files = read_network_files(config, path)
    return Package(wasm, config, files.ca_bundles, files.steward_ca, str(path))
