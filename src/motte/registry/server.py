"""Running the registry: its TLS (and the Steward CAs whose client certificates it accepts),
where it may listen, and closing the store however it stops."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path

from aiohttp import web

from motte.outside.listening import listen_tcp, stop_on_signals
from motte.outside.loopback import is_loopback
from motte.registry.app import Registry
from motte.shared.errors import MotteError
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
                on_ready: Callable[[str], None], stop: asyncio.Event | None = None, reuse_port: bool = False) -> None:
    """Serve until SIGINT/SIGTERM (or ``stop`` is set); ``on_ready`` gets the base URL. The store
    is opened here (on this loop's thread) and closed however this ends. With ``reuse_port`` this
    server is one of several replicas listening on the same host:port (``motte.outside.listening``)."""
    check_exposure(host, ssl_context is not None, registry.access.token)
    if reuse_port and not registry.store.shared:
        # A SQLite store is one server's: at start it empties tmp/ and removes blobs no row names.
        raise MotteError("--reuse-port runs replicas, and registry replicas share a store only with a "
                         "postgresql:// --database", hint="give --database postgresql://..., or drop --reuse-port")
    stop = stop or asyncio.Event()
    release_signals = stop_on_signals(stop)
    registry.store.open()
    # keepalive_timeout runs from a connection's start too: a client must bring a request head
    # within it, so connections that never finish one (slowloris) do not pile up.
    runner = web.AppRunner(registry.app(), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT,
                           keepalive_timeout=registry.idle_timeout)
    try:
        await runner.setup()
        on_ready(await listen_tcp(runner, host, port, ssl_context=ssl_context, reuse_port=reuse_port))
        await stop.wait()
    finally:
        await runner.cleanup()
        registry.store.close()
        release_signals()
