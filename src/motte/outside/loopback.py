"""Whether an address a service listens on is reachable from this machine only (the Steward and
the host agent serve without TLS or a token only there)."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """``host`` is "localhost" or a loopback address (a name that may resolve elsewhere is not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
