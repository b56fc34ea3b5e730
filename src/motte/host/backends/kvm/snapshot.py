"""Warm starts: a kvm keep saved once it has parked, and later keeps restored from that snapshot.

The keep runtime parks (``MOTTE_PARK=1`` on its command line) once it has loaded the engine,
before HELLO, i.e. before anything of a tenant reaches it. The first boot of a configuration is
live-migrated into a file in ``<cache>/kvm-snapshots`` and goes on; later launches of that
configuration start QEMU with ``-incoming`` from the file and resume the parked keep.

Every launch sends the parked keep the host's wall clock and fresh entropy, which it credits to
the kernel RNG: the copies would otherwise share the snapshot's clock and RNG state. They still
share what only a new boot changes (the guest's address-space layouts, Python's hash seed),
which weakens only defence in depth *inside* the guest, which a kvm keep does not rely on for the
host's safety. Confidential keeps never park: their launch must be measured.
``MOTTE_KVM_SNAPSHOT=0`` turns warm starts off; a snapshot that fails to restore is deleted and
the keep boots.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from motte.host.backends.kvm.qemu import Accel
from motte.host.image.cache import cache_root
from motte.shared.errors import MotteError

SNAPSHOT_FORMAT = 1
SNAPSHOTS_KEPT = 4  # snapshot files kept (newest used first): each is ~190 MB
SNAPSHOT_SAVE_TIMEOUT = 30.0


def snapshots_enabled() -> bool:
    """``MOTTE_KVM_SNAPSHOT=0`` turns warm starts off: every kvm keep then boots."""
    return os.environ.get("MOTTE_KVM_SNAPSHOT", "1") != "0"


def snapshot_dir() -> Path:
    return cache_root() / "kvm-snapshots"


def _file_identity(path: str) -> list[object]:
    info = os.stat(path)
    return [path, info.st_size, info.st_mtime_ns, info.st_ino]


def _host_cpu_identity() -> str:
    # Under KVM (-cpu host) the guest sees the host's CPU model and features; a snapshot taken on
    # one CPU must not be restored on another.
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return "\n".join(re.findall(r"^(?:vendor_id|model name|flags)\s*:.*$", text, re.M)[:3])


@dataclass(frozen=True)
class Snapshot:
    """The snapshot of a parked keep for one exact QEMU configuration, in the cache."""

    path: Path
    key: str

    @classmethod
    def for_command(cls, command: Sequence[str], qemu: str, accel: Accel, files: Sequence[str]) -> Snapshot | None:
        """Where the snapshot for this command line lives, or None if the cache is not private.

        The key covers everything a migration stream depends on: the full command line (the
        socket path aside), the QEMU binary, the kernel and initrd files, and under KVM the host
        CPU. A restore loads machine state QEMU trusts and code the guest runs, so the directory
        must be this user's alone, as for the module cache."""
        directory = snapshot_dir()
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = directory.stat()
        except OSError:
            return None
        if info.st_uid != os.getuid() or info.st_mode & 0o077:
            return None
        material = {
            "format": SNAPSHOT_FORMAT,
            "command": list(command),
            "qemu": _file_identity(qemu),
            "files": [_file_identity(f) for f in files],
            "cpu": _host_cpu_identity() if accel == "kvm" else "",
        }
        key = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
        return cls(directory / f"{key[:32]}.snap", key)

    def exists(self) -> bool:
        return self.path.is_file()

    def open_for_restore(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:  # pruned or replaced by another launch since exists()
            raise MotteError(f"cannot open the keep snapshot {self.path}: {exc.strerror}") from None
        with contextlib.suppress(OSError):
            os.utime(self.path)  # the newest used are the ones pruning keeps
        return fd

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()

    def save_from(self, qmp_path: Path) -> bool:
        """Migrate the running, parked VM into the snapshot file and let it run on. The guest is
        idle, so the live migration converges at once (0.1-0.2 s for ~190 MB here). Returns
        whether a snapshot was written; another process making the same one is left to it."""
        lock_fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False
            if self.exists():
                return False
            temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()  # left by a process of the same pid that died saving
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                with _Qmp(qmp_path) as qmp:
                    completed = False
                    try:
                        qmp.execute("migrate-set-parameters", {"max-bandwidth": 1 << 40})  # no 128 MiB/s cap
                        qmp.execute("getfd", {"fdname": "motte-snapshot"}, fds=[fd])
                        os.close(fd)
                        fd = -1
                        qmp.execute("migrate", {"uri": "fd:motte-snapshot"})
                        deadline = time.monotonic() + SNAPSHOT_SAVE_TIMEOUT
                        while time.monotonic() < deadline:
                            status = qmp.execute("query-migrate").get("status")
                            if status in ("completed", "failed", "cancelled"):
                                completed = status == "completed"
                                break
                            time.sleep(0.005)
                    finally:
                        # A completed migration leaves the source VM paused ("postmigrate"); this
                        # keep goes on. A failed one leaves it running, and cont is a no-op.
                        with contextlib.suppress(MotteError):
                            qmp.execute("cont")
                        if not completed:
                            with contextlib.suppress(MotteError):
                                qmp.execute("migrate_cancel")
                if not completed:
                    return False
                temporary.replace(self.path)
                _prune_snapshots(self.path.parent)
                return True
            finally:
                if fd >= 0:
                    os.close(fd)
                with contextlib.suppress(OSError):
                    temporary.unlink()
        finally:
            os.close(lock_fd)


def _prune_snapshots(directory: Path, keep: int = SNAPSHOTS_KEPT) -> None:
    snapshots = sorted(directory.glob("*.snap"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in snapshots[keep:]:
        with contextlib.suppress(OSError):
            old.unlink()
            old.with_suffix(".lock").unlink()
    for stale in directory.glob(".*.tmp"):  # a save that died midway
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > 3600:
                stale.unlink()


class _Qmp:
    """A minimal QMP client: one command at a time, events skipped."""

    def __init__(self, path: Path, timeout: float = 10.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rb")
        self._reply()  # the greeting
        self.execute("qmp_capabilities")

    def __enter__(self) -> _Qmp:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.file.close()
        self.sock.close()

    def _reply(self) -> dict[str, Any]:
        while True:
            line = self.file.readline()
            if not line:
                raise MotteError("QEMU closed its QMP monitor")
            message = json.loads(line)
            if "event" not in message:
                return dict(message)

    def execute(self, command: str, arguments: dict[str, Any] | None = None, fds: Sequence[int] = ()) -> Any:
        request = json.dumps({"execute": command, **({"arguments": arguments} if arguments else {})}).encode()
        if fds:
            socket.send_fds(self.sock, [request + b"\n"], list(fds))
        else:
            self.sock.sendall(request + b"\n")
        reply = self._reply()
        if "error" in reply:
            raise MotteError(f"QMP {command}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")
