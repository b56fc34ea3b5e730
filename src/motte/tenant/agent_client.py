"""The tenant's client of a host agent (``motte host serve``): launch, list, stop keeps, and open
sessions to them. Async, on aiohttp; the API is in :mod:`motte.shared.agent_api`.

The agent is the untrusted host's: what it answers is checked and shown escaped, and a session
carries only what the tenant's TLS makes of its data. Every failure is one :class:`AgentError`
line: the agent is down, refused the token, or refused the request (its text and code).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from motte.shared.agent_api import (
    CLOSE_KEEP_ENDED,
    CLOSE_NORMAL,
    CLOSE_RESET,
    DEFAULT_PORT,
    MAX_MESSAGE,
    ApiFieldError,
    KeepRecord,
    KeepRequest,
)
from motte.shared.errors import MotteError
from motte.shared.untrusted_text import printable

TIMEOUT = 30.0  # seconds for one API request
LAUNCH_TIMEOUT = 300.0  # seconds a session may wait for its keep to boot (a VM under emulation)


class AgentError(MotteError):
    """The host agent is unreachable, or refused a request: ``status`` and ``code`` say how
    (``status`` 0: no answer at all)."""

    def __init__(self, message: str, *, status: int = 0, code: str = "", hint: str | None = None):
        super().__init__(message, hint=hint)
        self.status = status
        self.code = code


class SessionClosed(MotteError):
    """The agent ended a session before the keep's half close: the keep ended or reset it."""


class KeepSession:
    """One connection to a keep through the agent: the tenant's TLS bytes both ways."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self._ws = ws
        self._eof = False

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        for offset in range(0, len(view), MAX_MESSAGE):
            await self._ws.send_bytes(bytes(view[offset : offset + MAX_MESSAGE]))

    async def send_eof(self) -> None:
        """No more bytes from the tenant (a half close: the keep's may still come)."""
        await self._ws.send_bytes(b"")

    async def receive(self) -> bytes:
        """The keep's next bytes; ``b""`` once it half-closed or closed the connection in order."""
        if self._eof:
            return b""
        message = await self._ws.receive()
        if message.type == aiohttp.WSMsgType.BINARY:
            self._eof = not message.data
            return bytes(message.data)
        code = self._ws.close_code
        reason = printable(str(message.extra or ""), 120) if message.type == aiohttp.WSMsgType.CLOSE else ""
        if code == CLOSE_NORMAL:
            self._eof = True
            return b""
        if code == CLOSE_KEEP_ENDED:
            raise SessionClosed("the keep ended before it closed the connection")
        if code == CLOSE_RESET:
            raise SessionClosed(reason or "the keep reset the connection")
        if message.type == aiohttp.WSMsgType.ERROR:
            raise SessionClosed(f"the session with the host agent failed: {printable(str(self._ws.exception()))}")
        raise SessionClosed(f"the host agent closed the session (code {code}{': ' + reason if reason else ''})")

    async def close(self) -> None:
        """End the connection in order (the keep gets what was sent before)."""
        await self._ws.close(code=CLOSE_NORMAL)


class AgentClient:
    """``async with AgentClient(url, token=...) as agent:`` then the API calls. ``url`` is
    ``http://HOST:PORT`` or ``unix:/PATH``."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = TIMEOUT,
                 launch_timeout: float = LAUNCH_TIMEOUT):
        self.url = url
        self._token = token
        self._timeout = timeout
        self._launch_timeout = launch_timeout
        self._base, self._unix = _parse_url(url)
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AgentClient:
        connector = aiohttp.UnixConnector(path=self._unix) if self._unix else aiohttp.TCPConnector()
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        # The default timeout is for the session handshake, which waits while the keep boots.
        self._http = aiohttp.ClientSession(
            self._base, connector=connector, headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout, sock_read=self._launch_timeout))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    # ---- the API ----

    async def info(self) -> dict[str, Any]:
        answer = await self._call("GET", "/v1/info")
        if not isinstance(answer, dict) or answer.get("service") != "motte host agent":
            raise AgentError(f"{self.url} is not a motte host agent")
        return answer

    async def create(self, request: KeepRequest | None = None) -> KeepRecord:
        """Launch an empty keep; it boots meanwhile (its state says when it waits for the tenant)."""
        return self._record(await self._call("POST", "/v1/keeps", (request or KeepRequest()).to_json()))

    async def list(self) -> list[KeepRecord]:
        answer = await self._call("GET", "/v1/keeps")
        keeps = answer.get("keeps") if isinstance(answer, dict) else None
        if not isinstance(keeps, list):
            raise AgentError(f"the answer of {self.url} lists no keeps")
        return [self._record(item) for item in keeps]

    async def status(self, keep_id: str) -> KeepRecord:
        return self._record(await self._call("GET", f"/v1/keeps/{keep_id}"))

    async def stop(self, keep_id: str) -> KeepRecord | None:
        """Stop the keep and forget it: its final record, or None if the agent no longer knows it."""
        try:
            return self._record(await self._call("DELETE", f"/v1/keeps/{keep_id}"))
        except AgentError as exc:
            if exc.code == "no_such_keep":
                return None
            raise

    @contextlib.asynccontextmanager
    async def session(self, keep_id: str) -> AsyncIterator[KeepSession]:
        """A connection to the keep (waiting while it boots), closed in order on leaving."""
        try:
            ws = await self._session().ws_connect(f"/v1/keeps/{keep_id}/session", max_msg_size=MAX_MESSAGE + 1)
        except aiohttp.WSServerHandshakeError as exc:
            raise await self._refused_session(keep_id, exc.status) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._unreachable(exc) from None
        try:
            yield KeepSession(ws)
        finally:
            await ws.close(code=CLOSE_NORMAL)

    # ---- the edge ----

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("use AgentClient in 'async with'")
        return self._http

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            async with self._session().request(method, path, json=body,
                                               timeout=aiohttp.ClientTimeout(total=self._timeout)) as response:
                try:
                    answer = await response.json(content_type=None)
                except ValueError:
                    answer = None
                if response.status >= 400:
                    raise self._refused(response.status, answer)
                return answer
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: BaseException) -> AgentError:
        if isinstance(exc, TimeoutError):
            return AgentError(f"the host agent at {self.url} did not answer within {self._timeout:g} s")
        if isinstance(exc, aiohttp.ClientConnectorError):
            why = exc.strerror or exc.os_error
            return AgentError(f"the host agent at {self.url} is down: {printable(str(why))}",
                              hint="start it with 'motte host serve', or give the right agent URL")
        return AgentError(f"the host agent at {self.url} failed: {printable(str(exc)) or type(exc).__name__}")

    def _refused(self, status: int, answer: Any) -> AgentError:
        error = answer.get("error") if isinstance(answer, dict) else None
        code = answer.get("code") if isinstance(answer, dict) else None
        text = printable(error, 300) if isinstance(error, str) else f"HTTP {status}"
        code = printable(code, 40) if isinstance(code, str) else ""
        if status == 401:
            hint = "check the agent's token" if self._token else "the agent needs its token"
            return AgentError(f"the host agent at {self.url} refused the token: {text}", status=status, code=code,
                              hint=hint)
        return AgentError(f"the host agent refused: {text}", status=status, code=code)

    async def _refused_session(self, keep_id: str, status: int) -> AgentError:
        if status == 409:  # the keep ended: its record says how
            record = await self.status(keep_id)
            how = f": {printable(record.error, 300)}" if record.error else ""
            return AgentError(f"keep {printable(keep_id, 64)} has {record.state}{how}", status=status,
                              code="keep_ended")
        return self._refused(status, await self._explain(status, keep_id))

    async def _explain(self, status: int, keep_id: str) -> dict[str, str]:
        # A refused websocket handshake's body is not readable through aiohttp: say what its status means.
        texts = {401: ("unauthorized", "a valid bearer token is required"),
                 404: ("no_such_keep", f"no keep {printable(keep_id, 64)} here"),
                 429: ("too_many_sessions", f"keep {printable(keep_id, 64)} has the most sessions allowed")}
        code, text = texts.get(status, (f"http_{status}", f"the session was refused (HTTP {status})"))
        return {"code": code, "error": text}

    def _record(self, answer: Any) -> KeepRecord:
        try:
            return KeepRecord.from_json(answer)
        except ApiFieldError as exc:
            raise AgentError(f"the host agent at {self.url} answered a malformed keep record: {exc}") from None


def _parse_url(url: str) -> tuple[str, str | None]:
    """(base URL, Unix socket path or None)."""
    if url.startswith("unix:"):
        path = url.removeprefix("unix:")
        if not path:
            raise AgentError(f"{url!r} names no socket", hint="unix:/PATH")
        return "http://localhost", path
    if url.startswith(("http://", "https://")):
        return url.rstrip("/"), None
    raise AgentError(f"{printable(url, 100)} is not a host agent URL",
                     hint=f"http://HOST:PORT (e.g. http://127.0.0.1:{DEFAULT_PORT}) or unix:/PATH")
