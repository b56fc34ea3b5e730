"""The micro-VM keep against its baselines, measured in one run.

    .venv/bin/python bench/bench_vm.py [--boots 3] [--mb 32] [--pings 200]

1. Cold start: from ``launch()`` to the keep's HELLO, and to the first byte of a hello-world
   workload's output, for the ``kvm`` backend (image cached) and the ``nil`` backend (the
   baseline), launches interleaved so that a noisy host weighs on both alike. The kvm keep is
   measured twice: restored from the snapshot of a parked keep (the default; the snapshot is
   made first if missing, and that launch is shown apart) and booted (``MOTTE_KVM_SNAPSHOT=0``).
2. The channel: guest->host and host->guest throughput and the small-message round trip over the
   virtio serial port, against the same self-test program run on the host over a socketpair
   (the baseline: the channel stack without the VM). Both sides use motte's framed, credit-based
   channel (``motte.shared.endpoint``); the guest side is the image's self test
   (``MOTTE_MODE=selftest``).
3. A CPU-bound workload (``sha256 -- 16``: SHA-256 over 16 MiB, in wasm) in a kvm keep and in a
   nil keep: the time from the launch request to the exit report, the keep's start excluded
   (compiling the module is included: the kvm keep has no module cache).

Prints which accelerator the kvm keep used (TCG on machines whose /dev/kvm is PVM): under TCG
every guest instruction is translated, so expect the VM far behind nil; with KVM, close to it.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.workloads builds the hello-world workload

from motte.host.backends.base import Backend, KeepHandle, LaunchSpec  # noqa: E402
from motte.host.backends.kvm import KvmBackend  # noqa: E402
from motte.host.backends.nil import NilBackend  # noqa: E402
from motte.host.image.build import ensure_image  # noqa: E402
from motte.host.image.layout import GUEST_DIR  # noqa: E402
from motte.shared.endpoint import Endpoint  # noqa: E402
from motte.shared.transport import SocketTransport  # noqa: E402

MB = 1_000_000


@dataclass
class ColdStart:
    hello: float
    first_output: float


def cpu_bound(backend: Backend, wasm: bytes, args: list[str]) -> float:
    """Seconds from the launch request to the exit report, in a keep that is already up."""
    from motte.host.session import HostStdio, RunRequest, run_workload
    from motte.shared.enarx_config import default_config

    devnull_in = os.open(os.devnull, os.O_RDONLY)
    devnull_out = os.open(os.devnull, os.O_WRONLY)
    keep = backend.launch(LaunchSpec(memory_bytes=64 << 20, boot_timeout=120))
    try:
        started = time.monotonic()
        result = run_workload(keep, RunRequest(wasm, default_config().with_extra(args=args), memory_limit=64 << 20),
                              HostStdio(stdin=devnull_in, stdout=devnull_out, stderr=devnull_out))  # fmt: skip
        seconds = time.monotonic() - started
        if result.status != 0:
            raise SystemExit(f"the CPU-bound workload failed on {backend.name}: {result}")
    finally:
        keep.close()
        os.close(devnull_in)
        os.close(devnull_out)
    return seconds


def cold_start(backend: Backend, wasm: bytes) -> ColdStart:
    from motte.host.session import HostStdio, RunRequest, run_workload
    from motte.shared.enarx_config import default_config

    read_end, write_end = os.pipe()
    devnull = os.open(os.devnull, os.O_RDONLY)
    first: list[float] = []

    def watch() -> None:
        data = os.read(read_end, 1)
        first.append(time.monotonic())
        while data:
            data = os.read(read_end, 65536)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    keep = backend.launch(LaunchSpec(memory_bytes=64 << 20, boot_timeout=120))
    hello = time.monotonic() - started
    try:
        result = run_workload(keep, RunRequest(wasm, default_config(), memory_limit=64 << 20),
                              HostStdio(stdin=devnull, stdout=write_end, stderr=write_end))  # fmt: skip
        if result.status != 0:
            raise SystemExit(f"the workload failed on {backend.name}: {result}")
    finally:
        keep.close()
        os.close(write_end)
        watcher.join(10)
        os.close(read_end)
        os.close(devnull)
    return ColdStart(hello, first[0] - started if first else float("nan"))


@dataclass
class ChannelFigures:
    rtt_us: list[float]
    to_host_mbs: float
    to_guest_mbs: float


def channel_figures(endpoint: Endpoint, size: int, pings: int) -> ChannelFigures:
    rtts = []
    for seq in range(pings):
        started = time.perf_counter()
        endpoint.send_control("ping", seq=seq)
        reply = endpoint.recv_control(timeout=30)
        rtts.append((time.perf_counter() - started) * 1e6)
        assert reply == {"op": "pong", "seq": seq}, reply
    # guest -> host
    started = time.perf_counter()
    endpoint.expect_opens("bench-source")
    endpoint.send_control("source", bytes=size, chunk=256 << 10)
    stream, _meta = endpoint.accept_stream(timeout=30)
    received = 0
    while data := endpoint.read(stream, 1 << 20, timeout=60):
        received += len(data)
    to_host = received / (time.perf_counter() - started) / MB
    assert received == size
    # host -> guest
    endpoint.send_control("sink")
    started = time.perf_counter()
    stream = endpoint.open_stream("bench-sink")
    chunk = b"\x5a" * (256 << 10)
    sent = 0
    while sent < size:
        piece = chunk[: size - sent]
        endpoint.write(stream, piece)
        sent += len(piece)
    endpoint.eof(stream)
    reply = endpoint.recv_control(timeout=120)
    to_guest = size / (time.perf_counter() - started) / MB
    assert reply["op"] == "sunk" and reply["bytes"] == size, reply
    return ChannelFigures(rtts, to_host, to_guest)


def local_channel(size: int, pings: int) -> ChannelFigures:
    """The baseline: the guest's self-test program as a host process on a socketpair."""
    host_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    child = subprocess.Popen([sys.executable, str(GUEST_DIR / "selftest.py"), "--channel-fd", str(child_sock.fileno())],
                             pass_fds=(child_sock.fileno(),))  # fmt: skip
    child_sock.close()
    endpoint = Endpoint(SocketTransport(host_sock), "host", name="bench-local").start()
    try:
        endpoint.hello(timeout=30)
        figures = channel_figures(endpoint, size, pings)
        endpoint.send_control("bye")
        child.wait(10)
    finally:
        endpoint.close()
        if child.poll() is None:
            child.kill()
            child.wait()
    return figures


def vm_channel(size: int, pings: int) -> tuple[ChannelFigures, KeepHandle]:
    keep = KvmBackend(guest_mode="selftest").launch(LaunchSpec(memory_bytes=64 << 20, boot_timeout=120))
    try:
        figures = channel_figures(keep.endpoint, size, pings)
        keep.endpoint.send_control("bye")
        keep.wait(10)
    finally:
        keep.close()
    return figures, keep


def median(values: list[float]) -> float:
    return statistics.median(values)


def row(name: str, base: float, vm: float, unit: str, fmt: str = "{:.2f}") -> None:
    ratio = vm / base if base else float("nan")
    print(f"  {name:<34} {fmt.format(base):>10} {fmt.format(vm):>10}  {unit:<5} {ratio:8.2f}x")


def p90(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.9)]


def timed(label: str, fn: Callable[[], object]) -> None:
    started = time.monotonic()
    fn()
    print(f"{label}: {time.monotonic() - started:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--boots", type=int, default=3, help="cold starts per backend")
    parser.add_argument("--mb", type=int, default=32, help="MB per throughput direction")
    parser.add_argument("--pings", type=int, default=200, help="round trips")
    parser.add_argument("--sha-mib", type=int, default=16, help="MiB the CPU-bound workload hashes")
    parser.add_argument("--cpu-runs", type=int, default=2, help="CPU-bound runs per backend")
    args = parser.parse_args()

    from tests.workloads import workload

    wasm = Path(workload("hello")).read_bytes()
    sha = Path(workload("sha256")).read_bytes()
    timed("keep image (cached or built)", lambda: ensure_image())
    first_warm = cold_start(KvmBackend(snapshots=True), wasm)  # makes the snapshot if there is none
    nil_runs: list[ColdStart] = []
    kvm_runs: list[ColdStart] = []
    boot_runs: list[ColdStart] = []
    for _ in range(args.boots):  # interleaved: load on the host hits all alike
        nil_runs.append(cold_start(NilBackend(), wasm))
        kvm_runs.append(cold_start(KvmBackend(snapshots=True), wasm))
        boot_runs.append(cold_start(KvmBackend(snapshots=False), wasm))
    local = local_channel(args.mb * MB, args.pings)
    vm, keep = vm_channel(args.mb * MB, args.pings)
    accel = getattr(keep, "accel", "?")
    sha_args = [str(args.sha_mib)]
    nil_cpu, kvm_cpu = [], []
    for _ in range(args.cpu_runs):
        nil_cpu.append(cpu_bound(NilBackend(), sha, sha_args))
        kvm_cpu.append(cpu_bound(KvmBackend(), sha, sha_args))

    print(f"\nkvm accelerator: {accel} ({keep.isolation})")
    print(f"cold starts: {args.boots} per backend, medians; channel: {args.mb} MB per direction, {args.pings} pings; "
          f"CPU-bound: {args.cpu_runs} runs per backend, medians\n")  # fmt: skip
    print(f"  {'':<34} {'baseline':>10} {'kvm':>10}  {'unit':<5} {'ratio':>9}")
    print("  cold start (baseline: nil backend)")
    nil_hello, nil_output = median([r.hello for r in nil_runs]), median([r.first_output for r in nil_runs])
    row("launch -> HELLO (restored)", nil_hello, median([r.hello for r in kvm_runs]), "s")
    row("launch -> first output (restored)", nil_output, median([r.first_output for r in kvm_runs]), "s")
    row("launch -> HELLO (booted)", nil_hello, median([r.hello for r in boot_runs]), "s")
    row("launch -> first output (booted)", nil_output, median([r.first_output for r in boot_runs]), "s")
    print("  channel (baseline: same program on a host socketpair)")
    row("round trip, control message, p50", median(local.rtt_us), median(vm.rtt_us), "us", "{:.0f}")
    row("round trip, control message, p90", p90(local.rtt_us), p90(vm.rtt_us), "us", "{:.0f}")
    row("throughput guest -> host", local.to_host_mbs, vm.to_host_mbs, "MB/s", "{:.1f}")
    row("throughput host -> guest", local.to_guest_mbs, vm.to_guest_mbs, "MB/s", "{:.1f}")
    print("  CPU-bound workload (baseline: nil backend)")
    row(f"sha256 over {args.sha_mib} MiB, launch -> exit", median(nil_cpu), median(kvm_cpu), "s")
    print(f"\n  kvm restored (s): HELLO {[round(r.hello, 2) for r in kvm_runs]}, "
          f"output {[round(r.first_output, 2) for r in kvm_runs]}")  # fmt: skip
    print(f"  kvm booted (s): HELLO {[round(r.hello, 2) for r in boot_runs]}, "
          f"output {[round(r.first_output, 2) for r in boot_runs]}")  # fmt: skip
    print(f"  kvm first launch (s): output {first_warm.first_output:.2f} (restored, or booted and saved)")
    print(f"  nil cold starts (s): output {[round(r.first_output, 3) for r in nil_runs]}")


if __name__ == "__main__":
    main()
