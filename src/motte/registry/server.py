"""Running the registry: its TLS (and the Steward CAs whose client certificates it accepts),
where it may listen, and closing the store however it stops."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path

from aiohttp import web

from motte.host.agent.server import stop_on_signals
from motte.registry.app import Registry
from motte.shared.errors import MotteError
from motte.shared.loopback import is_loopback
from motte.steward.app import tls_context

SHUTDOWN_TIMEOUT = 10.0


def registry_tls(cert: Path, key: Path, steward_cas: Sequence[Path] = ()) -> ssl.SSLContext:
    """The server's TLS; with ``steward_cas``, a client may present a certificate chaining to one
    of them (optional: public repositories need none), and a bad one fails the handshake."""
    context = tls_context(cert, key)
    if steward_cas:
        context.verify_mode = ssl.CERT_OPTIONAL
        for ca in steward_cas:
            try:
                context.load_verify_locations(cafile=str(ca))
            except (OSError, ssl.SSLError) as exc:
                raise MotteError(f"cannot load the Steward CA {ca}: {exc}", hint="a PEM certificate") from None
    return context


def check_exposure(host: str, tls: bool, token: str | None) -> None:
    """Off loopback the registry needs TLS (tokens and private packages travel) and a token (or
    anyone could publish)."""
    if is_loopback(host):
        return
    if not tls:
        raise MotteError(f"refusing to serve the registry in clear on {host}",
                         hint="give --tls-cert and --tls-key, or listen on 127.0.0.1")
    if token is None:
        raise MotteError(f"refusing to serve the registry on {host} without a token: anyone could publish",
                         hint="give --token-file, or listen on 127.0.0.1")


async def serve(registry: Registry, *, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None,
                on_ready: Callable[[str], None], stop: asyncio.Event | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or ``stop`` is set); ``on_ready`` gets the base URL. The store
    is opened here (on this loop's thread) and closed however this ends."""
    check_exposure(host, ssl_context is not None, registry.access.token)
    stop = stop or asyncio.Event()
    release_signals = stop_on_signals(stop)
    registry.store.open()
    # keepalive_timeout runs from a connection's start too: a client must bring a request head
    # within it, so connections that never finish one (slowloris) do not pile up.
    runner = web.AppRunner(registry.app(), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT,
                           keepalive_timeout=registry.idle_timeout)
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, backlog=1024)
        try:
            await site.start()
        except OSError as exc:
            raise MotteError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                             hint="another program uses the port: choose another with --port") from None
        bound = runner.addresses[0]
        shown = f"[{bound[0]}]" if ":" in str(bound[0]) else bound[0]
        on_ready(f"{'https' if ssl_context else 'http'}://{shown}:{bound[1]}")
        await stop.wait()
    finally:
        await runner.cleanup()
        registry.store.close()
        release_signals()
