"""The guest side of the channel: finding and opening the named virtio serial port."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest

from motte.keep import vm_channel
from motte.keep.vm_channel import PortNotFound, find_virtio_port, open_virtio_port


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
