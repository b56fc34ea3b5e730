"""Container start to first output through containerd: a wasm hello in a motte keep vs plain runc
running a native hello (busybox echo), in one run, on one containerd.

    .venv/bin/python bench/bench_oci.py [--quick]

Needs root, Debian's containerd and runc (dev/setup --system). Each figure is the time from
``ctr run --rm`` starting to the first byte of the container's output. For motte it also shows
where that time goes: ``motte-oci create`` (parse the bundle, start the keep and the init
process), ``motte-oci start`` (release the init process), the rest being containerd, the shim and
the run itself.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import compile_motte, repetitions, to_first_output  # noqa: E402
from tests.oci.containerd import BUSYBOX, MOTTE_OCI, Containerd, unavailable  # noqa: E402
from tests.workloads import workload  # noqa: E402


def timing_wrapper(directory: Path, log: Path) -> str:
    """A runtime that runs motte-oci and logs how long each of its commands took."""
    wrapper = directory / "motte-oci-timed"
    wrapper.write_text(
        "#!/bin/sh\n"
        'start=$(date +%s%N)\n'
        f'"{MOTTE_OCI}" "$@"\n'
        "status=$?\n"
        'for arg in "$@"; do case $arg in create|start|delete|kill|state) command=$arg; break;; esac; done\n'
        f'echo "$command $start $(date +%s%N)" >> "{log}"\n'
        "exit $status\n"
    )
    wrapper.chmod(0o755)
    return str(wrapper)


def phases(log: Path) -> dict[str, float]:
    """Median seconds per motte-oci command, from the wrapper's log."""
    times: dict[str, list[float]] = defaultdict(list)
    for line in log.read_text().splitlines():
        command, start, end = line.split()
        times[command].append((int(end) - int(start)) / 1e9)
    return {command: statistics.median(values) for command, values in times.items()}


def main() -> None:
    repeats = repetitions()
    reason = unavailable()
    if reason is not None:
        raise SystemExit(f"bench_oci: {reason}")
    runc = shutil.which("runc")
    compile_motte()
    with tempfile.TemporaryDirectory(prefix="bench-oci-") as temp:
        base = Path(temp)
        daemon = Containerd(base).start()
        try:
            daemon.import_image("docker.io/motte/hello:1", {"hello.wasm": workload("hello").read_bytes()},
                                ["/hello.wasm"])
            daemon.import_image("docker.io/motte/native:1", {"bin/busybox": Path(BUSYBOX).read_bytes()},
                                ["/bin/busybox", "echo", "hello"])
            log = base / "phases.log"
            timed = timing_wrapper(base, log)
            ctr = ["ctr", "--address", daemon.address, "--namespace", "motte-test"]

            def motte(i: int) -> list[str]:
                return [*ctr, *daemon.run_args(timed), "--rm", "--annotation", "motte.backend=nil",
                        "docker.io/motte/hello:1", f"motte-{i}"]

            def native(i: int) -> list[str]:
                assert runc is not None
                return [*ctr, *daemon.run_args(runc), "--rm", "docker.io/motte/native:1", f"runc-{i}"]

            to_first_output(motte(999))  # warm: the module cache, the snapshots
            log.unlink()
            ours, theirs = [], []
            for i in range(repeats):  # interleaved, so drifting machine load hits both alike
                ours.append(to_first_output(motte(i)))
                if runc is not None:
                    theirs.append(to_first_output(native(i)))
            report(repeats, ours, theirs, phases(log), runc)
        finally:
            daemon.shut_down()


def report(repeats: int, ours: list[float], theirs: list[float], motte_phases: dict[str, float],
           runc: str | None) -> None:
    print(f"container start to first output through containerd ({os.cpu_count()} cores), medians of {repeats}")
    m = statistics.median(ours)
    print(f"  motte-oci, nil keep, wasm hello       {m * 1000:8.1f} ms")
    if runc is None:
        print("  runc, native hello                   (runc is not installed: no baseline)")
    else:
        d = statistics.median(theirs)
        print(f"  runc, native hello (busybox echo)    {d * 1000:8.1f} ms   motte/runc {m / d:5.2f}x")
    print("  where motte's time goes (each motte-oci command, wall time):")
    for command in ("create", "start", "state", "kill", "delete"):
        if command in motte_phases:
            print(f"    motte-oci {command:<8}{motte_phases[command] * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
