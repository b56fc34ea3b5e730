"""``motte host serve``: the host agent, the long-running service on the untrusted host that
launches empty keeps for tenants (``motte deploy``) and relays their connections; ``motte host
list/status/stop``: the keeps an agent launched, as a tenant or operator sees them.

Heavy imports (aiohttp, the backends) happen inside the command, so ``motte --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from motte.cli.agent_options import agent_client, agent_options, keep_id_argument
from motte.outside.agent_api import DEFAULT_PORT
from motte.shared.errors import MotteError
from motte.shared.printable import printable

if TYPE_CHECKING:
    from motte.outside.agent_api import KeepRecord

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
    """The host side of motte deploy: the agent that launches keeps for tenants, and the keeps it runs."""


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
    from motte.host.agent.auth import check_exposure
    from motte.host.agent.keeps import AgentLimits
    from motte.host.agent.server import serve
    from motte.host.backends import get_backend
    from motte.outside.user_files import read_token

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


# ---- the tenant's view of an agent: the keeps it launched ----
# What an agent answers comes from the untrusted host: every value is escaped before it is printed.

_COLUMNS = ("id", "backend", "state", "memory", "created", "exit")


@host.command("list")
@agent_options
@click.option("--json", "as_json", is_flag=True, help='Print {"keeps": [record, ...]} (records as the API gives them).')
def list_command(agent: str | None, token_file: Path | None, as_json: bool) -> None:
    """List the keeps a host agent launched and still knows: live ones and ended ones not yet
    stopped (a keep's record stays until `motte host stop` forgets it)."""
    keeps = agent_client(agent, token_file).list()
    if as_json:
        click.echo(json.dumps({"keeps": [record.to_json() for record in keeps]}, indent=2))
        return
    if not keeps:
        click.echo("no keeps", err=True)
        return
    rows = [_COLUMNS] + [tuple(_summary(record)[name] for name in _COLUMNS) for record in keeps]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@host.command("status")
@click.argument("keep_id", metavar="KEEP", callback=keep_id_argument)
@agent_options
@click.option("--json", "as_json", is_flag=True, help="Print the keep's record as JSON.")
def status_command(keep_id: str, agent: str | None, token_file: Path | None, as_json: bool) -> None:
    """Show one keep's record: its state, limits, and how its workload ended (the status and
    reason only: a deployed workload's output and exit message went to its tenant)."""
    record = agent_client(agent, token_file).status(keep_id)
    if as_json:
        click.echo(json.dumps(record.to_json(), indent=2))
        return
    details = {**_summary(record), "timeout": "none" if record.timeout_ms is None else f"{record.timeout_ms} ms",
               "detached": "yes" if record.detach else "no", "isolation": printable(record.isolation or "-"),
               "sessions": str(record.sessions), "ended": printable(record.ended or "-"),
               "error": printable(record.error or "-")}
    for name, value in details.items():
        click.echo(f"{name + ':':<11}{value}")


@host.command("stop")
@click.argument("keep_id", metavar="KEEP", callback=keep_id_argument)
@agent_options
@click.option("--json", "as_json", is_flag=True, help="Print the keep's final record as JSON.")
def stop_command(keep_id: str, agent: str | None, token_file: Path | None, as_json: bool) -> None:
    """Stop a keep (its workload ends, its memory is released) and make the agent forget it.
    Exit status 125 if the agent does not know KEEP."""
    client = agent_client(agent, token_file)
    record = client.stop(keep_id)
    if record is None:
        raise MotteError(f"the agent at {client.url} has no keep {keep_id}",
                         hint="`motte host list` shows the keeps it knows")
    if as_json:
        click.echo(json.dumps(record.to_json(), indent=2))
        return
    summary = _summary(record)
    click.echo(f"stopped keep {summary['id']} ({summary['state']}, exit {summary['exit']})", err=True)


def _summary(record: KeepRecord) -> dict[str, str]:
    exit_ = "-" if record.exit is None else f"{record.exit.status} ({record.exit.reason})"
    return {"id": printable(record.id), "backend": printable(record.backend), "state": printable(record.state),
            "memory": _size(record.memory), "created": printable(record.created), "exit": printable(exit_)}


def _size(size: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)
