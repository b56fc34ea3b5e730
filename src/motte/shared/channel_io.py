"""The threads under an :class:`~motte.shared.endpoint.Endpoint`: reading, dispatching, writing.

A reader thread turns received bytes into per-stream inboxes, a writer thread sends queued bytes.
Application threads never block on a transport write, so neither side can deadlock the other by
writing while the peer writes; what they queue is bounded by the stream credit.

With ``read_when_waiting`` (the keep's side) a thread that must wait for the peer reads the
transport itself instead of sleeping until the reader thread wakes it: a request then reaches the
workload with one thread switch less, which is most of a small message's latency. The reader
thread steps aside while anyone waits and takes over once the waiting has stopped for a while (a
workload busy computing: within about a second), so the channel is always read. On the host,
another thread's event loop may take the reading over (:meth:`ChannelIO.lend_reading`).
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Self

from motte.shared.channel import (
    ChannelState,
    Control,
    CreditGranted,
    Data,
    Hello,
    ProtocolError,
    Role,
    StreamEnded,
    StreamOpened,
    StreamRefused,
    StreamReset,
)
from motte.shared.errors import MotteError
from motte.shared.transport import READ_SIZE, Transport, drop_sent

#: Frames up to this size are sent by the thread that queued them when the writer is idle: a small
#: message then costs no thread switch. Larger ones go to the writer thread, so the copy into the
#: kernel overlaps with the producer's next work (stdout, bulk transfers).
DIRECT_SEND_MAX = 32 << 10
#: With ``read_when_waiting``: how long no thread must have waited before the reader thread takes
#: the transport back (it then holds it until the next message arrives).
READER_GRACE = 0.02
#: How often the stepped-aside reader thread looks whether the waiting has stopped. Nobody tells it
#: (that would wake it on every request); looking rarely keeps an idle keep idle (1 wake-up a second).
READER_RECHECK = 1.0

#: Streams the peer opened that may wait for accept_stream at once; more are refused.
MAX_UNACCEPTED = 256
#: Control messages received and not yet taken by recv_control: a peer that sends more than this
#: breaks the protocol (the message sequence allows a few at a time; the host reads every
#: ``accepted`` as it comes), and holding them would let it grow this side without bound.
MAX_UNREAD_CONTROLS = 1024
MAX_UNREAD_CONTROL_BYTES = 4 << 20  # a launch is at most 1 MiB
#: Called with a claimed stream's id when it gets data, EOF, a reset or credit (0: the channel
#: closed). Runs on the reader thread, without the endpoint's lock: it may use the endpoint, but
#: the channel is not read while it runs, so it must not block.
StreamObserver = Callable[[int], None]
#: Takes a stream the peer opened (stream id, OPEN metadata); returns None to keep it or a reason
#: to refuse it (the stream is then reset). Runs on the reader thread with the endpoint's lock
#: held: it must only take note and return, never call back into the endpoint.
OpenHandler = Callable[[int, dict[str, Any]], str | None]


#: A file descriptor a waiting thread watches besides the channel, and the poll events it waits for.
FdWatch = tuple[int, int]


def _poll_ms(timeout: float) -> int:
    return math.ceil(min(max(timeout, 0.0), 86400.0) * 1000)  # poll takes an int of ms


class ChannelClosed(MotteError):
    """The channel ended: the peer went away or broke the protocol."""


class StreamAborted(MotteError):
    """The peer reset the stream."""


class Timeout(MotteError):
    pass


class _Condition(threading.Condition):
    """A condition variable that knows whether any thread waits on it: ``notify_all`` is called for
    every read of the channel, and with nobody to wake it would still cost a chain of Python calls."""

    def __init__(self, lock: threading.Lock):
        super().__init__(lock)
        self.waiting = 0  # threads in wait() (changed with the lock held)

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting += 1
        try:
            return super().wait(timeout)
        finally:
            self.waiting -= 1

    def notify_all(self) -> None:
        if self.waiting:
            super().notify_all()


class _Inbox:
    __slots__ = ("chunks", "eof", "reset", "size", "waiters")

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.eof = False
        self.reset: str | None = None
        self.waiters: threading.Condition | None = None  # threads blocked on this stream alone


class ChannelIO:
    """The state and threads of an endpoint; :class:`~motte.shared.endpoint.Endpoint` adds the
    calls application threads make."""

    def __init__(self, transport: Transport, role: Role, *, window: int | None = None, name: str = "channel",
                 read_when_waiting: bool = False):
        self._transport = transport
        self._state = ChannelState(role) if window is None else ChannelState(role, window)
        self._lock = threading.Lock()
        self._changed = _Condition(self._lock)  # inboxes, credit, queues, closure
        self._to_send = threading.Condition(self._lock)
        self._pending: list[bytes | memoryview] = []
        self._inboxes: dict[int, _Inbox] = {}
        self._controls: deque[Control] = deque()
        self._unread_control_bytes = 0
        self._opened: deque[tuple[int, dict[str, Any]]] = deque()
        # The kinds of stream the peer may open for accept_stream (None: every kind, on the keep).
        self._expected: set[str] | None = None if role == "keep" else set()
        self._routes: dict[str, OpenHandler] = {}
        self._observer: StreamObserver | None = None
        self._claimed: set[int] = set()  # streams whose events go to the observer, not to waiters
        self._touched: list[int] = []  # claimed streams with news, for the observer
        self._wake_waiters = False
        self._stream_watchers = 0  # threads in wait(): woken by any stream's events
        self._writing = False  # the writer thread is sending outside the lock
        self._send_nowait: Callable[[list[bytes | memoryview]], int] | None = getattr(transport, "send_nowait", None)
        self._peer_hello: dict[str, Any] | None = None
        self._closed: BaseException | None = None
        self._transport_done = False
        self.name = name
        self.bytes_received = 0
        self.bytes_sent = 0
        self._read_when_waiting = read_when_waiting
        self._reading = False  # a thread is receiving from the transport, outside the lock
        self._waiting = 0  # threads blocked in _wait_for (reading, or sleeping while another reads)
        self._waits_ended = 0.0  # when _waiting last dropped to 0
        self._reader_turn = threading.Condition(self._lock)  # the reader thread, stepping aside
        self._poller: select.poll | None = None
        self._fd_poller: tuple[tuple[tuple[FdWatch, ...], int], select.poll] | None = None  # see _poller_with
        self._lent = False  # another thread's event loop reads the transport (lend_reading)
        self._lend_r, self._lend_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._reader = threading.Thread(target=self._read_loop, name=f"{name}-reader", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name=f"{name}-writer", daemon=True)

    def start(self) -> Self:
        self._reader.start()
        self._writer.start()
        return self

    # ---- lifetime ----

    @property
    def closed(self) -> BaseException | None:
        return self._closed

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued byte has been handed to the transport."""
        with self._lock:
            return self._changed.wait_for(
                lambda: (not self._pending and not self._writing) or self._closed is not None, timeout
            )

    def close(self) -> None:
        with self._lock:
            self._close_with(ChannelClosed("channel closed by this side"))
            wake, self._lend_w = self._lend_w, -1
        self._transport.close()
        if wake < 0:
            return  # closed before
        with contextlib.suppress(OSError):
            os.write(wake, b"\0")  # a reader thread in poll: closing a transport may not wake it
        if self._reader.ident is not None and self._reader is not threading.current_thread():
            self._reader.join(5.0)
        os.close(wake)
        os.close(self._lend_r)

    def _route(self, stream: int, meta: dict[str, Any], handler: OpenHandler) -> None:
        refusal = handler(stream, meta)
        if refusal is not None:
            self._refuse(stream, refusal)

    def _refuse(self, stream: int, reason: str) -> None:
        """Lock held: reset a stream the peer opened, which nobody here takes."""
        self._inboxes.pop(stream, None)
        self._state.reset_stream(stream, reason)

    # ---- internals ----

    def _raise_if_closed(self) -> None:
        if self._closed is not None:
            if isinstance(self._closed, MotteError):
                raise self._closed
            raise ChannelClosed(f"channel closed: {self._closed}")

    def _queue_outgoing(self) -> None:
        """Send or queue what the protocol state has for the peer."""
        buffers = self._state.outgoing()
        if not buffers:
            return
        if (self._send_nowait is not None and not self._pending and not self._writing and self._closed is None
                and (size := sum(map(len, buffers))) <= DIRECT_SEND_MAX):
            # The writer thread is idle: send from this thread, without blocking. A small message
            # then costs no thread switch, which is most of its latency.
            try:
                sent = self._send_nowait(buffers)
            except OSError as exc:
                self._close_with(ChannelClosed(f"channel write failed: {exc.strerror or exc}"))
                return
            self.bytes_sent += sent
            if sent == size:
                return
            buffers = drop_sent(buffers, sent)
            if not buffers:
                return
        self._pending += buffers
        self._to_send.notify()

    def _fail(self, error: BaseException) -> None:
        with self._lock:
            self._close_with(error)
            observer = self._observer
        if observer is not None:
            observer(0)

    def _close_with(self, error: BaseException) -> None:
        if self._closed is None:
            self._closed = error
        self._changed.notify_all()
        for inbox in self._inboxes.values():
            if inbox.waiters is not None:
                inbox.waiters.notify_all()
        self._to_send.notify_all()
        self._reader_turn.notify_all()

    def _wait_for(self, ready: Callable[[], object], timeout: float | None, fds: Sequence[FdWatch] = ()) -> bool:
        """``Condition.wait_for`` on ``_changed`` (lock held), reading the transport in this thread
        while no other thread does, if the endpoint reads when waiting. With ``fds`` (only where
        the endpoint reads when waiting) it also ends when one of those descriptors is ready."""
        if not self._read_when_waiting:
            if fds:
                raise ValueError("only an endpoint that reads when waiting watches other descriptors")
            return bool(self._changed.wait_for(ready, timeout))
        if ready():
            return True
        if timeout is not None and timeout <= 0:
            return False
        end = None if timeout is None else time.monotonic() + timeout
        remaining = timeout
        # Counted as waiting only once it blocks: a thread that polls in a loop must not keep the
        # reader thread from the transport.
        self._waiting += 1
        try:
            while True:
                if self._reading or self._closed is not None:
                    if not fds:
                        self._changed.wait(remaining)
                    elif self._poll_beside_reader(fds, remaining):
                        return True
                elif self._read_here(remaining, fds):
                    return True
                if ready():
                    return True
                if end is not None:
                    remaining = end - time.monotonic()
                    if remaining <= 0:
                        return False
        finally:
            self._waiting -= 1
            if not self._waiting:
                self._waits_ended = time.monotonic()

    def _read_here(self, timeout: float | None, fds: Sequence[FdWatch] = ()) -> bool:
        """Lock held: one read of the transport by this thread, up to ``timeout``, unless one of
        ``fds`` is ready first (then True)."""
        transport_fd = self._transport.fileno()
        poller = self._poller_with(fds, transport_fd)
        self._reading = True
        self._lock.release()
        data: bytes | BaseException | None = None
        others_ready = False
        try:
            # (poll, not a blocked recv: see _read_loop)
            events = poller.poll(None if timeout is None else _poll_ms(timeout))
            channel_ready = bool(events) if not fds else any(fd == transport_fd for fd, _ in events)
            others_ready = len(events) > channel_ready
            if channel_ready:
                data = self._transport.recv(READ_SIZE)
        except OSError as exc:
            data = exc
        finally:
            self._lock.acquire()
            if data is None:  # nothing came (or this thread is leaving with an exception)
                self._reading = False
                self._changed.notify_all()  # the transport is free: another waiting thread may read it
        if data is not None:
            self._received(data)
        return others_ready

    def _poll_beside_reader(self, fds: Sequence[FdWatch], timeout: float | None) -> bool:
        """Lock held, another thread reading the transport (or the channel closed): wait for one of
        ``fds`` (then True) or for the transport to have input, which that thread takes; then wait
        until it has."""
        transport_fd = -1 if self._closed is not None else self._transport.fileno()
        poller = self._poller_with(fds, transport_fd)
        self._lock.release()
        try:
            events = poller.poll(None if timeout is None else _poll_ms(timeout))
        finally:
            self._lock.acquire()
        if any(fd != transport_fd for fd, _ in events):
            return True
        if events and self._reading:
            self._changed.wait(timeout)  # woken when the reader has handled what came
        return False

    def _poller_with(self, fds: Sequence[FdWatch], transport_fd: int) -> select.poll:
        """Lock held: a poll object for ``fds`` and the transport (``transport_fd``; -1: none),
        made once for the descriptors a waiting thread watches again and again."""
        if not fds and transport_fd >= 0:
            if self._poller is None:
                self._poller = select.poll()
                self._poller.register(transport_fd, select.POLLIN)
            return self._poller
        key = (tuple(fds), transport_fd)
        if self._fd_poller is None or self._fd_poller[0] != key:
            poller = select.poll()
            if transport_fd >= 0:
                poller.register(transport_fd, select.POLLIN)
            for fd, events in fds:
                poller.register(fd, events)
            self._fd_poller = (key, poller)
        return self._fd_poller[1]

    def _take_reader_turn(self) -> bool:
        """The reader thread of an endpoint that reads when waiting: wait until no thread has waited
        for READER_GRACE, then hold the transport. False once the channel is closed."""
        with self._lock:
            while self._closed is None:
                if self._reading or self._waiting:
                    self._reader_turn.wait(READER_RECHECK)
                    continue
                idle = time.monotonic() - self._waits_ended
                if idle >= READER_GRACE:
                    self._reading = True
                    return True
                self._reader_turn.wait(READER_GRACE - idle)
            return False

    def _read_loop(self) -> None:
        # Wait in poll, then receive: a thread blocked in recv on a socket is also woken each time
        # the peer reads from its end (the kernel signals "writable" on the same wait queue), which
        # costs the peer a cross-CPU wake-up per message. poll waits for input only.
        transport_fd = self._transport.fileno()
        if transport_fd < 0:
            return  # closed before this thread started (reclaim_reading races the channel's end)
        ready_to_read = select.poll()
        ready_to_read.register(transport_fd, select.POLLIN)
        ready_to_read.register(self._lend_r, select.POLLIN)
        while True:
            if self._read_when_waiting and not self._take_reader_turn():
                return
            data: bytes | BaseException
            try:
                ready_to_read.poll()
                # The lend pipe is written only after one of these is set: if neither is, the
                # transport is what became readable. (Checked without the lock: one read a frame.)
                if self._lent or self._closed is not None:
                    with self._lock:
                        self._reading = False
                    return
                data = self._transport.recv(READ_SIZE)
            except Exception as exc:  # OSError, or a bug: either ends the channel (it must not strand a waiter)
                data = exc
            if not self._handle_read(data):
                return

    def _handle_read(self, data: bytes | BaseException) -> bool:
        """What one read of the transport gave, handled, and the observer told: False once closed."""
        with self._lock:
            self._received(data)
            touched = self._touched
            if touched:
                self._touched = []
            observer = self._observer
            closed = self._closed is not None
        if observer is not None:
            if len(touched) == 1:
                observer(touched[0])
            elif touched:
                for stream in dict.fromkeys(touched):  # each once, in order
                    observer(stream)
            if closed:
                observer(0)
        return not closed

    # ---- reading by another thread's event loop ----

    def lend_reading(self) -> int:
        """Stop the reader thread and return the transport's file descriptor: from now on the
        caller's event loop reads the channel, calling :meth:`pump` whenever that descriptor is
        readable, until :meth:`reclaim_reading`. The host's network relay does this so that one
        thread wakes for a request and for its answer: two threads would hand the GIL to each
        other on every round trip."""
        if self._read_when_waiting:
            raise ValueError("an endpoint that reads when waiting reads in its waiting threads")
        with self._lock:
            self._lent = True
            if self._lend_w >= 0:
                os.write(self._lend_w, b"\0")
        if self._reader.is_alive():
            self._reader.join()
        return self._transport.fileno()

    def pump(self) -> bool:
        """The lent transport is readable: read it once and handle what came (see
        :meth:`lend_reading`). False once the channel is closed."""
        try:
            data: bytes | BaseException = self._transport.recv(READ_SIZE)
        except Exception as exc:  # as in _read_loop
            data = exc
        return self._handle_read(data)

    def reclaim_reading(self) -> None:
        """Start a reader thread again after :meth:`lend_reading`."""
        with self._lock:
            if not self._lent:
                return
            self._lent = False
            closed = self._closed is not None
            if not closed:
                os.read(self._lend_r, 64)
        if not closed:
            self._reader = threading.Thread(target=self._read_loop, name=f"{self.name}-reader", daemon=True)
            self._reader.start()

    def _received(self, data: bytes | BaseException) -> None:
        """Lock held: take what one read of the transport gave, bytes or the error it raised."""
        self._reading = False
        if isinstance(data, BaseException):
            self._close_with(ChannelClosed(f"channel read failed: {getattr(data, 'strerror', None) or data}"))
            return
        if not data:
            self._close_with(ChannelClosed("the peer closed the channel"))
            return
        self.bytes_received += len(data)
        self._wake_waiters = False
        try:
            one = self._state.receive_data(data)
            if one is not None:  # the common case: one DATA frame (it leaves nothing to send)
                self._on_data(*one)
            else:
                for event in self._state.receive(data):
                    self._dispatch(event)
                self._queue_outgoing()
        except ProtocolError as exc:
            self._close_with(exc)
            return
        except Exception as exc:
            self._close_with(ChannelClosed(f"channel reader failed: {type(exc).__name__}: {exc}"))
            return
        if self._wake_waiters or self._read_when_waiting:  # (the transport is free: a waiter may read it)
            self._changed.notify_all()

    def _dispatch(self, event: object) -> None:
        if isinstance(event, Data):  # the common case first
            self._on_data(event.stream, event.data)
        elif isinstance(event, CreditGranted):
            self._notify(event.stream)  # blocked writers re-check credit on notify_all; observers here
        elif isinstance(event, Control):
            self._wake_waiters = True
            self._queue_control(event)
        elif isinstance(event, StreamOpened):
            self._wake_waiters = True
            self._inboxes[event.stream] = _Inbox()
            kind = event.meta["kind"]
            handler = self._routes.get(kind)
            if handler is not None:
                self._route(event.stream, event.meta, handler)
            elif self._expected is not None and kind not in self._expected:
                self._refuse(event.stream, f"no stream of kind {kind[:64]!r} is expected here")
            elif len(self._opened) >= MAX_UNACCEPTED:
                self._refuse(event.stream, f"{MAX_UNACCEPTED} opened streams wait to be accepted already")
            else:
                self._opened.append((event.stream, event.meta))
        elif isinstance(event, StreamEnded):
            inbox = self._inboxes.get(event.stream)
            if inbox is not None:
                inbox.eof = True
            self._notify(event.stream)
        elif isinstance(event, StreamReset):
            inbox = self._inboxes.get(event.stream)
            if inbox is not None:
                inbox.reset = event.reason or "reset"
            self._notify(event.stream)
        elif isinstance(event, Hello):
            self._wake_waiters = True
            self._peer_hello = event.info
        elif isinstance(event, StreamRefused):
            self._wake_waiters = True  # (nothing for them: it is answered with RESET by the state machine)

    def _queue_control(self, control: Control) -> None:
        if len(self._controls) >= MAX_UNREAD_CONTROLS:
            raise ProtocolError(f"the peer sent more than {MAX_UNREAD_CONTROLS} control messages that wait unread")
        if self._unread_control_bytes + control.size > MAX_UNREAD_CONTROL_BYTES:
            raise ProtocolError(f"the peer sent more than {MAX_UNREAD_CONTROL_BYTES} bytes of control messages "
                                "that wait unread")
        self._controls.append(control)
        self._unread_control_bytes += control.size

    def _take_control(self) -> dict[str, Any]:
        control = self._controls.popleft()
        self._unread_control_bytes -= control.size
        return control.message

    def _on_data(self, stream: int, data: bytes) -> None:
        inbox = self._inboxes.get(stream)
        if inbox is not None and data:
            inbox.chunks.append(data)
            inbox.size += len(data)  # (after the data: see Endpoint.readable)
        self._notify(stream, inbox)

    def _notify(self, stream: int, inbox: _Inbox | None = None) -> None:
        """Wake what waits on ``stream`` (its ``inbox``, if the caller has it at hand)."""
        if stream in self._claimed:
            self._touched.append(stream)
            return
        if inbox is None:
            inbox = self._inboxes.get(stream)
        if inbox is not None and inbox.waiters is not None:
            inbox.waiters.notify_all()
        if inbox is None or self._stream_watchers or self._read_when_waiting:
            self._wake_waiters = True

    def _wait_on_stream(self, inbox: _Inbox | None, ready: Callable[[], object], timeout: float | None) -> bool:
        """Lock held: wait for ``ready``, which only events on ``inbox``'s stream (or the channel's
        end) can make true. Such a wait is woken by those events only: the host's threads (each
        served directory's, the output pumps, the control loop) do not all wake on every frame.
        An endpoint that reads when waiting waits as always (the waiting thread reads)."""
        if self._read_when_waiting or inbox is None:
            return self._wait_for(ready, timeout)
        if inbox.waiters is None:
            inbox.waiters = threading.Condition(self._lock)
        return bool(inbox.waiters.wait_for(ready, timeout))

    def _write_loop(self) -> None:
        while True:
            with self._lock:
                self._writing = False
                if not self._pending:
                    self._changed.notify_all()  # flush() waiters
                self._to_send.wait_for(lambda: self._pending or self._closed is not None)
                if not self._pending:
                    return
                buffers, self._pending = self._pending, []
                self._writing = True  # until these are out, other threads must not send directly
            try:
                self._transport.send_buffers(buffers)
                self.bytes_sent += sum(len(b) for b in buffers)
            except OSError as exc:
                self._fail(ChannelClosed(f"channel write failed: {exc.strerror or exc}"))
                return
