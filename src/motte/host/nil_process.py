"""Starting the nil keep's process, kept free of heavy imports.

Two ways, one result (a child process running :func:`motte.keep.__main__.serve` on its end of a
socketpair, the channel, with a second socketpair beside it on which the host may hand it its
listen sockets: :mod:`motte.shared.socket_handover`):

- ``prespawn``: ``motte run --backend nil`` forks the keep first thing, while the host process is
  still single-threaded and has loaded nothing but the interpreter (``motte-oci``'s init process
  forks it too, before it binds the container's sockets). The child skips a second
  interpreter start-up, and loads the engine while the host loads its CLI.
- ``spawn_nil_keep``: anywhere else (libraries, tests: possibly multi-threaded, where ``fork``
  is unsafe) the child is a fresh ``python -I -m motte.keep``.
"""

from __future__ import annotations

import atexit
import os
import socket
import sys

# Only cheap imports here (no typing, no signal): everything imported before the fork delays it.
Started = tuple[int, socket.socket, socket.socket | None]  # (child pid, host end of the channel, of the handover)
_prespawned: Started | None = None


def spawn_nil_keep() -> Started:
    import subprocess

    host_sock, keep_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    host_handover, keep_handover = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    command = [sys.executable, "-I", "-m", "motte.keep", "--channel-fd", str(keep_sock.fileno()),
               "--handover-fd", str(keep_handover.fileno())]
    try:
        process = subprocess.Popen(
            command,
            pass_fds=(keep_sock.fileno(), keep_handover.fileno()),
            stdin=subprocess.DEVNULL,
            # The keep's stdout is unused (stdio travels on the channel); its stderr stays, for
            # diagnostics of a keep that dies before the channel is up.
            stdout=subprocess.DEVNULL,
            env=_keep_environment(),
        )
    except OSError:
        host_sock.close()
        host_handover.close()
        raise
    finally:
        keep_sock.close()
        keep_handover.close()
    process.returncode = 0  # the NilKeep handle reaps it, by pid; stop Popen from trying too
    return process.pid, host_sock, host_handover


def prespawn() -> None:
    global _prespawned
    host_sock, keep_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    host_handover, keep_handover = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # the keep
        status = 1
        try:
            host_sock.close()
            host_handover.close()
            # Nothing the host had open stays open in the keep but its stderr (a caller's pipe,
            # held open here, would never see its end).
            low, high = sorted((keep_sock.fileno(), keep_handover.fileno()))
            os.closerange(3, low)
            os.closerange(low + 1, high)
            os.closerange(high + 1, os.sysconf("SC_OPEN_MAX"))
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            environment = _keep_environment()  # (read before the clear: it keeps a few of the host's)
            os.environ.clear()
            os.environ.update(environment)
            import signal

            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the host decides when the keep ends
            from motte.keep.__main__ import die_with_parent, serve

            die_with_parent()
            status = serve(keep_sock, backend="nil", handover=keep_handover)
        finally:
            sys.stderr.flush()
            os._exit(status)
    keep_sock.close()
    keep_handover.close()
    _prespawned = (pid, host_sock, host_handover)
    atexit.register(_discard)


def take_prespawned() -> Started | None:
    global _prespawned
    started, _prespawned = _prespawned, None
    return started


def _discard() -> None:
    # The run never used the keep (bad input, --help): end it.
    started = take_prespawned()
    if started is not None:
        pid, sock, handover = started
        try:
            # Killed before its channel closes: a keep that saw the close first would print
            # "channel read failed" under the CLI's own error line.
            os.kill(pid, 9)  # SIGKILL
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        sock.close()
        if handover is not None:
            handover.close()


def _keep_environment() -> dict[str, str]:
    # A minimal environment: nothing of the host's leaks into the keep by accident.
    env = {"PATH": os.defpath}
    for key in ("LANG", "LC_ALL", "TMPDIR"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env
