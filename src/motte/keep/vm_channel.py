"""Inside a VM keep: find and open the virtio serial port that carries the channel.

The host names the port (:data:`motte.shared.vm_port.PORT_NAME`); the guest kernel lists it as
``/sys/class/virtio-ports/vportNpM/name`` and devtmpfs makes ``/dev/vportNpM``. Two races are
handled here, both seen on real boots:

* the port may not be enumerated yet when the keep starts (the virtio driver probes
  asynchronously), so the sysfs listing is polled;
* the device node appears before the port is ready, and ``open`` fails with ENXIO for a moment
  (docs/vm-keep.md, "Pitfalls", 2), so the open is retried.

It also holds the keep's side of the *park and resume* step of a kvm keep that the host may
snapshot (see :func:`park`); the records both sides exchange are in :mod:`motte.shared.vm_port`.

Only the standard library: this module is part of the keep's trusted computing base.
"""

from __future__ import annotations

import errno
import os
import struct
import sys
import time

from motte.shared.transport import ReceiveBuffer, send_vectored
from motte.shared.vm_port import PARKED, RESUME, Resume

PORTS_DIR = "/sys/class/virtio-ports"
_RETRY_ERRNOS = (errno.ENXIO, errno.ENOENT, errno.ENODEV, errno.EBUSY)


class PortNotFound(OSError):
    """No virtio serial port of that name appeared, or it never became openable, in time."""


def find_virtio_port(name: str, ports_dir: str = PORTS_DIR) -> str | None:
    """The ``vportNpM`` device name whose sysfs ``name`` is ``name``, or None if none is (yet)."""
    try:
        entries = sorted(os.listdir(ports_dir))
    except FileNotFoundError:
        return None
    for entry in entries:
        try:
            with open(os.path.join(ports_dir, entry, "name"), encoding="utf-8") as handle:
                if handle.read().strip() == name:
                    return entry
        except OSError:
            continue  # the port is being set up or torn down; look again next round
    return None


def open_virtio_port(
    name: str, timeout: float, *, ports_dir: str = PORTS_DIR, dev_dir: str = "/dev", poll: float = 0.005
) -> int:
    """Open the named virtio serial port read-write; return its file descriptor.

    Waits up to ``timeout`` seconds for the port to appear and become openable.
    """
    deadline = time.monotonic() + timeout
    last_error: OSError | None = None
    while True:
        port = find_virtio_port(name, ports_dir)
        if port is not None:
            try:
                return os.open(os.path.join(dev_dir, port), os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno not in _RETRY_ERRNOS:
                    raise
                last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error.strerror})" if last_error is not None else ""
            raise PortNotFound(errno.ENODEV, f"virtio serial port {name!r} did not appear within {timeout:g} s{detail}")
        time.sleep(poll)


class PortTransport:
    """The channel transport over a raw fd (a virtio serial port in a VM keep; a socketpair end
    for the channel benchmark's baseline), batching small reads.

    The guest's virtio-console driver hands out at most one receive buffer (a page) per
    ``read``, so host->guest data arrives 4 KiB at a time. Each read that reaches the channel
    endpoint costs a lock, a parse and a wake-up of the consumer, which under TCG emulation costs
    far more than the copy. ``recv`` therefore blocks for the first chunk, then drains whatever
    else is already queued (``poll`` with a zero timeout) into one result.
    """

    def __init__(self, fd: int, *, batch: int = 256 << 10):
        import select

        self.fd = fd
        self._received = ReceiveBuffer(batch)
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    def recv(self, size: int) -> bytes:
        return self._received.recv(self._read_batch, size)

    def _read_batch(self, view: memoryview) -> int:
        """Block for the first chunk, then take what else is already queued, into ``view``."""
        total = os.readv(self.fd, [view])
        while total and total < len(view) and self._poll.poll(0):
            count = os.readv(self.fd, [view[total:]])
            if not count:
                break
            total += count
        return total

    def fileno(self) -> int:
        return self.fd

    def send_buffers(self, buffers: list[bytes | memoryview]) -> None:
        send_vectored(lambda views: os.writev(self.fd, views), buffers)

    def sendall(self, data: bytes) -> None:
        self.send_buffers([data])

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


# ---- park and resume (kvm keeps that may be snapshotted) -------------------------------------

_RNDADDENTROPY = 0x40085203  # _IOW('R', 0x03, int[2])
_RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07)
#: Modules with random state of their own that resuming would not renew (OpenSSL's DRBG): they
#: must not be loaded before the snapshot point.
_NOT_BEFORE_PARK = ("_ssl", "ssl", "cryptography")


def park(fd: int) -> None:
    """Load the keep runtime, tell the host, and wait for its resume record; then resume.

    The host may snapshot the VM while the keep waits here, and start later keeps by restoring
    that snapshot instead of booting: each restored keep continues from this very point, which
    is before any tenant data arrives (HELLO comes after). What a copy shares with its siblings
    is renewed on resuming: the wall clock is set from the host's (a restored guest's clock is
    the snapshot's), and the host's entropy is credited to the kernel's RNG and the RNG reseeded
    at once (otherwise every copy would draw the same "random" bytes), then Python's ``random``
    too. Still shared by copies of one snapshot: the kernel's and this process's address-space
    layout and Python's hash seed (docs/vm-keep.md, "Snapshots: park and resume").
    """
    import motte.keep.runtime  # noqa: F401  (the engine loads before the snapshot, not after it)

    loaded = [name for name in _NOT_BEFORE_PARK if name in sys.modules]
    if loaded:
        raise RuntimeError(f"{', '.join(loaded)} loaded before the snapshot point: its RNG state would be cloned")
    _write_all(fd, PARKED)
    try:
        record = Resume.from_bytes(_read_exactly(fd, RESUME.size))
    except ValueError as exc:
        raise RuntimeError(str(exc)) from None
    resume(record.realtime_ns, record.entropy)


def resume(realtime_ns: int, entropy: bytes) -> None:
    import fcntl

    time.clock_settime_ns(time.CLOCK_REALTIME, realtime_ns)
    with open("/dev/urandom", "wb", buffering=0) as pool:
        fcntl.ioctl(pool, _RNDADDENTROPY, struct.pack("ii", 8 * len(entropy), len(entropy)) + entropy)
        fcntl.ioctl(pool, _RNDRESEEDCRNG)
    random = sys.modules.get("random")
    if random is not None:
        random.seed()  # from os.urandom, i.e. the kernel RNG just reseeded


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exactly(fd: int, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        data = os.read(fd, size - len(chunks))
        if not data:
            raise EOFError("the host closed the channel before resuming the keep")
        chunks += data
    return bytes(chunks)
