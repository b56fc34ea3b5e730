"""One session websocket relayed to one provisioning stream of a keep, both ways, as opaque bytes.

The bytes are the tenant's TLS session with the keep: the agent passes them on and never looks
inside. The tenant's messages go to the stream from the event loop, as far as the keep has
granted credit (while it waits for more, the relay reads nothing from the tenant: the
backpressure on the tenant); the keep's bytes are read by a thread of the session's own, which
hands each to the event loop and waits until the websocket took it (the backpressure on the
keep). The conventions (half close, close codes) are in :mod:`motte.outside.agent_api`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

from aiohttp import WSCloseCode, WSMsgType, web

from motte.host.provisioned import ProvisionSession
from motte.outside.agent_api import CLOSE_KEEP_ENDED, CLOSE_NORMAL, CLOSE_RESET, MAX_MESSAGE
from motte.shared.endpoint import ChannelClosed, StreamAborted, Timeout
from motte.shared.netstreams import CLOSED, failure

READ_SIZE = MAX_MESSAGE
POLL = 0.5  # seconds between the reading thread's looks whether its session has closed
FROM_TENANT = "ws-from-tenant"
TO_TENANT = "ws-to-tenant"
#: how the keep learns that a tenant's connection broke (the reset reason of its stream)
TENANT_LOST = failure("ECONNRESET", "the tenant's connection to the host was lost")

#: ``tap(event, stream, data)``: sees every websocket message (``ws-from-tenant``, ``ws-to-tenant``).
Tap = Callable[[str, int, bytes], None]


class SessionRelay:
    """Relays ``ws`` (prepared) and ``session`` until either ends: :meth:`run` on the event loop."""

    def __init__(self, ws: web.WebSocketResponse, session: ProvisionSession, *, tap: Tap | None = None):
        self.ws = ws
        self.session = session
        self._tap = tap
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ended = threading.Event()  # the websocket is done: the reading thread stops
        self._tenant_eof = False
        self._keep_eof = False
        self._keep_gone = False

    async def run(self) -> int | None:
        """Relay until the websocket closes; the stream is then ended as the tenant ended it.
        Returns the websocket's close code."""
        self._loop = asyncio.get_running_loop()
        reader = threading.Thread(target=self._from_keep, name=f"motte-session-{self.session.stream}", daemon=True)
        reader.start()
        try:
            async for message in self.ws:
                if message.type != WSMsgType.BINARY:
                    await self._close(WSCloseCode.UNSUPPORTED_DATA, "binary messages only")
                    break
                await self._from_tenant(message.data)
        finally:
            self._ended.set()
            if self.ws.close_code in (CLOSE_NORMAL, CLOSE_RESET, CLOSE_KEEP_ENDED):
                self.session.close(CLOSED)  # (a no-op on a stream the keep ended)
            else:  # the tenant's connection broke, or it broke the conventions
                self.session.close(TENANT_LOST)
        return self.ws.close_code

    def keep_ended(self, text: str) -> None:
        """The keep is gone (event loop). The reading thread closes the session once it has passed
        on the keep's last bytes; after the keep's half close there is no thread left to do it."""
        self._keep_gone = True
        if self._keep_eof:
            self._spawn_close(CLOSE_KEEP_ENDED, text)

    # ---- tenant -> keep (event loop) ----

    async def _from_tenant(self, data: bytes) -> None:
        if self._tap is not None:
            self._tap(FROM_TENANT, self.session.stream, data)
        if self._tenant_eof:
            return  # nothing may follow a half close; the keep would reject it anyway
        try:
            if data:
                await self._to_keep(memoryview(data))
            else:
                self._tenant_eof = True
                self.session.eof()
                if self._keep_eof:
                    await self._close(CLOSE_NORMAL, "")
        except (StreamAborted, ChannelClosed):
            pass  # the keep ended the stream, or is gone: the reading thread closes the session

    async def _to_keep(self, data: memoryview) -> None:
        # Only as much as the keep granted credit for: such a write does not wait. Without credit,
        # wait for it off the event loop, a while at a time: a tenant whose connection is found
        # dead meanwhile (the heartbeat closes the websocket) ends the session all the same.
        while data:
            window = self.session.window()
            if window > 0:
                self.session.write(data[:window])
                data = data[window:]
            elif self.ws.closed:
                return
            else:
                await asyncio.to_thread(self.session.wait_writable, POLL)

    # ---- keep -> tenant (the session's thread) ----

    def _from_keep(self) -> None:
        stream = self.session.stream
        while not self._ended.is_set():
            try:
                data = self.session.read(READ_SIZE, timeout=POLL)
            except Timeout:
                continue
            except StreamAborted:
                if self._ended.is_set():
                    return  # this side ended the stream
                reason = self.session.endpoint.reset_reason(stream)
                if reason in (None, CLOSED):
                    self._call_soon(CLOSE_NORMAL, "")
                else:
                    self._call_soon(CLOSE_RESET, f"the keep reset the connection: {reason}")
                return
            except ChannelClosed:
                self._call_soon(CLOSE_KEEP_ENDED, "the keep has ended")
                return
            if self._tap is not None:
                self._tap(TO_TENANT, stream, data)
            if not self._hand_over(data) or not data:
                return

    def _hand_over(self, data: bytes) -> bool:
        """Send ``data`` on the websocket and wait until it took it: False if it is closed."""
        assert self._loop is not None
        try:
            return asyncio.run_coroutine_threadsafe(self._to_tenant(data), self._loop).result()
        except Exception:  # the event loop is gone, or the send was cancelled: the session is over
            return False

    async def _to_tenant(self, data: bytes) -> bool:
        if self.ws.closed:
            return False
        try:
            await self.ws.send_bytes(data)
        except ConnectionError:
            return False
        if not data:
            self._keep_eof = True
            if self._tenant_eof:
                await self._close(CLOSE_NORMAL, "")
            elif self._keep_gone:
                await self._close(CLOSE_KEEP_ENDED, "the keep has ended")
        return True

    # ---- closing ----

    def _call_soon(self, code: int, text: str) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the event loop is closed: so is the websocket
            self._loop.call_soon_threadsafe(self._spawn_close, code, text)

    def _spawn_close(self, code: int, text: str) -> None:
        task = asyncio.ensure_future(self._close(code, text))
        _CLOSING.add(task)
        task.add_done_callback(_CLOSING.discard)

    async def _close(self, code: int, text: str) -> None:
        if self.ws.closed:
            return
        reason = text.encode()[:120].decode(errors="ignore").encode()  # a close reason has at most 123 bytes
        await self.ws.close(code=code, message=reason)


_CLOSING: set[asyncio.Future[None]] = set()  # close tasks in flight (a task nobody holds may vanish)
