"""The guest side of the channel: finding and opening the named virtio serial port, and parking
a keep for a snapshot and resuming it."""

from __future__ import annotations

import errno
import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from motte.keep import vm_channel
from motte.keep.vm_channel import PortNotFound, find_virtio_port, open_virtio_port
from motte.shared import vm_port
from motte.shared.vm_port import Resume


def make_port(sysfs: Path, dev: Path, port: str, name: str) -> None:
    (sysfs / port).mkdir(parents=True)
    (sysfs / port / "name").write_text(name + "\n")
    (dev / port).write_bytes(b"")


def test_finds_the_port_by_name(tmp_path: Path) -> None:
    sysfs, dev = tmp_path / "sys", tmp_path / "dev"
    dev.mkdir()
    assert find_virtio_port("motte.0", str(sysfs)) is None  # no virtio-ports class yet
    make_port(sysfs, dev, "vport0p1", "org.qemu.guest_agent.0")
    make_port(sysfs, dev, "vport1p1", "motte.0")
    assert find_virtio_port("motte.0", str(sysfs)) == "vport1p1"
    fd = open_virtio_port("motte.0", 1.0, ports_dir=str(sysfs), dev_dir=str(dev))
    try:
        assert os.readlink(f"/proc/self/fd/{fd}") == str(dev / "vport1p1")
        assert os.get_inheritable(fd) is False
    finally:
        os.close(fd)


def test_waits_for_a_port_that_appears_late(tmp_path: Path) -> None:
    sysfs, dev = tmp_path / "sys", tmp_path / "dev"
    dev.mkdir()
    timer = threading.Timer(0.2, make_port, (sysfs, dev, "vport0p1", "motte.0"))
    timer.start()
    started = time.monotonic()
    fd = open_virtio_port("motte.0", 5.0, ports_dir=str(sysfs), dev_dir=str(dev))
    os.close(fd)
    timer.join()
    assert 0.15 < time.monotonic() - started < 3


def test_retries_enxio_until_the_port_is_ready(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sysfs, dev = tmp_path / "sys", tmp_path / "dev"
    dev.mkdir()
    make_port(sysfs, dev, "vport0p1", "motte.0")
    real_open = os.open
    failures = [3]

    def flaky_open(path: str, flags: int, *args: int) -> int:
        if path.endswith("vport0p1") and failures[0]:
            failures[0] -= 1
            raise OSError(errno.ENXIO, "No such device or address")
        return real_open(path, flags, *args)

    monkeypatch.setattr(vm_channel.os, "open", flaky_open)
    fd = open_virtio_port("motte.0", 5.0, ports_dir=str(sysfs), dev_dir=str(dev), poll=0.001)
    os.close(fd)
    assert failures == [0]


def test_times_out_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sysfs, dev = tmp_path / "sys", tmp_path / "dev"
    dev.mkdir()
    with pytest.raises(PortNotFound, match=r"'motte\.0' did not appear within 0\.1 s"):
        open_virtio_port("motte.0", 0.1, ports_dir=str(sysfs), dev_dir=str(dev))
    make_port(sysfs, dev, "vport0p1", "motte.0")

    def always_enxio(path: str, flags: int, *args: int) -> int:
        raise OSError(errno.ENXIO, "No such device or address")

    monkeypatch.setattr(vm_channel.os, "open", always_enxio)
    with pytest.raises(PortNotFound, match="last error: No such device or address"):
        open_virtio_port("motte.0", 0.1, ports_dir=str(sysfs), dev_dir=str(dev))


def test_other_open_errors_are_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sysfs, dev = tmp_path / "sys", tmp_path / "dev"
    dev.mkdir()
    make_port(sysfs, dev, "vport0p1", "motte.0")

    def denied(path: str, flags: int, *args: int) -> int:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(vm_channel.os, "open", denied)
    with pytest.raises(PermissionError):
        open_virtio_port("motte.0", 5.0, ports_dir=str(sysfs), dev_dir=str(dev))


# ---- park and resume ----------------------------------------------------------------------


def _host_side(sock: socket.socket, reply: bytes | None, seen: list[bytes]) -> threading.Thread:
    def play() -> None:
        received = b""
        while len(received) < len(vm_port.PARKED):
            data = sock.recv(64)
            if not data:
                break
            received += data
        seen.append(received)
        if reply is None:
            sock.close()
        else:
            sock.sendall(reply)

    thread = threading.Thread(target=play, daemon=True)
    thread.start()
    return thread


def test_park_says_so_then_applies_the_resume_record(monkeypatch: pytest.MonkeyPatch) -> None:
    applied: list[tuple[int, bytes]] = []
    monkeypatch.setattr(vm_channel, "resume", lambda realtime, entropy: applied.append((realtime, entropy)))
    monkeypatch.setattr(vm_channel, "_NOT_BEFORE_PARK", ())  # the test process may have loaded ssl
    host, guest = socket.socketpair()
    seen: list[bytes] = []
    entropy = os.urandom(64)
    thread = _host_side(host, Resume(1_795_000_000_123_456_789, entropy).to_bytes(), seen)
    vm_channel.park(guest.fileno())
    thread.join(5)
    assert seen == [vm_port.PARKED]
    assert applied == [(1_795_000_000_123_456_789, entropy)]
    assert "motte.keep.runtime" in sys.modules, "the engine is loaded before the snapshot point"
    host.close()
    guest.close()


def test_park_rejects_a_bad_or_missing_resume_record(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vm_channel, "resume", lambda realtime, entropy: pytest.fail("must not resume"))
    monkeypatch.setattr(vm_channel, "_NOT_BEFORE_PARK", ())
    for reply, error in ((b"x" * vm_port.RESUME.size, RuntimeError), (None, EOFError)):
        host, guest = socket.socketpair()
        thread = _host_side(host, reply, [])
        with pytest.raises(error):
            vm_channel.park(guest.fileno())
        thread.join(5)
        guest.close()
        if reply is not None:
            host.close()


def test_park_refuses_when_a_module_with_its_own_rng_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ssl", sys.modules.get("ssl") or type(sys)("ssl"))
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(RuntimeError, match=r"\bssl\b.* loaded before the snapshot point"):
            vm_channel.park(write_end)
        os.set_blocking(read_end, False)
        with pytest.raises(BlockingIOError):
            os.read(read_end, 64)  # it did not even say it parked
    finally:
        os.close(read_end)
        os.close(write_end)


def test_resume_record_layout() -> None:
    record = Resume(5, b"\1" * 64).to_bytes()
    assert len(record) == vm_port.RESUME.size == 88
    assert record.startswith(vm_port.RESUME_MAGIC) and record[16:24] == (5).to_bytes(8, "little")
    with pytest.raises(ValueError):
        Resume(5, b"short").to_bytes()


def test_resume_record_round_trips_and_refuses_a_bad_magic_or_size() -> None:
    record = Resume(1_795_000_000_123_456_789, bytes(range(64)))
    assert Resume.from_bytes(record.to_bytes()) == record
    with pytest.raises(ValueError, match="no valid resume record"):
        Resume.from_bytes(b"x" * vm_port.RESUME.size)
    with pytest.raises(ValueError, match="88 bytes"):
        Resume.from_bytes(record.to_bytes()[:-1])
