"""Who may use the host agent: anyone who can reach a loopback address or its Unix socket, and
with a bearer token configured, only a client that presents it."""

from __future__ import annotations

import hmac

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from motte.outside.http_errors import ApiError
from motte.outside.loopback import is_loopback
from motte.shared.errors import MotteError


def check_exposure(host: str | None, token: str | None) -> None:
    """Refuse to serve on a non-loopback address without a token (``host`` None: a Unix socket)."""
    if host is not None and token is None and not is_loopback(host):
        raise MotteError(f"refusing to serve the host agent on {host} without a token: anyone who reaches it "
                         "could launch keeps", hint="give --token-file, or listen on 127.0.0.1 or a --unix socket")


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
