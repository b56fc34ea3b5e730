"""``motte host serve``: the host agent, the long-running service on the untrusted host that
launches empty keeps for tenants (``motte deploy``) and relays their connections.

Heavy imports (aiohttp, the backends) happen inside the command, so ``motte --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from motte.shared.agent_api import DEFAULT_PORT

BACKENDS = ("nil", "kvm")
#: warm keeps per backend unless --warm says otherwise: a nil keep costs a process; a kvm keep a
#: guest's memory, and seconds of CPU to boot under emulation, so only when asked
DEFAULT_WARM = {"nil": 1, "kvm": 0}
MAX_WARM = 16


def parse_warm(values: tuple[str, ...]) -> dict[str, int]:
    """``--warm N`` (every backend) and ``--warm BACKEND=N``, over the defaults; later ones win."""
    warm = dict(DEFAULT_WARM)
    for value in values:
        name, sep, count = value.rpartition("=")
        if sep and name not in BACKENDS:
            raise click.BadParameter(f"unknown backend {name!r} (one of {', '.join(BACKENDS)})", param_hint="--warm")
        if not count.isdigit() or int(count) > MAX_WARM:
            raise click.BadParameter(f"{value!r}: the count must be a number from 0 to {MAX_WARM}",
                                     param_hint="--warm")
        for backend in (name,) if sep else BACKENDS:
            warm[backend] = int(count)
    return warm


@click.group()
def host() -> None:
    """The host side of motte deploy: the agent that launches keeps for tenants."""


@host.command("serve")
@click.option("--addr", default="127.0.0.1", show_default=True,
              help="Address to listen on; any but loopback needs --token-file.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535),
              help="0: any free port.")
@click.option("--unix", "unix", type=click.Path(dir_okay=False, path_type=Path),
              help="Listen on this Unix socket instead (mode 0600: this user only).")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Require the bearer token in this file (its first line; mode 0600).")
@click.option("--backend", "backends", multiple=True, type=click.Choice(BACKENDS),
              help="Offer only this backend (repeatable). Default: every one this host can run.")
@click.option("--max-keeps", default=8, show_default=True, type=click.IntRange(1, 1024),
              help="Keeps starting or running at once (more: 429).")
@click.option("--max-memory", default="4G", show_default=True, metavar="SIZE",
              help="The largest memory cap a keep may ask for (e.g. 512M, 4G).")
@click.option("--warm", "warm", multiple=True, metavar="[BACKEND=]N",
              help="Keep N empty keeps launched ahead of requests, of BACKEND or of every backend (repeatable). "
                   "Default: nil=1, kvm=0.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the ready line as JSON: {\"url\", \"backends\", \"default_backend\", \"warm\"}.")
def serve_command(addr: str, port: int, unix: Path | None, token_file: Path | None, backends: tuple[str, ...],
                  max_keeps: int, max_memory: str, warm: tuple[str, ...], as_json: bool) -> None:
    """Serve the host agent's API until SIGINT or SIGTERM, then stop every keep it launched.

    Tenants ask it for empty keeps and reach them through it (motte deploy); their workloads,
    configs and secrets travel in TLS that ends inside the keep, so the agent relays only
    ciphertext. It listens on loopback by default. Events go to stderr, one line each; the
    ready line (with --json, a JSON object) to stdout. Exit status: 0 once stopped by a signal,
    125 if it cannot start (a port in use, an exposed address without a token).

    Warm keeps are empty keeps launched ahead of requests, of the default memory (1G, or
    --max-memory if smaller): a request for that memory gets one at once, replaced in the
    background once its tenant has provisioned it. They hold nothing of any tenant until
    provisioned, and do not count against --max-keeps.
    """
    import asyncio

    from motte.cli.run import parse_size
    from motte.host.agent.app import HostAgent
    from motte.host.agent.auth import check_exposure, read_token
    from motte.host.agent.keeps import AgentLimits
    from motte.host.agent.server import serve
    from motte.host.backends import get_backend

    memory = parse_size(max_memory)
    if memory < 64 << 10:
        raise click.BadParameter("must be at least 64KiB (one wasm page)", param_hint="--max-memory")
    token = read_token(token_file) if token_file is not None else None
    check_exposure(None if unix is not None else addr, token)  # before anything starts
    limits = AgentLimits(max_keeps=max_keeps, max_memory=memory, default_memory=min(1 << 30, memory),
                         warm=parse_warm(warm))
    agent = HostAgent({name: get_backend(name) for name in backends or BACKENDS}, limits=limits, token=token)

    def ready(url: str) -> None:
        offered = [name for name, report in agent.reports.items() if report.supported]
        pools = {name: pool.size for name, pool in agent.keeps.pools.items()}
        if as_json:
            click.echo(json.dumps({"url": url, "backends": offered, "default_backend": agent.default_backend,
                                   "warm": pools}))
        else:
            warm = "".join(f"; {size} warm {name}" for name, size in pools.items())
            click.echo(f"motte host: listening on {url} (backends: {', '.join(offered) or 'none'}; "
                       f"at most {max_keeps} keeps{warm}{'; token required' if token else ''})")
        sys.stdout.flush()

    asyncio.run(serve(agent, host=addr, port=port, unix=unix, on_ready=ready))
