"""The one way the host agent refuses a request: an HTTP status, a stable code, one line of text."""

from __future__ import annotations

from aiohttp import web


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
