"""Keep networking, inside the TCB: sockets over channel streams, TLS that ends in the keep."""


class TlsError(Exception):
    """The TLS session failed (bad peer, failed verification); the connection is dead.

    Defined here, not in ``tls``, so that the sockets can catch it without loading ``ssl``.
    """
