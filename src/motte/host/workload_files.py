"""What a run is given, read on the host: the wasm module, its workload config (Enarx.toml), and
the check that the keep's launch message will carry them.

``motte run`` and ``motte-oci create`` both read their input here, without the command line's
machinery: ``motte-oci`` is started once per container command, so its imports count.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from motte.shared.errors import MotteError

if TYPE_CHECKING:
    from motte.host.net import HostNetwork
    from motte.host.session import RunRequest
    from motte.shared.enarx_config import WorkloadConfig

WASM_MAGIC = b"\0asm"


def read_workload(path: Path) -> bytes:
    from motte.outside.user_files import read_user_file
    from motte.shared.control import MAX_WASM_SIZE

    wasm = read_user_file(path, what="workload", limit=MAX_WASM_SIZE, hint="give the path of a .wasm workload")
    if not wasm.startswith(WASM_MAGIC):
        raise MotteError(f"{path}: not a WebAssembly module (no \\0asm header)",
                         hint="build the workload for wasm32-wasi")
    if len(wasm) < 8:
        raise MotteError(f"{path}: truncated WebAssembly module ({len(wasm)} bytes)")
    return wasm


def load_config(path: Path | None) -> WorkloadConfig:
    """The workload config in the Enarx.toml at ``path``; the default config (stdio only) for None."""
    from motte.shared.enarx_config import default_config

    if path is None:
        return default_config()  # (without loading the TOML reader: start-up counts)
    from motte.outside.enarx_toml import MAX_CONFIG_SIZE, parse_enarx_toml
    from motte.outside.user_files import read_user_text

    text = read_user_text(path, what="workload config", limit=MAX_CONFIG_SIZE, hint="give the path of an Enarx.toml")
    return parse_enarx_toml(text, source=str(path))


def plaintext_warnings(config: WorkloadConfig) -> list[str]:
    """What a run says out loud before it starts: each socket the config asks to be plaintext TCP."""
    return [f"{spec.kind} socket {spec.name!r} uses plaintext TCP, as the config asks"
            for spec in config.files if spec.kind in ("listen", "connect") and spec.prot == "tcp"]


def check_launch_fits(request: RunRequest, network: HostNetwork | None) -> None:
    """Refuse, before any keep starts, a run whose launch message would be larger than a control
    message may be. Its size is measured on the message itself, with every field the keep's
    channel fills in later (stream ids, digests, the timeout) at its widest."""
    from motte.shared.channel import MAX_CONTROL_PAYLOAD, MAX_STREAM_ID, canonical_json
    from motte.shared.control import MAX_TIMEOUT_MS, MAX_WASM_SIZE, STDIO_KINDS, Launch, LaunchStreams, LaunchTerms

    terms = LaunchTerms(
        wasm_size=MAX_WASM_SIZE, wasm_sha256="0" * 64, config=request.config, dirs=tuple(g for _, g in request.dirs),
        memory_limit=request.memory_limit, timeout_ms=None if request.timeout is None else MAX_TIMEOUT_MS,
        ca_bundles=network.ca_bundles if network is not None else {},
        steward_ca=network.steward_ca if network is not None else None,
    )
    stdio = {fd: MAX_STREAM_ID for fd, spec in enumerate(request.config.files) if spec.kind in STDIO_KINDS}
    streams = LaunchStreams(MAX_STREAM_ID, stdio, (MAX_STREAM_ID,) * len(request.dirs), request.cache_dir)
    size = len(canonical_json(Launch(terms, streams).to_message()))
    if size > MAX_CONTROL_PAYLOAD:
        raise MotteError(
            f"the workload's arguments, environment and CA bundles take {size} bytes, more than the"
            f" {MAX_CONTROL_PAYLOAD} a keep's launch may carry",
            hint="pass large data in a file (--dir) or on stdin",
        )
