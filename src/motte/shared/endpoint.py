"""Blocking, thread-safe I/O around :class:`~motte.shared.channel.ChannelState`: the calls the
application threads of either side make (HELLO, control messages, streams).

This is the I/O edge of the channel protocol, the same on both sides and on every backend; the
threads that move the bytes are in :mod:`motte.shared.channel_io`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from motte.shared.channel import buffer_budget
from motte.shared.channel_io import (
    READER_GRACE,
    ChannelClosed,
    ChannelIO,
    FdWatch,
    OpenHandler,
    StreamAborted,
    StreamObserver,
    Timeout,
    _Inbox,
)

__all__ = ["READER_GRACE", "ChannelClosed", "Endpoint", "FdWatch", "OpenHandler", "StreamAborted", "StreamObserver",
           "Timeout"]


class Endpoint(ChannelIO):
    # ---- handshake and control ----

    def hello(self, timeout: float | None = None, **info: Any) -> dict[str, Any]:
        self.send_hello(**info)
        return self.await_hello(timeout)

    def send_hello(self, **info: Any) -> None:
        with self._lock:
            self._state.send_hello(**info)
            self._queue_outgoing()

    def await_hello(self, timeout: float | None = None) -> dict[str, Any]:
        with self._lock:
            ok = self._wait_for(lambda: self._peer_hello is not None or self._closed is not None, timeout)
            if self._peer_hello is not None:
                return self._peer_hello
            self._raise_if_closed()
            if not ok:
                raise Timeout(f"no HELLO from the peer within {timeout:.0f} s")
            raise ChannelClosed("channel closed during HELLO")

    def send_control(self, op: str, **fields: Any) -> None:
        with self._lock:
            self._raise_if_closed()
            self._state.send_control(op, **fields)
            self._queue_outgoing()

    def recv_control(self, timeout: float | None = None) -> dict[str, Any]:
        with self._lock:
            ok = self._wait_for(lambda: self._controls or self._closed is not None, timeout)
            if self._controls:
                return self._take_control()
            self._raise_if_closed()
            raise Timeout(f"no control message within {timeout} s") if not ok else ChannelClosed("closed")

    # ---- streams ----

    def open_stream(self, kind: str, **meta: Any) -> int:
        with self._lock:
            self._raise_if_closed()
            stream = self._state.open_stream(kind, **meta)
            self._inboxes[stream] = _Inbox()
            self._queue_outgoing()
            return stream

    def accept_stream(self, timeout: float | None = None) -> tuple[int, dict[str, Any]]:
        with self._lock:
            ok = self._wait_for(lambda: self._opened or self._closed is not None, timeout)
            if self._opened:
                return self._opened.popleft()
            self._raise_if_closed()
            raise Timeout("no stream opened") if not ok else ChannelClosed("closed")

    def expect_opens(self, *kinds: str) -> None:
        """Streams the peer opens with these kinds wait for :meth:`accept_stream`.

        A keep's endpoint takes streams of every kind (the host opens a run's streams before its
        launch names them); a host's refuses (resets) those of a kind nobody routes or expects,
        so the keep cannot park streams there for ever.
        """
        with self._lock:
            if self._expected is not None:
                self._expected.update(kinds)

    @property
    def buffer_budget(self) -> int:
        """What this side may buffer of the streams' received data, in total (see :meth:`limit_buffers`)."""
        return self._state.budget

    def limit_buffers(self, memory_limit: int) -> None:
        """Buffer at most what a keep with ``memory_limit`` may, of the streams' received data
        (:func:`~motte.shared.channel.buffer_budget`); the rest waits, for credit, at the sender."""
        with self._lock:
            self._state.budget = buffer_budget(memory_limit)

    def route_opens(self, kind: str, handler: OpenHandler) -> None:
        """Hand streams the peer opens with ``kind`` to ``handler`` instead of :meth:`accept_stream`.

        Many streams (one per network connection) have their own consumer; routing them as they
        arrive keeps them out of the shared accept queue. Streams of ``kind`` already waiting in
        that queue are handed over now, so a route set up late loses nothing.
        """
        with self._lock:
            self._routes[kind] = handler
            waiting = [item for item in self._opened if item[1].get("kind") == kind]
            for item in waiting:
                self._opened.remove(item)
                self._route(item[0], item[1], handler)
            self._queue_outgoing()

    def observe(self, observer: StreamObserver | None) -> None:
        """Have ``observer`` called on the events of claimed streams (see :data:`StreamObserver`)."""
        if observer is not None and self._read_when_waiting:
            raise ValueError("an endpoint that reads when waiting calls no observer (it would run with the lock held)")
        with self._lock:
            self._observer = observer

    def claim(self, stream: int) -> None:
        """From now on, events on ``stream`` go to the observer only, and wake no waiting thread.

        For a consumer of many streams (the host's network relay): waking every blocked reader
        for each of their frames would cost more than the relaying. Nothing may block on a
        claimed stream (read, write beyond credit, wait).
        """
        with self._lock:
            if stream in self._inboxes:
                self._claimed.add(stream)

    def write(self, stream: int, data: bytes | memoryview, deadline: float | None = None) -> None:
        """Send all of ``data``, waiting for credit as needed."""
        view = memoryview(data)
        with self._lock:
            while view:
                if self._closed is not None:
                    self._raise_if_closed()
                inbox = self._inboxes.get(stream)
                if inbox is not None and inbox.reset is not None:
                    raise StreamAborted(f"stream {stream} was reset by the peer: {inbox.reset}")
                if not self._state.is_open(stream):
                    raise StreamAborted(f"stream {stream} is closed")
                taken = self._state.send_data(stream, view)
                if taken:
                    self._queue_outgoing()
                    if taken == len(view):
                        break
                    view = view[taken:]
                    continue
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise Timeout(f"stream {stream}: no credit from the peer before the deadline")
                self._wait_on_stream(inbox, lambda: self._closed is not None or self._writable(stream), remaining)

    def _writable(self, stream: int) -> bool:
        """A write on ``stream`` would not wait (it has credit, or it is closed or reset)."""
        inbox = self._inboxes.get(stream)
        return (not self._state.is_open(stream) or self._state.send_window(stream) > 0
                or (inbox is not None and inbox.reset is not None))

    def write_window(self, stream: int) -> int:
        # Read without the lock (one look-up, atomic under the GIL): the answer may change once
        # returned either way, and every write checks again under the lock.
        return self._state.send_window(stream)

    def read(self, stream: int, size: int, timeout: float | None = None) -> bytes:
        """Up to ``size`` bytes; ``b""`` at EOF. Blocks until data, EOF, reset or timeout."""
        with self._lock:
            inbox = self._open_inbox(stream)
            self._wait_on_stream(
                inbox, lambda: inbox.size or inbox.eof or inbox.reset is not None or self._closed is not None, timeout
            )
            data = self._take_available(stream, inbox, size)
            if data is None:
                raise Timeout(f"stream {stream}: nothing to read within {timeout} s")
            return data

    def read_nowait(self, stream: int, size: int) -> bytes | None:
        """Like :meth:`read` but returns ``None`` instead of blocking."""
        if not self.readable(stream):
            return None  # the common answer of a poll, without the lock (see readable)
        with self._lock:
            inbox = self._inboxes.get(stream)
            if inbox is not None and inbox.size:  # the common case when readable
                return self._take(stream, inbox, size)
            return self._take_available(stream, self._open_inbox(stream), size)

    def _open_inbox(self, stream: int) -> _Inbox:
        inbox = self._inboxes.get(stream)
        if inbox is None:
            raise StreamAborted(f"stream {stream} is not open")
        return inbox

    def _take_available(self, stream: int, inbox: _Inbox, size: int) -> bytes | None:
        """What a read gets now: data, ``b""`` at EOF, an error, or None if it would have to wait."""
        if inbox.size:
            return self._take(stream, inbox, size)
        if inbox.reset is not None:
            raise StreamAborted(f"stream {stream} was reset by the peer: {inbox.reset}")
        if inbox.eof:
            return b""
        self._raise_if_closed()
        return None

    def _take(self, stream: int, inbox: _Inbox, size: int) -> bytes:
        chunks = inbox.chunks
        if len(chunks) == 1 and len(chunks[0]) <= size:  # the common case: all of one chunk
            data = chunks.popleft()
        else:
            pieces: list[bytes] = []
            wanted = size
            while wanted and chunks:
                chunk = chunks[0]
                if len(chunk) <= wanted:
                    pieces.append(chunks.popleft())
                    wanted -= len(chunk)
                else:
                    pieces.append(chunk[:wanted])
                    chunks[0] = chunk[wanted:]
                    wanted = 0
            data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        inbox.size -= len(data)
        # Credit goes back in batches (a quarter of the stream's credit at a time), not per read:
        # with many request/response connections a CREDIT frame per message would double the frames.
        if self._state.consumed(stream, len(data)):
            self._queue_outgoing()
        return data

    def readable(self, stream: int) -> bool:
        """True when a read on ``stream`` would not block.

        Looked at without the lock: under the GIL each field read is atomic, and a thread adding
        to the inbox sets ``size`` after the data, so a reader sees the data in the inbox or it
        sees nothing yet, never a size without the data; an answer is only a snapshot anyway, and
        every wait checks again under the lock.
        """
        inbox = self._inboxes.get(stream)
        return inbox is None or bool(inbox.size) or inbox.eof or inbox.reset is not None or self._closed is not None

    def reset_reason(self, stream: int) -> str | None:
        """Why the peer reset ``stream`` (None if it did not)."""
        with self._lock:
            inbox = self._inboxes.get(stream)
            return None if inbox is None else inbox.reset

    def wait(self, streams: Sequence[int], timeout: float | None, *, writable: Sequence[int] = (),
             condition: Callable[[], bool] | None = None, fds: Sequence[FdWatch] = ()) -> bool:
        """Wait until any of the streams is readable, any ``writable`` stream has credit (or is
        closed), ``condition()`` holds, one of ``fds`` is ready (an endpoint that reads when
        waiting only), or the channel closes; up to ``timeout``.

        ``condition`` runs with the endpoint's lock held: it must not call the endpoint.
        """
        inboxes = self._inboxes

        def ready() -> bool:
            if self._closed is not None:
                return True
            for stream in streams:
                inbox = inboxes.get(stream)
                if inbox is None or inbox.size or inbox.eof or inbox.reset is not None:
                    return True
            for stream in writable:
                if self._writable(stream):
                    return True
            return condition is not None and condition()

        with self._lock:
            self._stream_watchers += 1
            try:
                return self._wait_for(ready, timeout, fds)
            finally:
                self._stream_watchers -= 1

    def eof(self, stream: int) -> None:
        with self._lock:
            if self._closed is None:
                self._state.send_eof(stream)
                self._queue_outgoing()

    def reset(self, stream: int, reason: str = "") -> None:
        with self._lock:
            self._inboxes.pop(stream, None)
            self._claimed.discard(stream)
            if self._closed is None:
                self._state.reset_stream(stream, reason)
                self._queue_outgoing()
