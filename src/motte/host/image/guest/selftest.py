"""The keep image's self test and channel benchmark. Runs INSIDE the guest, not on the host.

The image builder copies it to ``/usr/lib/motte/selftest.pyc``; ``/init`` runs it instead of the
keep runtime when the kernel command line says ``MOTTE_MODE=selftest`` (a different command line,
so a different launch measurement: an attested production keep can never run it). It holds no
secret and runs no workload; it speaks the channel protocol exactly as the runtime does, so it
tests the boot path, the virtio port and the channel without the runtime, and it lets the
benchmark measure the channel alone.

Control messages it answers, after the HELLO exchange:

* ``ping`` -> ``pong`` (echoing ``seq``): small-message round trip;
* ``source`` {bytes, chunk}: opens a stream and sends that many bytes (guest -> host);
* ``sink``: accepts the next stream the host opens, reads it to EOF, answers ``sunk``
  {bytes, seconds} (host -> guest);
* ``bye``: ends; the host's ``bye`` is what lets the guest exit without losing queued bytes.
"""

from __future__ import annotations

import sys
import time

from motte.keep.vm_channel import PortTransport, open_virtio_port
from motte.shared.endpoint import Endpoint
from motte.shared.vm_port import PORT_NAME


def _uptime() -> float:
    try:
        with open("/proc/uptime", encoding="ascii") as handle:
            return float(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


def main(argv: list[str]) -> int:
    # In the guest: the virtio port. On the host (the benchmark's baseline): a socketpair fd.
    fd = int(argv[1]) if argv[:1] == ["--channel-fd"] else open_virtio_port(PORT_NAME, timeout=60.0)
    # As the keep runtime does (keep/__main__.py): the waiting thread reads the channel itself.
    endpoint = Endpoint(PortTransport(fd), "keep", name="selftest", read_when_waiting=True).start()
    endpoint.hello(timeout=60.0, mode="selftest", uptime=_uptime())
    while True:
        message = endpoint.recv_control()
        op = message["op"]
        if op == "bye":
            break
        if op == "ping":
            endpoint.send_control("pong", seq=message.get("seq"))
        elif op == "source":
            total = int(message["bytes"])
            chunk = b"\xa5" * int(message.get("chunk", 256 << 10))
            stream = endpoint.open_stream("bench-source")
            sent = 0
            while sent < total:
                piece = chunk[: total - sent]
                endpoint.write(stream, piece)
                sent += len(piece)
            endpoint.eof(stream)
        elif op == "sink":
            stream, _meta = endpoint.accept_stream(timeout=60.0)
            start = time.monotonic()
            received = 0
            while data := endpoint.read(stream, 1 << 20, timeout=60.0):
                received += len(data)
            endpoint.send_control("sunk", bytes=received, seconds=time.monotonic() - start)
        else:
            endpoint.send_control("error", message=f"unknown op {op!r}")
    endpoint.flush(timeout=10.0)
    endpoint.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
