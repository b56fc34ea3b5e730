"""Process hygiene of kvm keeps: run directories, QEMU's lifetime, and cleanup after a dead host.

Every keep has a private run directory (channel socket, QEMU log) marked with the host's PID;
``close`` kills QEMU by PID and removes it. QEMU runs under ``setpriv --pdeathsig KILL`` when
launched from the main thread, so it dies with the host process even on SIGKILL; run directories
whose host process is gone are swept at the next launch.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

from motte.host.backends.base import KeepHandle

RUNDIR_PREFIX = "motte-kvm-"

_live: set[KeepHandle] = set()
_live_lock = threading.Lock()


def track(keep: KeepHandle) -> None:
    """Close ``keep`` at interpreter exit unless it is closed (and ``forget`` called) before."""
    with _live_lock:
        _live.add(keep)


def forget(keep: KeepHandle) -> None:
    with _live_lock:
        _live.discard(keep)


def _close_all_at_exit() -> None:
    with _live_lock:
        keeps = list(_live)
    for keep in keeps:
        keep.close(grace=0)


atexit.register(_close_all_at_exit)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _rundir_base() -> str:
    # The channel socket lives in the run directory, and a unix socket path has at most 107
    # bytes; a deep TMPDIR falls back to /tmp.
    base = tempfile.gettempdir()
    return base if len(base) + len(RUNDIR_PREFIX) + len("XXXXXXXX/keep.sock") + 2 < 100 else "/tmp"


def new_rundir() -> Path:
    """A private run directory for one keep, marked as this host process's."""
    rundir = Path(tempfile.mkdtemp(prefix=RUNDIR_PREFIX, dir=_rundir_base()))
    try:
        (rundir / "host.pid").write_text(str(os.getpid()))
    except BaseException:
        shutil.rmtree(rundir, ignore_errors=True)
        raise
    return rundir


def sweep_stale_rundirs() -> None:
    """Remove run directories of host processes that died without cleaning up (SIGKILL)."""
    base = Path(_rundir_base())
    for rundir in base.glob(f"{RUNDIR_PREFIX}*"):
        try:
            owner = int((rundir / "host.pid").read_text())
        except (OSError, ValueError):
            continue
        if owner != os.getpid() and not _pid_alive(owner):
            shutil.rmtree(rundir, ignore_errors=True)


def log_tail(path: Path, lines: int = 6) -> str:
    """The last lines of QEMU's log, on one line, for an error message."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip() and "QEMU waiting for connection" not in line]
    return " | ".join(kept[-lines:])


def with_pdeathsig(command: list[str]) -> list[str]:
    # PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, so it is only safe
    # from the main thread (whose end is the process's end). setpriv sets it, then execs QEMU.
    setpriv = shutil.which("setpriv")
    if setpriv and threading.current_thread() is threading.main_thread():
        return [setpriv, "--pdeathsig", "KILL", "--", *command]
    return command


def kill_qemu(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (QEMU exits at once on it), then SIGKILL; always reaps, so no zombie is left."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(1.0)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()
