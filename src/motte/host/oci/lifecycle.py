"""A container's life: ``create`` forks its init process, ``start`` releases it, ``kill`` signals it,
``delete`` removes what is left.

The init process is the container's one process as the runc shim sees it: its pid goes in the pid
file, the shim (a subreaper) reaps it, and its exit status is the container's. It starts the keep
at ``create`` (so a keep that cannot start fails ``create``, and ``start`` costs only the launch),
waits on ``exec.fifo`` until ``start`` opens it, runs the workload on the stdio the shim gave
``create`` (or the terminal sent to the console socket), and exits with the workload's status.
A signal ends the keep, then the init process by that same signal, as it would a native process.

The init process enters the container's network namespace (see :mod:`motte.host.oci.netns`) before
anything else, so the keep, and the sockets its host side binds and connects, are all in it.
Only ``create`` needs most of this module's imports: the other commands are a fresh process each.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from motte.host.oci.state import (
    EXEC_FIFO,
    ContainerRecord,
    container_dir,
    is_alive,
    load,
    process_start,
    remove,
    save,
    status,
)
from motte.shared.errors import EXIT_MOTTE_ERROR, MotteError

# Not typing.TYPE_CHECKING: importing typing costs every command the shim runs milliseconds
# (mypy takes any TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from motte.host.backends.base import KeepHandle
    from motte.host.net import HostNetwork
    from motte.host.oci.bundle import ContainerSpec
    from motte.host.session import RunRequest

#: Signals that end the keep first; SIGKILL ends the init process at once and the keep with it.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
START_TIMEOUT = 10.0  # seconds ``start`` waits for the init process to take its release
STOP_TIMEOUT = 10.0  # seconds ``delete --force`` waits for a killed init process to be gone
READY = b"ready"


class Terminated(BaseException):
    """The init process was sent a signal that ends the container."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def create(root: Path, container_id: str, spec: ContainerSpec, request: RunRequest, *,
           pid_file: Path | None = None, console_socket: str | None = None) -> int:
    """Start the container's keep and its init process, waiting for ``start``; the init's pid."""
    from datetime import UTC, datetime

    directory = container_dir(root, container_id)
    root.mkdir(parents=True, exist_ok=True, mode=0o711)
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        raise MotteError(f"container {container_id} already exists",
                         hint="delete it first, or choose another id") from None
    pid = 0
    try:
        os.mkfifo(directory / EXEC_FIFO, 0o600)
        terminal = _send_console(console_socket) if console_socket else None
        ready_read, ready_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(ready_read)
            _init(directory, spec, request, ready_write, terminal)
        os.close(ready_write)
        if terminal is not None:
            os.close(terminal)
        _await_ready(ready_read, pid)
        start_time = process_start(pid)
        if start_time is None:
            raise MotteError("the container's init process ended before it was started")
        save(directory, ContainerRecord(container_id, pid, start_time, str(spec.bundle),
                                        datetime.now(UTC).isoformat().replace("+00:00", "Z"), spec.annotations))
        if pid_file is not None:
            temporary = pid_file.with_name(pid_file.name + ".motte-tmp")
            temporary.write_text(str(pid))
            temporary.replace(pid_file)  # whoever watches the pid file never reads half of it
    except BaseException:
        if pid > 0:
            _kill_quietly(pid, signal.SIGKILL)
        remove(directory)
        raise
    return pid


def start(root: Path, container_id: str) -> None:
    """Release the init process of a created container."""
    record = load(root, container_id)
    current = status(root, record)
    if current != "created":
        raise MotteError(f"cannot start container {container_id}: it is {current}, not created")
    import select

    fifo = container_dir(root, container_id) / EXEC_FIFO
    # Opened without blocking: an init process that died must not hang ``start``.
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            readable, _, _ = select.select([reader], [], [], 0.05)
            if readable and os.read(reader, 1):
                break
            if not is_alive(record) or time.monotonic() > deadline:
                raise MotteError(f"container {container_id}: its init process did not take the start",
                                 hint="see the container's stderr; delete it and create it again")
    finally:
        os.close(reader)
        fifo.unlink(missing_ok=True)


def kill(root: Path, container_id: str, signum: int) -> None:
    record = load(root, container_id)
    if not is_alive(record):
        raise MotteError(f"container {container_id} is not running")
    try:
        os.kill(record.pid, signum)
    except ProcessLookupError:
        raise MotteError(f"container {container_id} is not running") from None


def delete(root: Path, container_id: str, *, force: bool) -> None:
    """Remove a stopped container (or a created one, or with ``force`` a running one: killed first)."""
    directory = container_dir(root, container_id)
    if not directory.exists():
        if force:
            return  # as runc: what is forced gone is gone (the shim's cleanup asks again)
        raise MotteError(f"container {container_id} does not exist")
    try:
        record = load(root, container_id)
    except MotteError:
        if not force:
            raise
        remove(directory)  # a create that died half-way: nothing runs, only its files remain
        return
    current = status(root, record)
    if current == "running" and not force:
        raise MotteError(f"cannot delete container {container_id}: it is running", hint="stop it, or use --force")
    if current != "stopped":
        _kill_quietly(record.pid, signal.SIGKILL)
        deadline = time.monotonic() + STOP_TIMEOUT
        while is_alive(record) and time.monotonic() < deadline:
            time.sleep(0.01)
    remove(directory)


def _send_console(path: str) -> int:
    """Send a new terminal's master end to the console socket; the slave end, for the workload."""
    import socket

    master, slave = os.openpty()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(path)
            socket.send_fds(sock, [os.ttyname(slave).encode()], [master])
    except OSError as exc:
        os.close(slave)
        raise MotteError(f"cannot send the terminal to the console socket {path}: {exc.strerror}") from None
    finally:
        os.close(master)
    return slave


def _await_ready(ready: int, pid: int) -> None:
    chunks = []
    with os.fdopen(ready, "rb") as pipe:
        while chunk := pipe.read(4096):
            chunks.append(chunk)
    message = b"".join(chunks)
    if message == READY:
        return
    if message:
        raise MotteError(message.decode(errors="replace"))
    _, wait_status = os.waitpid(pid, 0)
    raise MotteError(f"the container's init process ended before its keep started"
                     f" (status {os.waitstatus_to_exitcode(wait_status)})")


def _init(directory: Path, spec: ContainerSpec, request: RunRequest, ready: int, terminal: int | None) -> None:
    """The init process: never returns."""
    exit_status = EXIT_MOTTE_ERROR
    keep: KeepHandle | None = None
    try:
        os.setsid()  # its own session: the shim's signals reach it only by ``kill``
        if terminal is not None:
            _take_terminal(terminal)
        keep, network = _start_keep(spec, request)
        os.write(ready, READY)
        os.close(ready)
        ready = -1
        _await_start(directory)
        exit_status = _run(keep, request, network)
    except Terminated as exc:
        if keep is not None:
            keep.close(grace=0)
        signal.signal(exc.signum, signal.SIG_DFL)
        os.kill(os.getpid(), exc.signum)
    except BaseException as exc:
        message = str(exc) if isinstance(exc, MotteError) else f"{type(exc).__name__}: {exc}"
        if ready >= 0:
            os.write(ready, message.encode())
        else:
            print(f"motte-oci: error: {message}", file=sys.stderr)
    finally:
        if keep is not None:
            keep.close(grace=0)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_status)


def _terminated(signum: int, _frame: FrameType | None) -> None:
    raise Terminated(signum)


def _take_terminal(terminal: int) -> None:
    import fcntl
    import termios

    fcntl.ioctl(terminal, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(terminal, fd)
    os.close(terminal)


def _start_keep(spec: ContainerSpec, request: RunRequest) -> tuple[KeepHandle, HostNetwork | None]:
    from motte.host.backends import get_backend
    from motte.host.backends.base import LaunchSpec
    from motte.host.nil_process import prespawn
    from motte.host.oci.netns import enter_network_namespace
    from motte.host.platform import strongest_backend
    from motte.host.session import prepare_network
    from motte.host.workload_files import check_launch_fits

    enter_network_namespace(spec.network_namespace)  # while this process has one thread: all of it moves
    backend = strongest_backend() if spec.backend == "auto" else spec.backend
    if backend == "nil":
        # Forked now, single-threaded, with no socket bound yet and the default signal handlers:
        # the keep skips an interpreter's start-up and the imports this process has made.
        prespawn()
    for signum in FORWARDED:
        signal.signal(signum, _terminated)
    network = prepare_network(request)  # binds its listen ports: one in use fails ``create``
    check_launch_fits(request, network)
    return get_backend(backend).launch(LaunchSpec(memory_bytes=spec.memory_limit)), network


def _await_start(directory: Path) -> None:
    """Block until ``start`` opens the fifo (a signal interrupts it), then tell it so."""
    writer = os.open(directory / EXEC_FIFO, os.O_WRONLY)
    try:
        os.write(writer, b"0")
    finally:
        os.close(writer)


def _run(keep: KeepHandle, request: RunRequest, network: HostNetwork | None) -> int:
    from motte.host.session import HostStdio, run_workload
    from motte.shared.printable import printable

    result = run_workload(keep, request, HostStdio(0, 1, 2), network=network)
    if result.message:
        print(printable(f"motte-oci: {result.reason}: {result.message}"), file=sys.stderr)
    return result.status


def _kill_quietly(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
