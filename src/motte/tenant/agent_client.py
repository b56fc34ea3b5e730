"""The tenant's client of a host agent (``motte host serve``): launch, list, stop keeps, and open
sessions to them. The API is in :mod:`motte.outside.agent_api`.

Synchronous and on the standard library, because ``motte deploy`` must start fast: the API calls
go over ``http.client`` (TCP, or a Unix socket), a session over a socket driven by the sans-I/O
WebSocket client :mod:`motte.tenant.websocket`.

The agent is the untrusted host's: what it answers is checked and shown escaped, and a session
carries only what the tenant's TLS makes of its data. Every failure is one :class:`AgentError`
line (the agent is down, refused the token, or refused the request: its text and code), or, once
a session is open, one :class:`SessionClosed` line.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import socket
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from motte.outside.agent_api import (
    CLOSE_KEEP_ENDED,
    CLOSE_NORMAL,
    CLOSE_RESET,
    DEFAULT_PORT,
    HEARTBEAT,
    MAX_MESSAGE,
    ApiFieldError,
    KeepRecord,
    KeepRequest,
)
from motte.shared.errors import MotteError
from motte.shared.printable import printable
from motte.tenant.websocket import Closed, Connection, Event, Handshake, WebSocketError

if TYPE_CHECKING:
    import ssl

TIMEOUT = 30.0  # seconds for one API request
LAUNCH_TIMEOUT = 300.0  # seconds a session may wait for its keep to boot (a VM under emulation)
#: seconds a session may hear nothing, not even the agent's pings, before it is taken for dead
IDLE_TIMEOUT = 3 * HEARTBEAT
CLOSE_TIMEOUT = 5.0  # seconds to wait for the agent's answer to our close frame
MAX_ANSWER = 16 << 20  # bytes of an API answer (a list of a few hundred records is well under)
MAX_REFUSAL = 64 << 10  # bytes of a refused session handshake's body
READ_SIZE = 256 << 10

OpenSocket = Callable[[float], socket.socket]


class AgentError(MotteError):
    """The host agent is unreachable, or refused a request: ``status`` and ``code`` say how
    (``status`` 0: no answer at all)."""

    def __init__(self, message: str, *, status: int = 0, code: str = "", hint: str | None = None):
        super().__init__(message, hint=hint)
        self.status = status
        self.code = code


class SessionClosed(MotteError):
    """The session ended other than in order: the keep ended or reset it, or the agent's
    connection broke."""


class KeepSession:
    """One connection to a keep through the agent: the tenant's TLS bytes both ways."""

    def __init__(self, sock: socket.socket, websocket: Connection, *, idle_timeout: float = IDLE_TIMEOUT):
        self._sock: socket.socket | None = sock
        self._ws = websocket
        self._idle_timeout = idle_timeout
        self._events: deque[Event] = deque()
        self._eof = False
        self._ended: SessionClosed | None = None
        sock.settimeout(idle_timeout)

    def send(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        for offset in range(0, len(view), MAX_MESSAGE):
            self._send_message(view[offset : offset + MAX_MESSAGE])

    def send_eof(self) -> None:
        """No more bytes from the tenant (a half close: the keep's may still come)."""
        self._send_message(b"")

    def receive(self) -> bytes:
        """The keep's next bytes; ``b""`` once it half-closed or closed the connection in order."""
        while not self._eof:
            if not self._events:
                if self._ended is not None:
                    raise self._ended
                self.feed(self._read())
                continue
            event = self._events.popleft()
            if isinstance(event, Closed):
                self._server_closed(event)
            elif event.text:
                self._fail(WebSocketError("the host agent sent a text message (a session carries bytes)", 1003))
            else:
                self._eof = not event.data
                return event.data
        return b""

    def feed(self, data: bytes) -> None:
        """Bytes read from the agent (the first may come with the handshake's answer)."""
        try:
            self._events.extend(self._ws.receive(data))
        except WebSocketError as exc:
            self._fail(exc)
        self._reply()

    def close(self) -> None:
        """End the connection in order (the keep gets what was sent before); never raises."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            sock.sendall(self._ws.close(CLOSE_NORMAL))
            deadline = time.monotonic() + CLOSE_TIMEOUT
            while self._ws.close_received is None and (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                data = sock.recv(READ_SIZE)
                if not data:
                    break
                self._ws.receive(data)
        except (OSError, WebSocketError):
            pass  # the agent is gone, or broke the protocol: closing the socket is all there is left
        finally:
            sock.close()

    # ---- the edge ----

    def _send_message(self, data: bytes | memoryview) -> None:
        if self._ws.close_sent:  # the agent closed the session (its close was answered), or this side did
            raise self._ended or SessionClosed("the session is closed")
        self._write(self._ws.send(data))

    def _reply(self) -> None:
        """Send what the protocol answers of its own accord: pongs, the answer to the agent's close.
        If the connection broke meanwhile, the messages already received are still delivered
        (the agent may close right after its last ones); the next read says it broke."""
        with contextlib.suppress(SessionClosed):
            self._write(self._ws.outgoing())

    def _server_closed(self, closed: Closed) -> None:
        if closed.code == CLOSE_NORMAL:
            self._eof = True
            return
        reason = printable(closed.reason, 120)
        if closed.code == CLOSE_KEEP_ENDED:
            self._ended = SessionClosed("the keep ended before it closed the connection")
        elif closed.code == CLOSE_RESET:
            self._ended = SessionClosed(reason or "the keep reset the connection")
        else:
            self._ended = SessionClosed(
                f"the host agent closed the session (code {closed.code}{': ' + reason if reason else ''})")

    def _fail(self, exc: WebSocketError) -> None:
        """The agent broke the protocol: close with the code that says how, and end the session."""
        with contextlib.suppress(SessionClosed):
            self._write(self._ws.close(exc.code))
        self._ended = SessionClosed(f"the host agent broke the WebSocket protocol: {printable(str(exc))}")
        self._drop()
        raise self._ended

    def _read(self) -> bytes:
        sock = self._live()
        try:
            data = sock.recv(READ_SIZE)
        except TimeoutError:
            self._ended = SessionClosed(f"the host agent sent nothing for {self._idle_timeout:g} s, not even its "
                                        "heartbeat: the connection is taken for dead")
            self._drop()
            raise self._ended from None
        except OSError as exc:
            raise self._broken(exc) from None
        if not data:
            raise self._broken(None)
        return data

    def _write(self, data: bytes) -> None:
        if not data:
            return
        try:
            self._live().sendall(data)
        except OSError as exc:
            raise self._broken(exc) from None

    def _live(self) -> socket.socket:
        if self._ended is not None:
            raise self._ended
        if self._sock is None:
            raise SessionClosed("the session is closed")
        return self._sock

    def _broken(self, exc: OSError | None) -> SessionClosed:
        why = "it closed the connection" if exc is None else printable(exc.strerror or str(exc) or type(exc).__name__)
        self._ended = SessionClosed(f"the connection to the host agent broke: {why}")
        self._drop()
        return self._ended

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


class AgentClient:
    """``AgentClient(url, token=...)``, then the API calls (each on a connection of its own).
    ``url`` is ``http://HOST:PORT``, ``https://HOST:PORT`` or ``unix:/PATH``."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = TIMEOUT,
                 launch_timeout: float = LAUNCH_TIMEOUT, ssl_context: ssl.SSLContext | None = None):
        self.url = url
        self._token = token
        self._timeout = timeout
        self._launch_timeout = launch_timeout
        self._ssl_context = ssl_context
        self._host, self._address, self._tls = _parse_url(url)

    # ---- the API ----

    def info(self) -> dict[str, Any]:
        answer = self._call("GET", "/v1/info")
        if not isinstance(answer, dict) or answer.get("service") != "motte host agent":
            raise AgentError(f"{self.url} is not a motte host agent")
        return answer

    def create(self, request: KeepRequest | None = None) -> KeepRecord:
        """Launch an empty keep; it boots meanwhile (its state says when it waits for the tenant)."""
        return self.create_later(request)()

    def create_later(self, request: KeepRequest | None = None) -> Callable[[], KeepRecord]:
        """Send the launch request now; the function returned reads the agent's answer. The agent
        launches the keep (or hands out a warm one, which starts preparing for its tenant) while
        the caller does its own work."""
        answer = self._send("POST", "/v1/keeps", (request or KeepRequest()).to_json())
        return lambda: self._record(answer())

    def list(self) -> list[KeepRecord]:
        answer = self._call("GET", "/v1/keeps")
        keeps = answer.get("keeps") if isinstance(answer, dict) else None
        if not isinstance(keeps, list):
            raise AgentError(f"the answer of {self.url} lists no keeps")
        return [self._record(item) for item in keeps]

    def status(self, keep_id: str) -> KeepRecord:
        return self._record(self._call("GET", f"/v1/keeps/{keep_id}"))

    def stop(self, keep_id: str) -> KeepRecord | None:
        """Stop the keep and forget it: its final record, or None if the agent no longer knows it."""
        try:
            return self._record(self._call("DELETE", f"/v1/keeps/{keep_id}"))
        except AgentError as exc:
            if exc.code == "no_such_keep":
                return None
            raise

    @contextlib.contextmanager
    def session(self, keep_id: str) -> Iterator[KeepSession]:
        """A connection to the keep (waiting while it boots), closed in order on leaving."""
        session = self.open_session(keep_id)
        try:
            yield session
        finally:
            session.close()

    def open_session(self, keep_id: str) -> KeepSession:
        """A connection to the keep; the caller closes it."""
        handshake = Handshake(self._host, f"/v1/keeps/{keep_id}/session", self._headers())
        sock = self._connect(self._timeout)
        try:
            sock.sendall(handshake.request())
            sock.settimeout(self._launch_timeout)  # the agent answers once the keep has launched
            response = None
            while response is None:
                data = sock.recv(READ_SIZE)
                if not data:
                    raise AgentError(f"the host agent at {self.url} closed the connection during the session's "
                                     "handshake")
                response = handshake.receive(data)
            if response.status != 101:
                raise self._refused(response.status, _json(_body(sock, response.headers, response.rest)))
            handshake.accept(response)
        except WebSocketError as exc:
            sock.close()
            raise AgentError(f"the host agent at {self.url} answered the session wrongly: {exc}") from None
        except OSError as exc:
            sock.close()
            raise self._failed(exc, self._launch_timeout) from None
        except BaseException:
            sock.close()
            raise
        session = KeepSession(sock, Connection(max_message=MAX_MESSAGE))
        with contextlib.suppress(SessionClosed):  # (the session is open: its first receive says what broke)
            session.feed(response.rest)
        return session

    # ---- the edge ----

    def _connect(self, timeout: float) -> socket.socket:
        try:
            if isinstance(self._address, str):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(timeout)
                    sock.connect(self._address)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection(self._address, timeout=timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small frames must not wait
        except TimeoutError as exc:
            raise self._failed(exc) from None
        except OSError as exc:
            raise AgentError(f"the host agent at {self.url} is down: {printable(exc.strerror or str(exc))}",
                             hint="start it with 'motte host serve', or give the right agent URL") from None
        if not self._tls:
            return sock
        import ssl

        context = self._ssl_context or ssl.create_default_context()
        try:
            return context.wrap_socket(sock, server_hostname=self._address[0])
        except OSError as exc:
            sock.close()
            raise self._failed(exc) from None

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._send(method, path, body)()

    def _send(self, method: str, path: str, body: dict[str, Any] | None = None) -> Callable[[], Any]:
        """Send a request now; the function returned reads its answer (and closes the connection)."""
        connection = _HttpConnection(self._host, self._connect, self._timeout)
        headers = self._headers()
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, path, body=payload, headers=headers)
        except BaseException as exc:
            connection.close()
            if isinstance(exc, (OSError, http.client.HTTPException)):
                raise self._failed(exc) from None
            raise
        return functools.partial(self._answer, connection)

    def _answer(self, connection: _HttpConnection) -> Any:
        try:
            response = connection.getresponse()
            raw = response.read(MAX_ANSWER + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise self._failed(exc) from None
        finally:
            connection.close()
        if len(raw) > MAX_ANSWER:
            raise AgentError(f"the answer of {self.url} is larger than {MAX_ANSWER} bytes")
        answer = _json(raw)
        if response.status >= 400:
            raise self._refused(response.status, answer)
        return answer

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def _failed(self, exc: BaseException, timeout: float | None = None) -> AgentError:
        if isinstance(exc, TimeoutError):
            return AgentError(f"the host agent at {self.url} did not answer within {timeout or self._timeout:g} s")
        why = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
        return AgentError(f"the host agent at {self.url} failed: {printable(why)}")

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

    def _record(self, answer: Any) -> KeepRecord:
        try:
            return KeepRecord.from_json(answer)
        except ApiFieldError as exc:
            raise AgentError(f"the host agent at {self.url} answered a malformed keep record: {exc}") from None


class _HttpConnection(http.client.HTTPConnection):
    """``http.client`` over the agent's socket (TCP, TLS or a Unix socket)."""

    def __init__(self, host: str, open_socket: OpenSocket, timeout: float):
        super().__init__(host, timeout=timeout)
        self._open_socket = open_socket
        self._connect_timeout = timeout

    def connect(self) -> None:
        self.sock = self._open_socket(self._connect_timeout)


def _body(sock: socket.socket, headers: dict[str, str], start: bytes) -> bytes:
    """The body of a refused handshake (as far as it is no larger than :data:`MAX_REFUSAL`)."""
    length = headers.get("content-length", "")
    want = min(int(length), MAX_REFUSAL) if length.isdigit() else MAX_REFUSAL
    body = bytearray(start)
    while len(body) < want:
        data = sock.recv(want - len(body))
        if not data:
            break
        body += data
    return bytes(body[:want])


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _parse_url(url: str) -> tuple[str, str | tuple[str, int], bool]:
    """(the Host header, the socket address: a Unix socket's path or (host, port), whether TLS)."""
    if url.startswith("unix:"):
        path = url.removeprefix("unix:")
        if not path:
            raise AgentError(f"{url!r} names no socket", hint="unix:/PATH")
        return "localhost", path, False
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1 or parts.path not in ("", "/"):
        raise AgentError(f"{printable(url, 100)} is not a host agent URL",
                         hint=f"http://HOST:PORT (e.g. http://127.0.0.1:{DEFAULT_PORT}) or unix:/PATH")
    tls = parts.scheme == "https"
    return parts.netloc, (parts.hostname, port or (443 if tls else 80)), tls
