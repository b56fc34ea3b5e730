"""The one way motte's HTTP services (the host agent, the registry) refuse a request: an HTTP
status, a stable code, one line of text."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from motte.outside.agent_api import ApiFieldError
from motte.shared.printable import printable


class ApiError(Exception):
    """Answered as ``{"error": message, "code": code}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers

    def response(self) -> web.Response:
        return web.json_response({"error": self.message, "code": self.code}, status=self.status, headers=self.headers)


def json_errors(log: Callable[[str], None]) -> Middleware:
    """Every refusal as ``{"error", "code"}`` (the API's own, aiohttp's 404 and 405, and bugs),
    and one log line for it."""

    @web.middleware
    async def refuse_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            refusal = exc
        except ApiFieldError as exc:
            refusal = ApiError(400, "bad_field", str(exc))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            refusal = ApiError(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
        except Exception as exc:  # a bug must not take the service down, nor show a trace to the client
            log(f"internal error on {request.method} {printable(request.path, 100)}: "
                f"{type(exc).__name__}: {printable(str(exc))}")
            refusal = ApiError(500, "internal", f"internal error: {type(exc).__name__}")
        log(f"refused {request.method} {printable(request.path, 100)}: {refusal.status} {refusal.code}: "
            f"{printable(refusal.message, 300)}")
        return refusal.response()

    return refuse_as_json
