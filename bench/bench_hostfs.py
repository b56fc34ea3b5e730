"""Preopened directories: a ``--dir`` served over the channel to a ``nil`` keep, against the same
file operations done directly by this host process in Python, both measured in the same run.

    .venv/bin/python bench/bench_hostfs.py [--quick] [--kvm]

The keep runs are driven in this process by ``run_workload``; served runs and direct runs alternate
so drifting machine load hits both alike. The baseline is plain ``os`` calls on the same directory:
what the operations cost without a keep, a channel or the host's file server in between. Figures:

- the ``files`` workload (about 30 file operations, the end-to-end test's workload): wall time of a
  whole served run, keep start included, next to its file steps done directly (its escape attempts
  left out: a process outside any keep has nothing to refuse);
- ``fileio``: sequential write then read of a file, in 1 MiB and in 4 KiB calls (throughput, and
  the cost of one call). Served, the workload times itself and makes and checks the bytes inside
  the timed part; directly, the same bytes are made beforehand, untimed, and checked as they are
  read back, timed.

``--kvm`` adds the served figures of a kvm keep, for scale.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))
from tests.workloads import workload  # noqa: E402

from motte.host.backends import get_backend  # noqa: E402
from motte.host.backends.base import LaunchSpec  # noqa: E402
from motte.host.session import HostStdio, RunRequest, run_workload  # noqa: E402
from motte.shared.enarx_config import default_config  # noqa: E402

FILEIO_CASES = (("64 MiB in 1 MiB calls", 64, 1 << 20), ("8 MiB in 4 KiB calls", 8, 4096))


def run_once(backend: str, wasm: bytes, args: list[str], host_dir: str) -> tuple[float, str]:
    """(seconds from launch to exit, the workload's stdout) of a run with ``host_dir`` served as /d."""
    config = default_config().with_extra(args=args, env={})
    with tempfile.TemporaryFile() as out, open(os.devnull, "wb") as null:
        started = time.perf_counter()
        keep = get_backend(backend).launch(LaunchSpec(memory_bytes=256 << 20))
        try:
            result = run_workload(keep, RunRequest(wasm, config, ((host_dir, "/d"),), 256 << 20),
                                  HostStdio(stdin=null.fileno(), stdout=out.fileno(), stderr=null.fileno()))
        finally:
            keep.close()
        seconds = time.perf_counter() - started
        out.seek(0)
        text = out.read().decode()
    if result.status != 0:
        raise SystemExit(f"{backend} {args}: status {result.status} {result.message}\n{text}")
    return seconds, text


def fileio_ms(text: str) -> tuple[float, float]:
    fields = dict(item.split("=") for item in text.split())
    return float(fields["write_ms"]), float(fields["read_ms"])


def files_steps_directly(root: str) -> float:
    """Seconds for the ``files`` workload's file steps (tests/workloads/files.c) done here."""
    def at(rel: str) -> str:
        return os.path.join(root, rel)

    started = time.perf_counter()
    fd = os.open(at("hello.txt"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, b"hello\n")
    os.close(fd)
    fd = os.open(at("hello.txt"), os.O_RDONLY)
    if os.read(fd, 64 << 10) != b"hello\n":
        raise SystemExit("direct files steps: hello.txt reads back wrong")
    os.close(fd)
    fd = os.open(at("hello.txt"), os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"world\n")
    os.close(fd)
    if os.stat(at("hello.txt")).st_size != 12:
        raise SystemExit("direct files steps: hello.txt has the wrong size")
    os.mkdir(at("sub"), 0o755)
    os.rename(at("hello.txt"), at("sub/hello.txt"))
    sorted(os.listdir(root))
    sorted(os.listdir(at("sub")))
    os.unlink(at("sub/hello.txt"))
    os.rmdir(at("sub"))
    return time.perf_counter() - started


def fileio_content(mib: int) -> bytes:
    """The bytes ``fileio`` writes: byte i is (i * 7 + i / 4096) & 0xff."""
    base = [(k * 7) & 0xFF for k in range(4096)]
    blocks = [bytes((b + j) & 0xFF for b in base) for j in range(256)]
    return b"".join(blocks[j & 0xFF] for j in range(mib * (1 << 20) // 4096))


def fileio_directly(root: str, content: bytes, chunk: int) -> tuple[float, float]:
    """(write ms, read ms) of ``fileio``'s file operations on ``content`` done here, timed as the
    workload times itself: open to close, each."""
    path = os.path.join(root, "fileio.bin")
    view = memoryview(content)
    started = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    done = 0
    while done < len(content):
        done += os.write(fd, view[done : done + chunk])
    os.close(fd)
    written = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    done = 0
    while data := os.read(fd, chunk):
        if data != view[done : done + len(data)]:
            raise SystemExit(f"direct fileio: content differs at {done}")
        done += len(data)
    os.close(fd)
    read = time.perf_counter()
    os.unlink(path)
    if done != len(content):
        raise SystemExit(f"direct fileio: read {done} of {len(content)} bytes")
    return (written - started) * 1000, (read - written) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--kvm", action="store_true", help="also measure a kvm keep")
    options = parser.parse_args()
    repeats = 3 if options.quick else 9
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src" / "motte")], check=True)
    files = Path(workload("files")).read_bytes()
    fileio = Path(workload("fileio")).read_bytes()
    with tempfile.TemporaryDirectory() as scratch:
        run_once("nil", files, ["/d"], scratch)  # warm the module cache and the page cache
        files_steps_directly(scratch)
        print(f"--dir served to a nil keep vs the same file operations done by the host directly, medians of {repeats}")
        served, direct = [], []
        for _ in range(repeats):
            served.append(run_once("nil", files, ["/d"], scratch)[0])
            direct.append(files_steps_directly(scratch))
        s, d = statistics.median(served), statistics.median(direct)
        print(f"{'files workload':<40} served {s * 1000:8.1f} ms (whole run)   direct {d * 1e6:8.1f} µs (file steps)")
        for label, mib, chunk in FILEIO_CASES:
            content = fileio_content(mib)
            runs: dict[str, list[tuple[float, float]]] = {"served": [], "direct": []}
            for _ in range(max(3, repeats // 2)):
                runs["served"].append(fileio_ms(run_once("nil", fileio, ["/d", str(mib), str(chunk)], scratch)[1]))
                runs["direct"].append(fileio_directly(scratch, content, chunk))
            calls = mib * (1 << 20) // chunk
            for index, what in ((0, "write"), (1, "read")):
                sm = statistics.median(r[index] for r in runs["served"])
                dm = statistics.median(r[index] for r in runs["direct"])
                mbs = mib * 1.048576
                print(f"{what + ' ' + label:<40} served {mbs / sm * 1000:8.1f} MB/s direct {mbs / dm * 1000:8.1f} MB/s"
                      f" ratio {dm / sm:5.2f}x   ({sm * 1000 / calls:6.1f} vs {dm * 1000 / calls:6.1f} µs/call)")
        if options.kvm:
            print("kvm keep (TCG here), served:")
            seconds = run_once("kvm", files, ["/d"], scratch)[0]
            print(f"{'files workload, whole run':<40} {seconds * 1000:8.1f} ms")
            for label, mib, chunk in FILEIO_CASES:
                write, read = fileio_ms(run_once("kvm", fileio, ["/d", str(mib), str(chunk)], scratch)[1])
                calls = mib * (1 << 20) // chunk
                for what, ms in (("write", write), ("read", read)):
                    print(f"{what + ' ' + label:<40} {mib * 1.048576 / ms * 1000:8.1f} MB/s "
                          f"({ms * 1000 / calls:7.1f} µs/call)")


if __name__ == "__main__":
    main()
