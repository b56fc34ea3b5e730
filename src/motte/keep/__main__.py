"""Entry point of the keep: ``python -m motte.keep --channel-fd N | --channel-device NAME``.

HELLO goes out before the engine is imported, so the host can send the workload while the keep
is still loading wasmtime; except in a kvm keep that parks for a snapshot (``MOTTE_PARK=1``), which
loads it first (see :func:`motte.keep.vm_channel.park`).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from motte.shared.transport import Transport

USAGE = "usage: python -m motte.keep (--channel-fd N [--handover-fd M] | --channel-device NAME)"


def serve(channel: socket.socket | Transport, backend: str, handover: socket.socket | None = None) -> int:
    """Run the keep on a channel: a connected socket (nil), or a transport such as a virtio port.
    A nil keep's host may hand it its listen sockets on ``handover`` (:mod:`motte.shared.socket_handover`)."""
    from motte.shared.endpoint import Endpoint
    from motte.shared.errors import MotteError
    from motte.shared.transport import SocketTransport

    transport = SocketTransport(channel) if isinstance(channel, socket.socket) else channel
    # The workload's thread reads the channel itself while it waits: one thread switch less per request.
    endpoint = Endpoint(transport, "keep", name="keep", read_when_waiting=True).start()
    try:
        endpoint.send_hello(backend=backend, evidence="none", python=sys.version.split()[0])
        from motte.keep.runtime import KeepRuntime  # loads the engine while the host answers

        endpoint.await_hello(timeout=60.0)

        # Only a nil keep shares the host's file system, so only it may use the host's cache.
        KeepRuntime(endpoint, allow_host_cache=backend == "nil", backend=backend, handover=handover).serve()
    except MotteError as exc:
        print(f"motte keep: {exc}", file=sys.stderr)
        return 1
    finally:
        endpoint.flush(timeout=5.0)
        endpoint.close()
    return 0


def die_with_parent() -> None:
    """Have the kernel kill this process when its parent dies, however it dies, so a keep busy
    in a wasm loop is never left behind by a host that was killed."""
    import ctypes

    parent = os.getppid()
    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def main(argv: list[str]) -> int:
    # Ctrl-C in the user's terminal reaches the whole process group; the host decides when the
    # keep ends (it tells it, or kills it), so the keep itself ignores SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if argv[0:1] == ["--channel-fd"] and len(argv) == 4 and argv[2] == "--handover-fd":
        die_with_parent()  # a nil keep is a child process of the host: it must not outlive it
        return serve(socket.socket(fileno=int(argv[1])), backend="nil", handover=socket.socket(fileno=int(argv[3])))
    if len(argv) != 2 or argv[0] not in ("--channel-fd", "--channel-device"):
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] == "--channel-fd":
        die_with_parent()
        return serve(socket.socket(fileno=int(argv[1])), backend="nil")
    from motte.keep.platform import vm_technology
    from motte.keep.vm_channel import PortTransport, open_virtio_port, park

    port = open_virtio_port(argv[1], timeout=30.0)
    if os.environ.get("MOTTE_PARK") == "1":  # from the kernel command line, via /init
        park(port)  # loads the runtime; the host may snapshot the VM here and restore it later
    return serve(PortTransport(port), backend=vm_technology())  # snp and tdx keeps are this same VM


if __name__ == "__main__":
    status = main(sys.argv[1:])
    # Everything the host must see is flushed: skip interpreter teardown (tens of ms with the
    # engine loaded), which matters for start-up-bound workloads.
    sys.stderr.flush()
    os._exit(status)
