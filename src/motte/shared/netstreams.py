"""How network connections travel on the channel: the conventions both sides follow. Pure data.

One TCP connection is one channel stream; the host does TCP, the bytes on the stream are what
the wire carries (TLS records for ``prot = "tls"``: the session ends inside the keep).

- A connection the host accepted on a listen socket: the host opens a stream of kind
  :data:`ACCEPTED` with ``fd`` (the listen socket's WASI fd) and ``peer`` (``"addr:port"``,
  informational). When the workload takes it (``sock_accept``) the keep sends the control message
  :class:`motte.shared.control.Accepted`: the host holds at most a backlog of streams the workload
  has not taken yet per listen socket, and lets further clients wait in the kernel's queue.
- An outbound connection: the keep opens a stream of kind :data:`CONNECT` with ``fd``, ``host``
  and ``port`` (which must match the workload config). Once the TCP connection is up, the host's
  first byte on the stream is :data:`CONNECTED`; the relayed bytes follow. If it cannot connect it
  resets the stream with a reason made by :func:`failure`.
- The keep runtime's connection to the Steward the config names (to get its certificate before
  the workload starts): a stream of kind :data:`CONNECT` with :data:`STEWARD` ``= True``, ``host``
  and ``port`` (which must be the ``steward`` URL's), and no ``fd``; it then behaves as above.
- Either side ends a connection with EOF (half close) and/or RESET. A RESET with the reason
  :data:`CLOSED` is an orderly close after the data sent before it; any other reason is an
  error worth reporting, but :data:`UNACCEPTED`: the keep resets the connections the workload
  never took when it closes their listen socket, and the host then accepts no more for it.
"""

from __future__ import annotations

from typing import Any

ACCEPTED = "accepted"
CONNECT = "connect"
STEWARD = "steward"
CONNECTED = b"\0"
CLOSED = "closed"
UNACCEPTED = "unaccepted"

#: The errno names a failure reason may carry; anything else reads as ECONNRESET.
ERRNO_NAMES = frozenset({
    "ECONNREFUSED", "ECONNRESET", "ECONNABORTED", "EHOSTUNREACH", "ENETUNREACH", "ETIMEDOUT", "EACCES",
    "EPIPE", "EADDRNOTAVAIL", "ENETDOWN",
})


def address(sockaddr: tuple[Any, ...]) -> str:
    """A peer's or a socket's address as shown to people: ``host:port``, ``[v6 host]:port``."""
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def failure(errno_name: str, text: str) -> str:
    """A RESET reason that tells the other side which errno the workload should see."""
    name = errno_name if errno_name in ERRNO_NAMES else "ECONNRESET"
    return f"{name}: {text}"


def failure_errno(reason: str | None) -> str:
    """The errno name a RESET reason carries (ECONNRESET when it names none)."""
    if not reason:
        return "ECONNRESET"
    name = reason.split(":", 1)[0].strip()
    return name if name in ERRNO_NAMES else "ECONNRESET"
