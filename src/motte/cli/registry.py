"""``motte registry serve``: the package registry, Drawbridge's API (v0.1.0) over a store on disk.

Heavy imports (aiohttp, joserfc) happen inside the command, so ``motte --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

DEFAULT_PORT = 7314


@click.group()
def registry() -> None:
    """The package registry: tenants publish workloads to it and deploy them by name."""


@registry.command("serve")
@click.option("--store", "store_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The store's folder (created if missing): blobs and registry.db.")
@click.option("--database", metavar="URL", envvar="MOTTE_REGISTRY_DATABASE",
              help="Where the store's metadata lives: sqlite:///PATH (default: STORE/registry.db), or "
              "postgresql://... for replicas that share it and the --store folder (keep a password out of the "
              "command line: $MOTTE_REGISTRY_DATABASE).")
@click.option("--addr", default="127.0.0.1", show_default=True,
              help="Address to listen on; any but loopback needs TLS and --token-file.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535),
              help="0: any free port.")
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), help="Serve HTTPS with this certificate.")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), help="... and this key.")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Publishing needs the bearer token in this file (its first line; mode 0600).")
@click.option("--steward-ca", "steward_cas", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Private repositories are readable by keeps with a certificate from this Steward CA (repeatable).")
@click.option("--allow-unattested-readers", is_flag=True,
              help="... even keeps the Steward certified without evidence (development only).")
@click.option("--max-blob", default="512M", show_default=True, metavar="SIZE", help="The largest file of a package.")
@click.option("--max-package", default="1G", show_default=True, metavar="SIZE", help="The largest package (all files).")
@click.option("--idle-timeout", default=30.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds a client may send nothing mid-request before it is cut off (408).")
@click.option("--reuse-port", is_flag=True,
              help="Listen with SO_REUSEPORT: replicas on one machine, each started with it (as the same user), "
              "share --addr:--port and the kernel spreads connections among them. Needs the postgresql:// --database "
              "they share. (In Kubernetes each pod has its own address: the Service is the one address.)")
@click.option("--json", "as_json", is_flag=True, help='Print the ready line as JSON: {"url", "store"}.')
def serve_command(store_dir: Path, database: str | None, addr: str, port: int, tls_cert: Path | None,
                  tls_key: Path | None, token_file: Path | None, steward_cas: tuple[Path, ...],
                  allow_unattested_readers: bool, max_blob: str, max_package: str, idle_timeout: float,
                  reuse_port: bool, as_json: bool) -> None:
    """Serve the registry until SIGINT or SIGTERM.

    Public repositories are readable by anyone who reaches it; publishing needs the token (when
    one is set); private repositories are readable by the token's holder and by keeps presenting
    a certificate from a --steward-ca. Events go to stderr, one line each; the ready line to
    stdout. Exit status: 0 once stopped by a signal, 125 if it cannot start.
    """
    import asyncio

    from motte.cli.run import parse_size
    from motte.outside.database import parse_database_url
    from motte.outside.user_files import read_token
    from motte.registry.app import Access, Registry
    from motte.registry.server import check_exposure, registry_tls, serve
    from motte.registry.store import Store, StoreLimits
    from motte.shared.errors import MotteError

    if (tls_cert is None) != (tls_key is None):
        raise MotteError("give both --tls-cert and --tls-key, or neither")
    if steward_cas and tls_cert is None:
        raise MotteError("--steward-ca needs TLS: client certificates are checked in the TLS handshake",
                         hint="give --tls-cert and --tls-key")
    token = read_token(token_file) if token_file is not None else None
    check_exposure(addr, tls_cert is not None, token)  # before anything starts
    context = registry_tls(tls_cert, tls_key, steward_cas) if tls_cert and tls_key else None
    limits = StoreLimits(max_blob=parse_size(max_blob), max_package=parse_size(max_package))
    access = Access(token, bool(steward_cas), allow_unattested_readers)
    store = Store(store_dir, limits, None if database is None else parse_database_url(database))
    service = Registry(store, access, idle_timeout=idle_timeout)

    def ready(url: str) -> None:
        if as_json:
            click.echo(json.dumps({"url": url, "store": str(store_dir)}))
        else:
            extra = "; token required to publish" if token else ""
            extra += f"; private repositories readable with {len(steward_cas)} Steward CA(s)" if steward_cas else ""
            click.echo(f"motte registry: listening on {url} (store {store_dir}, database {store.database}{extra})")
        sys.stdout.flush()

    asyncio.run(serve(service, host=addr, port=port, ssl_context=context, on_ready=ready, reuse_port=reuse_port))
    click.echo("motte registry: stopped", err=True)
