"""Preopened directories: served over the channel (every backend) against a nil keep's direct
access to the host path, in one run.

    .venv/bin/python bench/bench_hostfs.py [--quick] [--kvm]

Both runs are ``nil`` keeps driven in this process by ``run_workload``; only ``RunRequest.serve_dirs``
differs, and the two alternate so drifting machine load hits both alike. Figures:

- the ``files`` workload (about 30 file operations, the end-to-end test's workload): wall time of a
  whole run, keep start included;
- ``fileio``: sequential write then read of a file inside the workload (timed there), in 1 MiB and
  in 4 KiB calls (throughput, and the cost of one call).

``--kvm`` adds the served figures of a kvm keep (no direct access there), for scale.
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


def run_once(backend: str, wasm: bytes, args: list[str], host_dir: str, serve: bool) -> tuple[float, str]:
    """(seconds from launch to exit, the workload's stdout)."""
    config = default_config().with_extra(args=args, env={})
    with tempfile.TemporaryFile() as out, open(os.devnull, "wb") as null:
        started = time.perf_counter()
        keep = get_backend(backend).launch(LaunchSpec(memory_bytes=256 << 20))
        try:
            result = run_workload(keep, RunRequest(wasm, config, ((host_dir, "/d"),), 256 << 20, serve_dirs=serve),
                                  HostStdio(stdin=null.fileno(), stdout=out.fileno(), stderr=null.fileno()))
        finally:
            keep.close()
        seconds = time.perf_counter() - started
        out.seek(0)
        text = out.read().decode()
    if result.status != 0:
        raise SystemExit(f"{backend} serve={serve} {args}: status {result.status} {result.message}\n{text}")
    return seconds, text


def fileio_ms(text: str) -> tuple[float, float]:
    fields = dict(item.split("=") for item in text.split())
    return float(fields["write_ms"]), float(fields["read_ms"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--kvm", action="store_true", help="also measure a kvm keep (served only)")
    options = parser.parse_args()
    repeats = 3 if options.quick else 9
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src" / "motte")], check=True)
    files = Path(workload("files")).read_bytes()
    fileio = Path(workload("fileio")).read_bytes()
    with tempfile.TemporaryDirectory() as scratch:
        run_once("nil", files, ["/d"], scratch, True)  # warm the module cache and the page cache
        print(f"--dir served over the channel vs opened directly by a nil keep, medians of {repeats}")
        served, direct = [], []
        for _ in range(repeats):
            served.append(run_once("nil", files, ["/d"], scratch, True)[0])
            direct.append(run_once("nil", files, ["/d"], scratch, False)[0])
        s, d = statistics.median(served), statistics.median(direct)
        print(f"{'files workload, whole run':<40} served {s * 1000:8.1f} ms   direct {d * 1000:8.1f} ms   "
              f"ratio {s / d:5.2f}x")
        for label, mib, chunk in (("64 MiB in 1 MiB calls", 64, 1 << 20), ("8 MiB in 4 KiB calls", 8, 4096)):
            runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
            for _ in range(max(3, repeats // 2)):
                for serve in (True, False):
                    text = run_once("nil", fileio, ["/d", str(mib), str(chunk)], scratch, serve)[1]
                    runs[serve].append(fileio_ms(text))
            calls = mib * (1 << 20) // chunk
            for index, what in ((0, "write"), (1, "read")):
                sm = statistics.median(r[index] for r in runs[True])
                dm = statistics.median(r[index] for r in runs[False])
                mbs = mib * 1.048576
                print(f"{what + ' ' + label:<40} served {mbs / sm * 1000:8.1f} MB/s direct {mbs / dm * 1000:8.1f} MB/s"
                      f" ratio {dm / sm:5.2f}x   ({sm * 1000 / calls:6.1f} vs {dm * 1000 / calls:6.1f} µs/call)")
        if options.kvm:
            print("kvm keep (TCG here), served:")
            seconds = run_once("kvm", files, ["/d"], scratch, True)[0]
            print(f"{'files workload, whole run':<40} {seconds * 1000:8.1f} ms")
            for label, mib, chunk in (("64 MiB in 1 MiB calls", 64, 1 << 20), ("8 MiB in 4 KiB calls", 8, 4096)):
                write, read = fileio_ms(run_once("kvm", fileio, ["/d", str(mib), str(chunk)], scratch, True)[1])
                calls = mib * (1 << 20) // chunk
                for what, ms in (("write", write), ("read", read)):
                    print(f"{what + ' ' + label:<40} {mib * 1.048576 / ms * 1000:8.1f} MB/s "
                          f"({ms * 1000 / calls:7.1f} µs/call)")


if __name__ == "__main__":
    main()
