"""``motte run``: run a local WebAssembly workload in a keep."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from motte.shared.errors import MotteError
from motte.shared.printable import printable

if TYPE_CHECKING:
    from motte.host.backends.base import Backend, KeepHandle, LaunchSpec

SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
MIN_TIMEOUT = 0.001  # the keep counts its deadline in whole milliseconds
MAX_TIMEOUT = 365 * 24 * 3600  # a year: beyond any real deadline, well within what a thread can wait for


def parse_size(text: str) -> int:
    """``1073741824``, ``512M``, ``512MiB``, ``1G``, ``1GiB`` -> bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)(i?[bB])?\s*", text)
    if not match:
        raise click.BadParameter(f"{text!r} is not a size (examples: 64M, 512MiB, 1G)")
    return int(match.group(1)) * SIZE_UNITS[match.group(2).lower()]


def parse_env(values: tuple[str, ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--env")
        env[key] = value
    return env


def parse_dirs(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    dirs = []
    for item in values:
        host, sep, guest = item.partition("::")
        guest = guest if sep else host
        if not host or not guest:
            raise click.BadParameter(f"{item!r} is not HOST_DIR[::GUEST_DIR]", param_hint="--dir")
        path = Path(host)
        if not path.is_dir():
            raise MotteError(f"--dir {item}: {host} is not a directory", hint="create it or fix the path")
        dirs.append((str(path.resolve()), guest))
    return tuple(dirs)


def parse_timeout(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """``--timeout``: a finite number of seconds the keep can wait for (no NaN, infinity, 0 or less)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not MIN_TIMEOUT <= seconds <= MAX_TIMEOUT:  # (false for NaN)
        raise click.BadParameter(f"{value!r} is not a number of seconds from {MIN_TIMEOUT} to {MAX_TIMEOUT}"
                                 " (a year)", ctx, param)
    return seconds


def _launch(backend: Backend, spec: LaunchSpec) -> KeepHandle:
    """Start the keep; on a terminal, show what it is doing (a first VM keep builds its image)."""
    if not sys.stderr.isatty():
        return backend.launch(spec)
    from rich.console import Console

    with Console(stderr=True).status(f"starting a {backend.name} keep...") as status:
        return backend.launch(spec, lambda message: status.update(f"{message}..."))


def default_backend() -> str:
    from motte.host.platform import strongest_backend

    return strongest_backend()


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("wasm", type=click.Path(path_type=Path, dir_okay=True))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--backend", type=click.Choice(["auto", "nil", "kvm"]), default="auto", show_default=True,
              help="Where the keep runs. auto picks the strongest this host supports (see 'motte platform info').")
@click.option("--wasmcfgfile", type=click.Path(path_type=Path), help="Workload config (Enarx.toml).")
@click.option("--env", "env", multiple=True, metavar="KEY=VALUE", help="Add to the workload's environment.")
@click.option("--dir", "dirs", multiple=True, metavar="HOST[::GUEST]", help="Preopen a host directory.")
@click.option("--max-memory", default="1G", show_default=True, metavar="SIZE",
              help="Cap on the workload's linear memory (e.g. 64M, 1G).")
@click.option("--timeout", callback=parse_timeout, metavar="SECONDS",
              help=f"Wall-clock deadline for the workload ({MIN_TIMEOUT} to {MAX_TIMEOUT} s).")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto", show_default=True,
              help="Accelerator for the kvm backend.")
@click.option("--no-cache", is_flag=True, help="Compile the module afresh; do not use the module cache.")
def run(wasm: Path, args: tuple[str, ...], backend: str, wasmcfgfile: Path | None, env: tuple[str, ...],
        dirs: tuple[str, ...], max_memory: str, timeout: float | None, accel: str, no_cache: bool) -> None:
    """Run the WebAssembly (WASI) workload WASM in a keep.

    WASM may also be a Python program: a .py file, or a folder with a main.py. It runs on a pinned
    CPython build, its folder read-only at /app (see docs/python.md).

    Arguments after WASM (use -- before any that start with a dash) are passed to the workload,
    after those in the config file. The workload's exit status becomes motte's. motte's own
    statuses: 124 deadline passed, 125 motte error, 134 trap, 137 memory limit reached.

    \b
    Examples:
      motte run hello.wasm
      motte run --backend nil --wasmcfgfile Enarx.toml app.wasm -- --flag value
      motte run --env KEY=VALUE --dir ./data::/data app.wasm -- args
      motte run app.py -- args
    """
    from motte.host.backends import get_backend
    from motte.host.backends.base import LaunchSpec
    from motte.host.paths import module_cache_dir
    from motte.host.python_runtime import check_guest_paths, check_interpreter, interpreter, python_program
    from motte.host.session import RunRequest, prepare_network, run_workload
    from motte.host.workload_files import check_launch_fits, load_config, plaintext_warnings, read_workload

    memory = parse_size(max_memory)
    if memory < 64 << 10:
        raise click.BadParameter("must be at least 64KiB (one wasm page)", param_hint="--max-memory")
    config = load_config(wasmcfgfile).with_extra(args=list(args), env=parse_env(env))
    cache = None if no_cache else str(module_cache_dir())
    preopens = parse_dirs(dirs)
    program = python_program(wasm)
    if program is not None:
        check_guest_paths(preopens)
        workload, config, read_only = interpreter(), program.config(config), program.read_only_dirs()
    else:
        workload, read_only = read_workload(wasm), ()
    request = RunRequest(workload, config, preopens, memory, timeout, cache,
                         config_dir=str(wasmcfgfile.parent) if wasmcfgfile is not None else None,
                         read_only_dirs=read_only)
    if program is not None:
        check_interpreter(request.wasm_sha256)  # the digest the launch carries: hashed once
    chosen = default_backend() if backend == "auto" else backend
    if accel == "kvm" and chosen == "kvm":
        from motte.host.backends.kvm.accel import refuse_known_unusable_kvm

        refuse_known_unusable_kvm()
    for warning in plaintext_warnings(config):
        click.echo(f"motte: warning: {warning}", err=True)
    network = prepare_network(request)  # binds listen ports: one in use fails here, before any keep starts
    try:
        check_launch_fits(request, network)
        keep = _launch(get_backend(chosen), LaunchSpec(memory_bytes=memory, accel=accel))
        ran = False
        try:
            if sys.stderr.isatty():
                click.echo(f"motte: keep on backend {keep.backend}: {keep.isolation}", err=True)
            result = run_workload(keep, request, network=network)
            ran = True
        finally:
            if ran:
                # After its exit report and the host's bye a keep has nothing left to say (and the
                # channel closes first): ending it at once spares a VM keep's guest shutdown (0.1 s under TCG).
                keep.close(grace=0)
            else:
                keep.close()
    finally:
        if network is not None:
            network.close()
    if result.reason == "exit" and not result.message:
        sys.exit(result.status)
    report = {
        "trap": "the workload trapped",
        "timeout": "deadline passed",
        "memory": "memory limit reached",
        "error": "error",
    }.get(result.reason, result.reason)
    # The message and the backtrace (the module's own function names) come from the keep.
    click.echo(printable(f"motte: {report}: {result.message}"), err=True)
    if result.backtrace:
        click.echo("wasm backtrace:", err=True)
        for line in result.backtrace:
            click.echo(f"  {printable(line)}", err=True)
    sys.exit(result.status)
