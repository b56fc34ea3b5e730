"""Served directories end to end: real workloads in real keeps, and the host's serving threads.

``fsops`` runs every file operation the ``files`` workload does not, plus escapes through links;
served to a nil keep and to a kvm keep, it must print ``fsops_expected.txt``: the kernel's own
answers to those operations on a Linux filesystem (errno values as WASI numbers), with every
escape refused. The errors in it that are the kernel's are checked against the same operations
done directly on this host.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from motte.host.backends import get_backend
from motte.host.backends.base import LaunchSpec
from motte.host.hostfs import HostDirs, ServedDir
from motte.host.paths import cache_root
from motte.host.platform import kvm_usable
from motte.host.session import HostStdio, RunRequest, run_workload
from motte.shared import hostfs
from motte.shared.enarx_config import default_config
from motte.shared.endpoint import Endpoint, StreamAborted
from motte.shared.wasi_abi import wasi_errno
from tests.conftest import endpoint_pair, motte
from tests.hostfs.test_hostfs_server import snapshot

DEFAULT_CACHE = str(cache_root())  # read before the autouse fixture swaps in a private one
KVM_USABLE, KVM_REASON = kvm_usable()


def fsops_tree(base: Path) -> Path:
    data, outside = base / "data", base / "outside"
    data.mkdir()
    outside.mkdir()
    (outside / "x").write_text("outside the sandbox")
    (data / "out-rel").symlink_to("../outside/x")
    (data / "out-abs").symlink_to(outside / "x")
    return data


def run_in_keep(backend: str, name: str, args: list[str], dirs: tuple[tuple[str, str], ...], tmp_path: Path) -> str:
    from tests.workloads import workload

    out = tmp_path / f"stdout-{backend}"
    with out.open("wb") as sink, open(os.devnull, "rb") as null:
        keep = get_backend(backend).launch(LaunchSpec(memory_bytes=256 << 20))
        try:
            request = RunRequest(Path(workload(name)).read_bytes(), default_config().with_extra(args=args),
                                 dirs, 256 << 20, timeout=120)
            result = run_workload(keep, request, HostStdio(stdin=null.fileno(), stdout=sink.fileno(),
                                                           stderr=sink.fileno()))
        finally:
            keep.close()
    text = out.read_text()
    assert (result.status, result.message) == (0, ""), text
    return text


FSOPS_EXPECTED = (Path(__file__).parent / "fsops_expected.txt").read_text()


def test_fsops_served_to_a_nil_keep_gives_the_kernels_answers(tmp_path: Path) -> None:
    base = tmp_path / "served"
    base.mkdir()
    data = fsops_tree(base)
    before = snapshot(base, "data")
    served = run_in_keep("nil", "fsops", ["/data"], ((str(data), "/data"),), tmp_path)
    assert served == FSOPS_EXPECTED
    lines = dict(line.split(": ", 1) for line in served.splitlines())
    escapes = {step: result for step, result in lines.items() if step.startswith("escape ")}
    assert len(escapes) == 10 and set(escapes.values()) == {"errno=76"}
    assert lines["linkat follow"] == "ok" and lines["readlink"] == "ok a.txt"
    assert lines["pread hole"] == "ok n=7 zero=1 tail=XY" and lines["fallocate 100"] == "ok size=100"
    assert lines["fstat times"] == "ok atime=1000000000.000000005 mtime=1200000000.000000007"
    assert lines["openat sub/../a.txt"] == "errno=76"  # beneath the sub-directory's handle
    assert lines["cleaned up"] == "ok"
    assert snapshot(base, "data") == before  # nothing outside changed: no link, no times, no file
    assert sorted(p.name for p in data.iterdir()) == ["out-abs", "out-rel"]


def _host_errno(call: Callable[[], object]) -> str:
    try:
        call()
    except OSError as exc:
        return f"errno={int(wasi_errno(exc))}"
    return "ok"


def test_the_expected_errors_are_what_this_hosts_kernel_answers(tmp_path: Path) -> None:
    """The failing steps of fsops_expected.txt whose errno is the kernel's (not a refusal of motte's),
    done directly on the host filesystem, give the same errno."""
    w = tmp_path / "w"
    (w / "sub").mkdir(parents=True)
    (w / "a.txt").write_text("a")
    (w / "sub" / "x").write_text("x")
    (w / "loop1").symlink_to("loop2")
    (w / "loop2").symlink_to("loop1")
    (w / "dangling").symlink_to("nowhere")
    (w / "sym").symlink_to("a.txt")
    fd = os.open(w / "a.txt", os.O_RDONLY)
    try:
        direct = {
            "seek negative": _host_errno(lambda: os.lseek(fd, -100, os.SEEK_SET)),
            "write on read-only fd": _host_errno(lambda: os.write(fd, b"x")),
        }
    finally:
        os.close(fd)
    direct |= {
        "stat missing": _host_errno(lambda: os.stat(w / "nope")),
        "readlink of a file": _host_errno(lambda: os.readlink(w / "a.txt")),
        "open loop": _host_errno(lambda: os.close(os.open(w / "loop1", os.O_RDONLY))),
        "stat dangling": _host_errno(lambda: os.stat(w / "dangling")),
        "open nofollow": _host_errno(lambda: os.close(os.open(w / "sym", os.O_RDONLY | os.O_NOFOLLOW))),
        "mkdir again": _host_errno(lambda: os.mkdir(w / "sub")),
        "rmdir non-empty": _host_errno(lambda: os.rmdir(w / "sub")),
        "unlink a dir": _host_errno(lambda: os.unlink(w / "sub")),
        "open file as dir": _host_errno(lambda: os.close(os.open(w / "a.txt", os.O_RDONLY | os.O_DIRECTORY))),
        "create existing": _host_errno(lambda: os.close(os.open(w / "a.txt", os.O_RDONLY | os.O_CREAT | os.O_EXCL))),
        "open dir for writing": _host_errno(lambda: os.close(os.open(w / "sub", os.O_WRONLY))),
    }
    expected = dict(line.split(": ", 1) for line in FSOPS_EXPECTED.splitlines())
    assert direct == {step: expected[step] for step in direct}
    assert all(result.startswith("errno=") for result in direct.values())


@pytest.mark.vm
@pytest.mark.skipif(not KVM_USABLE, reason=KVM_REASON)
def test_fsops_served_to_a_kvm_keep_gives_the_kernels_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOTTE_CACHE_DIR", DEFAULT_CACHE)  # the kernel and image stay cached across runs
    base = tmp_path / "kvm"
    base.mkdir()
    data = fsops_tree(base)
    before = snapshot(base, "data")
    assert run_in_keep("kvm", "fsops", ["/data"], ((str(data), "/data"),), tmp_path) == FSOPS_EXPECTED
    assert snapshot(base, "data") == before


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_run_leaves_no_served_file_open_nor_thread_running(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "input.txt").write_text("hello")
    run_in_keep("nil", "files", ["/data"], ((str(data), "/data"),), tmp_path)  # warm: caches, imports
    fds = _fds()
    out = run_in_keep("nil", "files", ["/data"], ((str(data), "/data"),), tmp_path)
    assert "input: hello" in out and "ALLOWED" not in out
    assert _fds() <= fds
    assert not [t for t in threading.enumerate() if t.name.startswith("hostfs")]


def test_two_directories_are_two_served_trees(tmp_path: Path, wasm: object, backend: str) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (second / "input.txt").write_text("from b")
    result = motte("run", "--backend", backend, "--dir", f"{first}::/a", "--dir", f"{second}::/b",
                   wasm("files"), "--", "/b")  # type: ignore[operator]
    assert result.returncode == 0, result.stdout + result.stderr
    assert b"input: from b" in result.stdout


# ---- the serving thread ---------------------------------------------------------------------


@pytest.fixture
def channel() -> Iterator[tuple[Endpoint, Endpoint]]:
    with endpoint_pair() as endpoints:
        yield endpoints


def test_broken_framing_from_the_keep_ends_only_its_stream(channel: tuple[Endpoint, Endpoint], tmp_path: Path) -> None:
    host, keep = channel
    served = ServedDir(host, str(tmp_path), "/d")
    served.start()
    stream, meta = keep.accept_stream(5)
    assert meta == {"kind": hostfs.STREAM_KIND, "guest": "/d"}
    keep.write(stream, b"\xff\xff\xff\xff")
    with pytest.raises(StreamAborted, match="hostfs: a message of"):
        keep.read(stream, 100, timeout=5)
    served.stop(5)
    assert served.failure and served.server.open_handles == 0
    host.send_control("still-alive")  # the channel itself carries on
    assert keep.recv_control(5) == {"op": "still-alive"}


def test_the_host_stops_serving_when_the_keep_ends_the_stream(channel: tuple[Endpoint, Endpoint],
                                                               tmp_path: Path) -> None:
    host, keep = channel
    dirs = HostDirs(host, [(str(tmp_path), "/d")])
    assert [served.guest_path for served in dirs.served] == ["/d"]
    dirs.start()
    stream, _ = keep.accept_stream(5)
    keep.write(stream, hostfs.encode_request(1, hostfs.Op.OPEN, 0, "f", hostfs.OPEN_CREAT | hostfs.OPEN_WRITE, 0))
    assert keep.read(stream, 100, timeout=5)[4:10] == b"\0\0\0\1\0\0"  # request 1, errno 0
    assert dirs.served[0].server.open_handles == 2
    keep.eof(stream)
    assert keep.read(stream, 100, timeout=5) == b""  # the host ends its side too
    dirs.close(timeout=5)
    assert dirs.served[0].server.open_handles == 0 and (tmp_path / "f").exists()
