"""Where a service listens (a TCP address for its aiohttp runner, alone or shared by replicas),
and what stops it (SIGINT, SIGTERM).

With ``reuse_port`` the socket is bound with SO_REUSEPORT, so several processes on one machine
(replicas of one service) listen on the same host:port and the kernel spreads new connections
among them: the replicas sit behind one address with no proxy in front. Linux lets a socket join
only if every socket already on that port set the option too and belongs to the same user. A
replica that stops takes its own connections with it (those still waiting in its accept queue are
reset); a client that connects again reaches one that is left. Across machines (in Kubernetes,
where each pod has its own address) the one address is a load balancer's or a Service's instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web

from motte.shared.errors import MotteError

BACKLOG = 1024  # connections the kernel queues before accept; a burst of clients must not be refused


async def listen_tcp(runner: web.BaseRunner, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                     reuse_port: bool = False) -> str:
    """Serve ``runner`` on host:port (0: any free port); returns the URL it is reachable at,
    ``http(s)://host:port`` with the port bound."""
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, backlog=BACKLOG, reuse_port=reuse_port or None)
    try:
        await site.start()
    except OSError as exc:
        hint = ("replicas share a port only if each of them listens with --reuse-port, as the same user"
                if reuse_port else "another program uses the port: choose another with --port")
        raise MotteError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", hint=hint) from None
    return url("https" if ssl_context is not None else "http", runner.addresses[0])


def url(scheme: str, address: Any) -> str:
    host, port = address[0], address[1]  # (an IPv6 socket address has four fields)
    return f"{scheme}://[{host}]:{port}" if ":" in str(host) else f"{scheme}://{host}:{port}"


def stop_on_signals(stop: asyncio.Event) -> Callable[[], None]:
    """Have SIGINT and SIGTERM set ``stop`` (the main thread's loop only: tests serve from other
    threads); returns the function that undoes it."""
    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)

    def release() -> None:
        for sig in handled:
            loop.remove_signal_handler(sig)

    return release
