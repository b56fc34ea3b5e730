"""What carries one connection's bytes for a :class:`~motte.keep.net.sockets.StreamSocket`.

For ``prot = "tls"`` the bytes are TLS records: the session is in the socket, above its carrier,
so whichever carries them never holds plaintext. Two carriers:

- :class:`ChannelCarrier`: a channel stream, relayed by the host to its TCP connection (every
  backend; the only way out of a VM);
- :class:`~motte.keep.net.direct.SocketCarrier`: a TCP socket of the keep's own, accepted on a
  listen socket the host handed over (a nil keep, which is a process on the host anyway: the host
  then takes no part in a request and its answer).
"""

from __future__ import annotations

from typing import Protocol

from motte.keep.wasi.files import WakeOn
from motte.shared.endpoint import Endpoint


class Carrier(Protocol):
    """One connection's byte stream, as a socket sees it. Failures raise the channel's
    ``StreamAborted`` (the connection was reset: :meth:`reset_reason` says why) or
    ``ChannelClosed`` (the host is gone)."""

    def read_nowait(self, size: int) -> bytes | None:
        """Up to ``size`` bytes; b"" at EOF; None if none have come yet."""

    def readable(self) -> bool:
        """Whether :meth:`read_nowait` has something (bytes, EOF or a failure) to give."""

    def write_window(self) -> int:
        """How many bytes :meth:`write` takes now without waiting (0: wait for :meth:`wake_on` writable)."""

    def write(self, data: bytes | memoryview, deadline: float | None = None) -> None:
        """Send all of ``data``, waiting (up to the monotonic ``deadline``: the channel's Timeout)
        for room beyond the write window."""

    def eof(self) -> None:
        """No more bytes from this side (the peer reads EOF after what was written)."""

    def reset(self, reason: str = "") -> None:
        """Give the connection up (``netstreams.CLOSED``: in order, after the EOF) and forget it."""

    def reset_reason(self) -> str | None:
        """Why the peer (or the host) reset the connection; None if it did not."""

    def gone(self) -> bool:
        """Whether the channel to the host has closed."""

    def wait(self, *, read: bool, write: bool, timeout: float | None) -> None:
        """Block until there may be something to read (``read``) or room to write (``write``)."""

    def wake_on(self, *, read: bool, write: bool, until: float | None) -> WakeOn:
        """What a ``poll_oneoff`` waits on for the same."""


class ChannelCarrier:
    """A connection relayed by the host: one channel stream."""

    __slots__ = ("_readable_wake", "endpoint", "stream")

    def __init__(self, endpoint: Endpoint, stream: int):
        self.endpoint = endpoint
        self.stream = stream
        self._readable_wake = WakeOn(endpoint, readable=stream)  # the common wait, made once

    def read_nowait(self, size: int) -> bytes | None:
        return self.endpoint.read_nowait(self.stream, size)

    def readable(self) -> bool:
        return self.endpoint.readable(self.stream)

    def write_window(self) -> int:
        return self.endpoint.write_window(self.stream)

    def write(self, data: bytes | memoryview, deadline: float | None = None) -> None:
        self.endpoint.write(self.stream, data, deadline=deadline)

    def eof(self) -> None:
        self.endpoint.eof(self.stream)

    def reset(self, reason: str = "") -> None:
        self.endpoint.reset(self.stream, reason)

    def reset_reason(self) -> str | None:
        return self.endpoint.reset_reason(self.stream)

    def gone(self) -> bool:
        return self.endpoint.closed is not None

    def wait(self, *, read: bool, write: bool, timeout: float | None) -> None:
        self.endpoint.wait((self.stream,) if read else (), timeout, writable=(self.stream,) if write else ())

    def wake_on(self, *, read: bool, write: bool, until: float | None) -> WakeOn:
        if read and not write and until is None:
            return self._readable_wake
        return WakeOn(self.endpoint, readable=self.stream if read else None, writable=self.stream if write else None,
                      until=until)
