"""Who may use the host agent: anyone who can reach a loopback address or its Unix socket, and
with a bearer token configured, only a client that presents it."""

from __future__ import annotations

import hmac
import os
import stat
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from motte.host.agent.errors import ApiError
from motte.shared.errors import MotteError
from motte.shared.loopback import is_loopback

MIN_TOKEN = 16  # characters: a guessable token protects nothing


def check_exposure(host: str | None, token: str | None) -> None:
    """Refuse to serve on a non-loopback address without a token (``host`` None: a Unix socket)."""
    if host is not None and token is None and not is_loopback(host):
        raise MotteError(f"refusing to serve the host agent on {host} without a token: anyone who reaches it "
                         "could launch keeps", hint="give --token-file, or listen on 127.0.0.1 or a --unix socket")


def read_token(path: Path) -> str:
    """The token in ``path`` (its first line); the file should be readable by its owner only."""
    try:
        with path.open("rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            raw = file.read(4096)
    except OSError as exc:
        raise MotteError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    try:
        token = raw.decode("ascii").splitlines()[0].strip() if raw.strip() else ""
    except UnicodeDecodeError:
        raise MotteError(f"the token file {path} is not ASCII text", hint="e.g. openssl rand -hex 32") from None
    if len(token) < MIN_TOKEN or not token.isprintable() or " " in token:
        raise MotteError(f"the token in {path} must be at least {MIN_TOKEN} printable characters without spaces",
                         hint="e.g. openssl rand -hex 32 > FILE")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise MotteError(f"the token file {path} is readable by others", hint=f"chmod 600 {path}")
    return token


def token_middleware(token: str) -> Middleware:
    """Every request must carry ``Authorization: Bearer <token>``; compared in constant time."""
    expected = token.encode()

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise ApiError(401, "unauthorized",
                           "a valid bearer token is required" if given else "this agent requires a bearer token",
                           headers={"WWW-Authenticate": 'Bearer realm="motte host agent"'})
        return await handler(request)

    return require_token
