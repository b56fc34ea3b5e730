"""A container's network namespace, entered by its init process before the keep's host side binds
a socket: the keep's listen and connect sockets are the host's, so the namespace they live in is
the container's network.

As runc does with ``linux.namespaces``' ``network`` entry: a path (a Kubernetes pod's, made by
CNI) is joined with ``setns``; an entry without one gets a new namespace (``unshare``) with its
loopback up; no entry leaves the process in the host's. The calling thread changes namespace
(threads, processes and sockets it makes after that are in the new one): call it while the process
has one thread, or on a thread of its own.
"""

from __future__ import annotations

import ctypes
import errno
import os

from motte.shared.errors import MotteError

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFREQ = "16sh22x"  # struct ifreq: the interface's name, then the union's short flags (40 bytes)
NEEDS_ROOT = "motte-oci needs root (CAP_SYS_ADMIN) to place a container in its network namespace"


def enter_network_namespace(path: str | None) -> None:
    """Join the namespace at ``path``; make a new one for ``""``; stay for None."""
    if path is None:
        return
    if path:
        join_network_namespace(path)
    else:
        new_network_namespace()


def join_network_namespace(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise MotteError(f"cannot open the network namespace {path}: {exc.strerror}",
                         hint="give the path of a network namespace (e.g. /var/run/netns/NAME)") from None
    try:
        if _libc().setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            if code == errno.EINVAL:
                raise MotteError(f"{path} is not a network namespace",
                                 hint="give the path of a network namespace (e.g. /var/run/netns/NAME)")
            raise MotteError(f"cannot join the network namespace {path}: {os.strerror(code)}", hint=NEEDS_ROOT)
    finally:
        os.close(fd)


def new_network_namespace() -> None:
    if _libc().unshare(CLONE_NEWNET) != 0:
        raise MotteError(f"cannot make a network namespace: {os.strerror(ctypes.get_errno())}", hint=NEEDS_ROOT)
    _bring_up("lo")


def _bring_up(interface: str) -> None:
    import fcntl
    import socket
    import struct

    name = interface.encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        current = fcntl.ioctl(sock, SIOCGIFFLAGS, struct.pack(IFREQ, name, 0))
        flags = struct.unpack(IFREQ, current)[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack(IFREQ, name, flags | IFF_UP))


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)
