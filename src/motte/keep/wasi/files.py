"""What a WASI file descriptor can be: the base class, null, and channel-backed streams."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from motte.shared.endpoint import ChannelClosed, Endpoint, FdWatch, StreamAborted
from motte.shared.endpoint import Timeout as EndpointTimeout
from motte.shared.wasi_abi import (
    FILESTAT,
    INPUT_RIGHTS,
    OUTPUT_RIGHTS,
    STREAM_RIGHTS,
    Errno,
    FdFlags,
    Filetype,
    Rights,
    WasiError,
)

# Rights that come with the access mode: without them the fd is "not open for reading (writing)".
_ACCESS = int(Rights.FD_READ | Rights.FD_WRITE | Rights.FD_ALLOCATE | Rights.FD_FILESTAT_SET_SIZE)
_SEEK_TELL = int(Rights.FD_SEEK | Rights.FD_TELL)


class DeadlineExceeded(Exception):
    """A blocking call ran into the workload's wall-clock deadline."""


class WakeOn(NamedTuple):
    """What a ``poll_oneoff`` waiting on a file watches on the channel to end its wait."""

    endpoint: Endpoint
    readable: int | None = None  # a stream whose data, EOF or reset matters
    writable: int | None = None  # a stream whose credit matters
    condition: Callable[[], bool] | None = None  # checked with the endpoint's lock held
    until: float | None = None  # a monotonic time by which to look again regardless (a timer)
    fd: FdWatch | None = None  # a descriptor of the keep's own (a socket the host handed over) and its poll events


class WasiFile:
    """A file descriptor's object. Operations it does not support fail as POSIX would.

    The class's ``rights_base`` and ``rights_inheriting`` are the most an fd of its kind can have.
    Each fd has its own (set when it enters the fd table): a WASI call needs its right, and only
    ``fd_fdstat_set_rights`` changes them, never upwards.
    """

    filetype = Filetype.UNKNOWN
    rights_base = 0
    rights_inheriting = 0
    cannot_seek = Errno.SPIPE  # what seeking fails with on a kind of fd that has no offset

    def __init__(self) -> None:
        self.flags = FdFlags(0)

    def refusal(self, missing: int) -> Errno:
        """The errno of a call that needs the rights ``missing``, which this fd does not have."""
        if missing & _ACCESS:
            return Errno.BADF  # not open for reading (writing), as POSIX says
        if missing & type(self).rights_base:
            return Errno.NOTCAPABLE  # dropped with fd_fdstat_set_rights, or not asked for at path_open
        return self.cannot_seek if missing & _SEEK_TELL else Errno.BADF  # never for this kind of fd

    def read(self, size: int, deadline: float | None) -> bytes | None:
        """Up to ``size`` bytes, ``b""`` at the end. None if the fd is non-blocking and the read
        would block (EAGAIN: returned rather than raised, since an event loop meets it on every
        read, and raising costs several microseconds)."""
        raise WasiError(Errno.BADF)

    def write(self, data: bytes, deadline: float | None) -> int:
        raise WasiError(Errno.BADF)

    def pread(self, size: int, offset: int) -> bytes:
        raise WasiError(Errno.SPIPE)

    def pwrite(self, data: bytes, offset: int) -> int:
        raise WasiError(Errno.SPIPE)

    def seek(self, offset: int, whence: int) -> int:
        raise WasiError(Errno.SPIPE)

    def stat(self) -> bytes:
        """A packed WASI filestat."""
        return FILESTAT.pack(0, 0, self.filetype, 1, 0, 0, 0, 0)

    def set_flags(self, flags: FdFlags) -> None:
        # Only NONBLOCK can change after open, as with fcntl(F_SETFL) on most systems.
        if flags & ~FdFlags.NONBLOCK:
            raise WasiError(Errno.NOTSUP)
        self.flags = FdFlags((self.flags & ~FdFlags.NONBLOCK) | flags)

    # Files in a directory (local or served by the host) override these; streams cannot.
    def set_size(self, size: int) -> None:
        raise WasiError(Errno.BADF)

    def set_times(self, atim: int, mtim: int, fst_flags: int) -> None:
        raise WasiError(Errno.BADF)

    def allocate(self, offset: int, length: int) -> None:
        raise WasiError(Errno.BADF)

    def readable_now(self) -> bool:
        """A read would not block (data, EOF or an error is ready)."""
        return True

    def writable_now(self) -> bool:
        return True

    def wake_on(self, write: bool) -> WakeOn | None:
        """What to watch while a poll waits for this file to become readable (or writable)."""
        return None

    def flush(self) -> None:
        pass

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


class NullFile(WasiFile):
    """``kind = "null"``: reads see EOF, writes vanish, and seeks stay at 0, as with /dev/null.

    Being seekable is what tells wasi-libc's ``isatty`` that this character device is no terminal."""

    filetype = Filetype.CHARACTER_DEVICE
    rights_base = STREAM_RIGHTS | _SEEK_TELL

    def read(self, size: int, deadline: float | None) -> bytes:
        return b""

    def write(self, data: bytes, deadline: float | None) -> int:
        return len(data)

    def pread(self, size: int, offset: int) -> bytes:
        return b""

    def pwrite(self, data: bytes, offset: int) -> int:
        return len(data)

    def seek(self, offset: int, whence: int) -> int:
        return 0


def stdio_filetype(terminal: bool) -> Filetype:
    """What fdstat says a stdio stream is: a character device only when the host's end is a
    terminal (so libc and language runtimes buffer output as they would outside the keep), else
    unknown, as wasmtime says for a pipe or a file."""
    return Filetype.CHARACTER_DEVICE if terminal else Filetype.UNKNOWN


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DeadlineExceeded()
    return remaining


class ChannelInput(WasiFile):
    """A stream the host feeds (stdin)."""

    rights_base = INPUT_RIGHTS

    def __init__(self, endpoint: Endpoint, stream: int, on_block: ChannelOutputs | None = None,
                 terminal: bool = False):
        super().__init__()
        self.filetype = stdio_filetype(terminal)
        self.endpoint = endpoint
        self.stream = stream
        self._on_block = on_block

    def read(self, size: int, deadline: float | None) -> bytes:
        try:
            data = self.endpoint.read_nowait(self.stream, size)
            if data is not None:
                return data
            if self.flags & FdFlags.NONBLOCK:
                raise WasiError(Errno.AGAIN)
            # About to block for input: output written so far (a prompt) must reach the user.
            if self._on_block is not None:
                self._on_block.flush_all()
            while True:
                try:
                    return self.endpoint.read(self.stream, size, timeout=_remaining(deadline))
                except EndpointTimeout:
                    continue  # _remaining raises once the deadline has really passed
        except (StreamAborted, ChannelClosed):
            return b""  # the host went away: the workload sees end of input

    def readable_now(self) -> bool:
        return self.endpoint.readable(self.stream)

    def wake_on(self, write: bool) -> WakeOn | None:
        return None if write else WakeOn(self.endpoint, readable=self.stream)


class ChannelOutput(WasiFile):
    """A stream to the host (stdout, stderr). Small writes are coalesced into large frames."""

    rights_base = OUTPUT_RIGHTS
    COALESCE = 256 << 10

    def __init__(self, endpoint: Endpoint, stream: int, *, buffered: bool, terminal: bool = False):
        super().__init__()
        self.filetype = stdio_filetype(terminal)
        self.endpoint = endpoint
        self.stream = stream
        self.buffered = buffered
        self._buffer = bytearray()
        self._lock = threading.Lock()
        self.broken = False
        self.on_pending: Callable[[], None] | None = None  # told when the buffer stops being empty

    def write(self, data: bytes, deadline: float | None) -> int:
        if self.broken:
            raise WasiError(Errno.PIPE)
        # One lock covers buffering and sending, so the flusher thread cannot reorder chunks.
        with self._lock:
            if not self.buffered:
                self._send(data, deadline)
                return len(data)
            if not self._buffer and self.on_pending is not None:
                self.on_pending()
            self._buffer += data
            if len(self._buffer) >= self.COALESCE:
                self._send_buffer(deadline)
        return len(data)

    def _send_buffer(self, deadline: float | None) -> None:
        chunk = bytes(self._buffer)
        self._buffer.clear()
        self._send(chunk, deadline)

    def _send(self, data: bytes, deadline: float | None) -> None:
        try:
            self.endpoint.write(self.stream, data, deadline=deadline)
        except EndpointTimeout:
            raise DeadlineExceeded() from None
        except (StreamAborted, ChannelClosed):
            self.broken = True
            raise WasiError(Errno.PIPE) from None

    def flush(self) -> None:
        if not self._buffer:
            return  # (only the workload's thread adds to it; this runs before each block)
        with self._lock:
            if self._buffer:
                try:
                    self._send_buffer(None)
                except WasiError:
                    pass

    def pending(self) -> bool:
        return bool(self._buffer)

    def writable_now(self) -> bool:
        return self.broken or self.endpoint.write_window(self.stream) > 0

    def wake_on(self, write: bool) -> WakeOn | None:
        return WakeOn(self.endpoint, writable=self.stream) if write else None

    def close(self) -> None:
        self.flush()
        self.endpoint.eof(self.stream)


class ChannelOutputs:
    """Flushes buffered outputs: before the workload blocks, and ``interval`` seconds after output
    starts to gather, so output from a long computation is not held back. With nothing buffered the
    flusher sleeps: an idle keep does not wake up for it."""

    def __init__(self, interval: float = 0.02):
        self.outputs: list[ChannelOutput] = []
        self._interval = interval
        self._stop = threading.Event()
        self._gathering = threading.Event()  # some output's buffer is not empty
        self._thread: threading.Thread | None = None

    def add(self, output: ChannelOutput) -> None:
        output.on_pending = self._gathering.set
        self.outputs.append(output)

    def flush_all(self) -> None:
        for output in self.outputs:
            output.flush()

    def start(self) -> None:
        if any(o.buffered for o in self.outputs):
            self._thread = threading.Thread(target=self._run, name="stdout-flusher", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            self._gathering.wait()
            if self._stop.wait(self._interval):
                return
            # Cleared before flushing: what is written from now on sets it again.
            self._gathering.clear()
            if self._stop.is_set():
                # stop() came after the wait above and its wake-up was just cleared: waiting for
                # output again would wait for ever (and stop() joins this thread).
                return
            for output in self.outputs:
                if output.pending():
                    output.flush()

    def stop(self) -> None:
        self._stop.set()
        self._gathering.set()
        if self._thread is not None:
            self._thread.join()
        self.flush_all()
