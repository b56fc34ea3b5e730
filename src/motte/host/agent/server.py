"""Running the host agent: listening (loopback TCP, a Unix socket, or an exposed address with a
token), and stopping every keep it launched when it stops, however it stops."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from motte.host.agent.app import HostAgent
from motte.host.agent.auth import check_exposure
from motte.outside.listening import listen_tcp, stop_on_signals
from motte.shared.errors import MotteError

SHUTDOWN_TIMEOUT = 5.0  # seconds requests in flight get once the keeps are stopped


async def serve(agent: HostAgent, *, host: str = "127.0.0.1", port: int = 0, unix: Path | None = None,
                on_ready: Callable[[str], None], stop: asyncio.Event | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or ``stop`` is set), then stop every keep and close. ``on_ready``
    gets the agent's URL (``http://host:port`` or ``unix:/path``) once it accepts requests."""
    check_exposure(None if unix is not None else host, agent.token)
    stop = stop or asyncio.Event()
    release_signals = stop_on_signals(stop)
    runner = web.AppRunner(agent.app(), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    bound: Path | None = None
    try:
        await agent.start()
        await runner.setup()
        if unix is not None:
            sock = bind_unix(unix)
            bound = unix
            try:
                await web.SockSite(runner, sock).start()
            except OSError as exc:
                raise MotteError(f"cannot listen on {unix}: {exc.strerror or exc}") from None
            on_ready(f"unix:{unix}")
        else:
            on_ready(await listen_tcp(runner, host, port))
        await stop.wait()
    finally:
        try:
            if live := len(agent.keeps.live()):
                agent.log(f"stopping: ending {live} keep{'s' if live > 1 else ''}")
            await agent.close()
        finally:
            await runner.cleanup()
            if bound is not None:
                with contextlib.suppress(OSError):
                    bound.unlink()
            release_signals()
        agent.log("stopped")


def bind_unix(path: Path) -> socket.socket:
    """A Unix socket at ``path``, mode 0600 from the start (only this user may connect). A socket
    file left by an agent that died is replaced; one where something listens is not."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise MotteError(f"{path} exists and is not a socket", hint="choose another --unix path")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except OSError as exc:
                if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                    raise MotteError(f"cannot use {path}: {exc.strerror or exc}") from None
                path.unlink()  # nobody listens: a stale socket
            else:
                raise MotteError(f"something already listens on {path}", hint="is another agent running?")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket is created 0600: no moment when others could connect
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise MotteError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old_umask)
    return sock
