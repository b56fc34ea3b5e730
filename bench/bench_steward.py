"""Steward throughput and latency on loopback, 32 concurrent clients.

    .venv/bin/python bench/bench_steward.py [--seconds 5] [--clients 32] [--workers 0 2] [--no-replicas]

The Steward runs in its own process (the real aiohttp service, audit log on disk, WAL and
synchronous=FULL, every answer sent after its log entry is committed). The clients run here, on
keep-alive connections, sending pre-built CSRs so that only the Steward's work is measured:

  kvm  CSRs with the KVM OID (P-256 keys), issued because the policy allows unattested keeps
  snp  CSRs with SNP evidence (P-384 keys, a report signed by a test-only VCEK bound to each key),
       verified against the test-only AMD root the Steward is configured with, measurement pinned
  get  GET / (health), the baseline: the HTTP stack and the clients alone, measured in the same run

Then, in the same run (unless --no-replicas), issuances/s of one Steward on SQLite against two
replicas (two processes behind one address: both listen on one port with SO_REUSEPORT, and the
kernel spreads the clients' connections) sharing one audit log, in one SQLite file or on PostgreSQL
(a server the bench starts: initdb into a temporary directory, a unix socket), all with the default
number of workers.

Target: >= 300 issuances/s with p99 < 100 ms for both kinds, on a 2-core machine, with the default
number of workers (one per CPU); the exit status says whether it was met. With 32 clients in a
closed loop, latency is clients / throughput, so p99 < 100 ms needs well over 320 issuances/s.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.tenant.attest_forge: the test-only AMD hierarchy
TARGET_PER_S = 300.0
TARGET_P99_MS = 100.0


# --- the server process --------------------------------------------------------------------------
def server_config(platform: Any) -> Any:
    from tests.steward.fakes import MEASUREMENT

    from motte.steward.app import StewardConfig
    from motte.steward.issuer import CertificateAuthority, new_ca
    from motte.steward.policy import load_steward_policy

    key, cert = new_ca("bench CA", now=datetime.now(UTC))
    policy = load_steward_policy(
        f'allow_unattested = true\n[attestation.snp]\nmeasurements = ["{MEASUREMENT.hex()}"]\n'
    )
    return StewardConfig.build(CertificateAuthority(key, cert), policy, amd_trust=platform.trust())


def run_server(config: Any, workers: int, log_location: str, port: int, reuse_port: bool, conn: Any) -> None:
    from motte.steward.app import StewardService, serve
    from motte.steward.log import AuditLog

    log = AuditLog(log_location)
    service = StewardService(config, log, workers=workers)

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_reader(conn.fileno(), stop.set)  # the parent says stop
        await serve(service, host="127.0.0.1", port=port, ssl_context=None, on_ready=conn.send, stop=stop,
                    reuse_port=reuse_port)

    try:
        asyncio.run(main())
    finally:
        log.close()
        conn.send((log.commits, log.events))


# --- the clients ---------------------------------------------------------------------------------
def csr_requests(platform: Any, kind: str, count: int) -> list[bytes]:
    from motte.keep.csr import build_csr, generate_key
    from motte.keep.evidence import Evidence
    from motte.keep.evidence.encoding import encode_snp_evidence
    from motte.shared.steward_certs import spki_der
    from motte.shared.steward_protocol import key_binding

    out = []
    for _ in range(count):
        key = generate_key("snp" if kind == "snp" else "kvm")
        if kind == "snp":
            report = platform.report(key_binding(spki_der(key.public_key()), "snp"))
            evidence = Evidence("snp", encode_snp_evidence(platform.vcek, [], report))
        else:
            evidence = Evidence("kvm", b"")
        csr = build_csr(key, evidence)
        head = (
            f"POST / HTTP/1.1\r\nHost: bench\r\nContent-Type: application/pkcs10\r\nContent-Length: {len(csr)}\r\n\r\n"
        )
        out.append(head.encode() + csr)
    return out


GET = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


@dataclass
class Result:
    kind: str
    requests: int
    seconds: float
    latencies: list[float]
    errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def load(port: int, kind: str, requests: list[bytes], clients: int, seconds: float, warmup: float) -> Result:
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from, until = start + warmup, start + warmup + seconds
    counted = 0

    async def client(i: int) -> None:
        nonlocal errors, counted
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        n = i
        while (now := loop.time()) < until:
            writer.write(requests[n % len(requests)])
            n += clients
            status = await read_response(reader)
            done = loop.time()
            if status != 200:
                errors += 1
            if now >= measure_from:
                latencies.append(done - now)
                counted += 1
        writer.close()
        await writer.wait_closed()

    await asyncio.gather(*(client(i) for i in range(clients)))
    return Result(kind, counted, seconds, latencies, errors)


@contextmanager
def stewards(config: Any, workers: int, log_locations: list[str]) -> Iterator[int]:
    """One Steward process per log location, all on one port (the first one's); yields the port,
    prints their commit counts at the end."""
    ctx = multiprocessing.get_context("spawn")
    running = []
    port, replicas = 0, len(log_locations) > 1
    try:
        for location in log_locations:
            parent, child = ctx.Pipe()
            # Not a daemon: the Steward's own worker pool needs child processes.
            proc = ctx.Process(target=run_server, args=(config, workers, location, port, replicas, child))
            proc.start()
            running.append((proc, parent))
            if not parent.poll(120):
                sys.exit("the Steward did not start")
            port = int(parent.recv().rsplit(":", 1)[1].strip("/"))
        yield port
    finally:
        commits = events = 0
        for proc, parent in running:
            if proc.is_alive():
                parent.send("stop")
                done, logged = parent.recv() if parent.poll(60) else (0, 0)
                commits, events = commits + done, events + logged
                proc.join(60)
            if proc.is_alive():
                proc.kill()
        print(f"  audit log: {events} events in {commits} commits ({events / max(commits, 1):.1f} per commit)")


def measure(config: Any, workers: int, args: argparse.Namespace, prepared: dict[str, list[bytes]]) -> dict[str, Result]:
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-steward-") as tmp, \
            stewards(config, workers, [str(Path(tmp) / "steward.db")]) as port:
        for kind in ("get", "kvm", "snp"):
            requests = [GET] if kind == "get" else prepared[kind]
            results[kind] = asyncio.run(load(port, kind, requests, args.clients, args.seconds, args.warmup))
    return results


def compare_replicas(config: Any, workers: int, args: argparse.Namespace, prepared: dict[str, list[bytes]]) -> None:
    """Issuances/s: one Steward on SQLite, then two replicas behind one address sharing one log (a
    SQLite file, then PostgreSQL), same CSRs."""
    from tests.pgsql.server import PostgresDidNotStart, new_database, postgres_server

    print(f"replicas (workers={workers} each; kvm and snp issuances)")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-steward-") as tmp, postgres_server() as sockets:
            setups = [("1 on SQLite    ", [str(Path(tmp) / "steward.db")]),
                      ("2 on SQLite    ", [str(Path(tmp) / "shared.db")] * 2)]
            dsn = new_database(sockets)
            setups.append(("2 on PostgreSQL", [dsn, dsn]))
            for label, locations in setups:
                with stewards(config, workers, locations) as port:
                    for kind in ("kvm", "snp"):
                        r = asyncio.run(load(port, kind, prepared[kind], args.clients, args.seconds, args.warmup))
                        print(f"  {label} {kind}: {r.rate:7.0f} issuances/s   p50 "
                              f"{statistics.median(r.latencies) * 1000:6.1f} ms   p99 {r.pct(0.99):6.1f} ms"
                              f"   errors {r.errors}")
    except PostgresDidNotStart as exc:
        print(f"  skipped: {exc}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per kind")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured time before each")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--no-replicas", action="store_true",
                        help="skip 1 Steward on SQLite vs 2 on SQLite or PostgreSQL")
    parser.add_argument(
        "--workers", type=int, nargs="+", help="Steward worker processes to compare (0: inline). Default: 0 and auto"
    )
    args = parser.parse_args()
    from motte.cli.steward import _default_workers

    default = _default_workers()
    args.workers = args.workers or sorted({0, default})
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"python {sys.version.split()[0]}, {cores} cores, {args.clients} clients, {args.seconds:g} s per kind")
    from tests.steward.fakes import FakeSnp

    started = time.perf_counter()
    platform = FakeSnp.make()  # the test-only AMD root: the Steward gets its certificates, we its VCEK key
    config = server_config(platform)
    prepared = {kind: csr_requests(platform, kind, 256) for kind in ("kvm", "snp")}
    print(f"  {sum(map(len, prepared.values()))} CSRs prepared in {time.perf_counter() - started:.1f} s")
    ok = True
    for workers in args.workers:
        how = "checking and signing on the event loop" if workers == 0 else "process pool"
        print(f"workers={workers} ({how}{'; the default here' if workers == default else ''})")
        results = measure(config, workers, args, prepared)
        base = results["get"].rate
        for kind in ("get", "kvm", "snp"):
            r = results[kind]
            line = (
                f"  {kind:>3}: {r.rate:7.0f} req/s   p50 {statistics.median(r.latencies) * 1000:6.1f} ms"
                f"   p99 {r.pct(0.99):6.1f} ms   errors {r.errors}"
            )
            if kind != "get":
                line += f"   {r.rate / base:.2f}x of GET /"
                meets = r.rate >= TARGET_PER_S and r.pct(0.99) < TARGET_P99_MS and r.errors == 0
                ok = ok and (meets or workers != default)
                line += (
                    "   target met"
                    if meets
                    else f"   BELOW TARGET ({TARGET_PER_S:.0f}/s, p99 < {TARGET_P99_MS:.0f} ms)"
                )
            print(line)
    if not args.no_replicas:
        compare_replicas(config, default, args, prepared)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
