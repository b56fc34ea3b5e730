"""A kvm keep: one boot attempt of the micro-VM, and the handle of the running keep."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from motte.host.backends.base import KeepHandle
from motte.host.backends.kvm.qemu import Accel, microvm_command, qemu_has_sandbox
from motte.host.backends.kvm.rundir import forget, kill_qemu, log_tail, new_rundir, track, with_pdeathsig
from motte.host.backends.kvm.snapshot import Snapshot
from motte.host.channel_tap import Tap as ChannelTap
from motte.host.channel_tap import channel_transport
from motte.shared.endpoint import ChannelClosed, Endpoint, Timeout
from motte.shared.errors import MotteError
from motte.shared.vm_port import PARKED, RESUME_ENTROPY, Resume

#: A first boot attempt that shows no HELLO by then is taken for a hang (TCG boots hang now and
#: then; how often, and how long a normal boot takes, is in docs/vm-keep.md). The retry gets the
#: rest of ``LaunchSpec.boot_timeout``.
HANG_TIMEOUT = 25.0
HANG_HINT = "TCG boots hang now and then; a slow or loaded host may need a larger boot timeout"
CONSOLE_HINT = "the guest kernel or /init failed; set MOTTE_KVM_CONSOLE=/tmp/console.log to see its console"
CONNECT_POLL = 0.005


class BootHang(MotteError):
    """The guest did not say HELLO in time and QEMU is still running."""


class KvmKeep(KeepHandle):
    backend = "kvm"

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        endpoint: Endpoint,
        rundir: Path,
        accel: Accel,
        command: Sequence[str],
        restored: bool = False,
    ):
        self.process = process
        self.endpoint = endpoint
        self.rundir = rundir
        self.accel = accel
        self.command = list(command)
        #: started by restoring a snapshot of a parked keep, not by booting
        self.restored = restored
        #: this keep's boot left a snapshot for later keeps to start from
        self.snapshot_saved = False
        self.isolation = (
            f"a micro-VM under QEMU ({'KVM' if accel == 'kvm' else 'TCG software emulation'}): the workload "
            "cannot reach the host except through the channel, but the host can read the keep's memory; "
            "no attestation"
        )
        self._closed = False
        self._lock = threading.Lock()

    def memory_pid(self) -> int | None:
        return self.process.pid

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self, grace: float = 2.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self.endpoint.close()
            if self.wait(grace) is None:
                kill_qemu(self.process)
        finally:
            shutil.rmtree(self.rundir, ignore_errors=True)
            forget(self)


# ---- one boot attempt -----------------------------------------------------------------------


@dataclass(frozen=True)
class BootPlan:
    """What every boot attempt of one launch shares."""

    qemu: str
    accel: Accel
    vmlinux: str
    initrd: str
    cmdline: str
    memory_mib: int
    vcpus: int
    console_log: str | None
    #: the keep parks before HELLO and waits for the resume record (it may be saved or restored)
    park: bool
    snapshot: Snapshot | None = None

    def command(self, socket_path: str) -> list[str]:
        return microvm_command(
            accel=self.accel,
            vmlinux=self.vmlinux,
            initrd=self.initrd,
            cmdline=self.cmdline,
            memory_mib=self.memory_mib,
            vcpus=self.vcpus,
            socket_path=socket_path,
            qemu=self.qemu,
            console_log=self.console_log,
            sandbox=qemu_has_sandbox(self.qemu),
        )


def boot(plan: BootPlan, budget: float, *, restore: bool = False, channel_tap: ChannelTap | None = None) -> KvmKeep:
    """Boot (or, with ``restore``, restore ``plan.snapshot``) and complete HELLO within ``budget``
    seconds. A keep of a ``park`` plan stops before HELLO and waits for the resume record; a
    booted one may first be saved as ``plan.snapshot``."""
    deadline = time.monotonic() + budget
    rundir = new_rundir()
    log_path = rundir / "qemu.log"
    process: subprocess.Popen[bytes] | None = None
    sock: socket.socket | None = None
    endpoint: Endpoint | None = None
    keep: KvmKeep | None = None
    try:
        process, command, qmp_path = _start_qemu(plan, rundir, restore=restore)
        sock = _connect(rundir / "keep.sock", process, deadline, log_path)
        hang = f"no HELLO from the guest within {budget:.0f} s ({plan.accel})"
        saved = False
        if plan.park:
            if not restore:
                _await_parked(sock, process, deadline, log_path, hang)
                saved = _save_snapshot(plan.snapshot, qmp_path)
            # The restored keep waits at the very point where the saved one parked.
            with contextlib.suppress(OSError):  # QEMU died: HELLO below reports how
                sock.sendall(Resume(time.time_ns(), os.urandom(RESUME_ENTROPY)).to_bytes())
        endpoint = Endpoint(channel_transport(sock, channel_tap), "host", name="kvm-keep").start()
        keep = KvmKeep(process, endpoint, rundir, plan.accel, command, restored=restore)
        keep.snapshot_saved = saved
        track(keep)
        try:
            endpoint.hello(timeout=max(deadline - time.monotonic(), 0.1), backend="kvm")
        except Timeout:
            raise BootHang(hang, hint=HANG_HINT) from None
        except ChannelClosed as exc:
            raise _ended_early(process, log_path, "the keep said HELLO", exc.message) from None
        return keep
    except BaseException:
        # Whatever went wrong (including KeyboardInterrupt): no QEMU, socket or directory stays.
        if keep is not None:
            keep.close(grace=0)
        else:
            if endpoint is not None:
                endpoint.close()
            elif sock is not None:
                sock.close()
            if process is not None:
                kill_qemu(process)
            shutil.rmtree(rundir, ignore_errors=True)
        raise


def _start_qemu(
    plan: BootPlan, rundir: Path, *, restore: bool
) -> tuple[subprocess.Popen[bytes], list[str], Path | None]:
    """``(QEMU, its command line, the QMP socket to save the snapshot through if it is to be made)``."""
    command = plan.command(str(rundir / "keep.sock"))
    restore_fd = -1
    qmp_path: Path | None = None
    if restore and plan.snapshot is not None:
        restore_fd = plan.snapshot.open_for_restore()
        command += ["-incoming", f"fd:{restore_fd}"]  # QEMU reads the migration stream from it
    elif plan.park and plan.snapshot is not None:
        qmp_path = rundir / "qmp.sock"  # to save the snapshot once the keep has parked
        command += ["-qmp", f"unix:{qmp_path},server=on,wait=off"]
    try:
        with (rundir / "qemu.log").open("wb") as log:
            process = subprocess.Popen(
                with_pdeathsig(command),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={"PATH": os.defpath, "LC_ALL": "C"},
                pass_fds=(restore_fd,) if restore_fd >= 0 else (),
            )
    finally:
        if restore_fd >= 0:
            os.close(restore_fd)
    return process, command, qmp_path


def _connect(path: Path, process: subprocess.Popen[bytes], deadline: float, log_path: Path) -> socket.socket:
    """Connect to QEMU's chardev socket as soon as it exists (QEMU holds the guest until then)."""
    while True:
        if process.poll() is not None:
            tail = log_tail(log_path)
            raise MotteError(
                f"QEMU exited with status {process.returncode} before the keep started: {tail or 'no output'}"
            )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
        if time.monotonic() > deadline:
            raise BootHang("QEMU did not open its channel socket in time")
        time.sleep(CONNECT_POLL)


def _await_parked(
    sock: socket.socket, process: subprocess.Popen[bytes], deadline: float, log_path: Path, hang: str
) -> None:
    """Read the keep's PARKED record, which comes before the channel protocol starts."""
    received = b""
    while len(received) < len(PARKED):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BootHang(hang, hint=HANG_HINT)
        sock.settimeout(min(remaining, 0.5))
        try:
            data = sock.recv(len(PARKED) - len(received))
        except TimeoutError:
            continue
        if not data:
            raise _ended_early(process, log_path, "the keep started", "no output")
        received += data
    sock.settimeout(None)
    if received != PARKED:
        raise MotteError(f"the keep sent {received!r} where it parks")


def _save_snapshot(snapshot: Snapshot | None, qmp_path: Path | None) -> bool:
    """Save the parked keep as ``snapshot``, if one is to be made; whether it was."""
    if snapshot is None or qmp_path is None:
        return False
    try:
        return snapshot.save_from(qmp_path)
    except (OSError, ValueError, MotteError):
        return False  # only an optimisation: this keep runs on regardless


def _ended_early(process: subprocess.Popen[bytes], log_path: Path, before: str, fallback: str) -> MotteError:
    """Why the channel closed before ``before``: QEMU failed, or the guest powered off."""
    status = process.wait(5) if process.poll() is None else process.returncode
    tail = log_tail(log_path)
    if status != 0:
        # QEMU itself failed (bad kernel file, unsupported option, no memory, ...).
        return MotteError(f"QEMU exited with status {status}: {tail or fallback}")
    return MotteError(f"the micro-VM powered off before {before}: {tail or fallback}", hint=CONSOLE_HINT)
