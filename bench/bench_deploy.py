"""Benchmarks of ``motte deploy`` on the nil backend, through a host agent this script starts
(``motte host serve`` on a Unix socket, with its default warm nil keep), in one run.

    .venv/bin/python bench/bench_deploy.py [--quick]

Prints, for each figure, both measurements and their ratio. Targets: deploy of hello from the
command to its first output ≤ 2× ``motte run --backend nil`` of the same; a 26 MB module through
the attested session at ≥ 50 MB/s. Then where a deploy's time goes.

Before each timed command the agent's warm keep is back in its pool, and has waited there long
enough to load its provisioning code (as a warm keep does once idle: see
``motte.keep.runtime.IDLE_BEFORE_PRELOAD``): the steady state of an agent whose tenants do not
come back to back. A refill launching in the background would also slow whatever runs beside it.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import compile_motte, repetitions, to_first_output  # noqa: E402
from tests.workloads import workload  # noqa: E402

from motte.keep.runtime import IDLE_BEFORE_PRELOAD  # noqa: E402
from motte.outside.agent_api import KeepRequest  # noqa: E402
from motte.tenant.agent_client import AgentClient  # noqa: E402
from motte.tenant.deploy.package import Package, load_package  # noqa: E402
from motte.tenant.deploy.policy import TenantPolicy, load_tenant_policy  # noqa: E402
from motte.tenant.deploy.session import DeployOutcome, Limits, deploy  # noqa: E402

MOTTE = [sys.executable, "-m", "motte"]
BIG_MB = 26
#: what a deploy's CLI process imports before it can talk to the keep
CLIENT_IMPORTS = ("import motte.cli.app, motte.tenant.agent_client, motte.tenant.deploy.package, "
                  "motte.tenant.deploy.policy, motte.tenant.deploy.session")
STAGES = ("launch", "tls", "evidence", "verify", "deploy", "transfer", "start", "first_output")


def with_section(wasm: bytes, size: int) -> bytes:
    """``wasm`` with a custom section of ``size`` random bytes: valid, and it compiles fast."""
    name = b"motte.bench.padding"
    body = _leb128(len(name)) + name + os.urandom(size)
    return wasm + b"\x00" + _leb128(len(body)) + body


def _leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class Agent:
    """``motte host serve`` on a Unix socket, for the duration of the bench."""

    def __init__(self, scratch: Path):
        command = [*MOTTE, "host", "serve", "--unix", str(scratch / "agent.sock"), "--backend", "nil", "--json"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.process.stdout is not None
        ready = json.loads(self.process.stdout.readline())
        self.url: str = ready["url"]
        self.warm: int = ready["warm"].get("nil", 0)
        self.client = AgentClient(self.url)

    def settle(self) -> None:
        """Wait until the warm pool is full again, and its keeps had the time to load their
        provisioning code."""
        deadline = time.monotonic() + 30
        while self.warm and self.client.info()["warm"]["nil"]["ready"] < self.warm:
            if time.monotonic() > deadline:
                raise SystemExit("the agent's warm pool did not refill within 30 s")
            time.sleep(0.01)
        time.sleep(IDLE_BEFORE_PRELOAD + 0.3)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def deploy_in_process(agent: Agent, package: Package, policy: TenantPolicy) -> tuple[float, DeployOutcome]:
    """One deploy through the client library: (seconds to get the keep and its session, the outcome)."""
    started = time.perf_counter()
    record = agent.client.create(KeepRequest(backend="nil"))
    with agent.client.session(record.id) as session:
        launch = time.perf_counter() - started
        outcome = deploy(session, package, policy, Limits(record.memory), output=lambda frame, data: None)
    return launch, outcome


def median_of(repeats: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(repeats))


def main() -> None:
    repeats = repetitions()
    compile_motte()
    hello = workload("hello")
    policy = load_tenant_policy("allow_unattested = true\n")
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        policy_path = scratch / "dev.toml"
        policy_path.write_text("allow_unattested = true\n")
        big_path = scratch / "big.wasm"
        big_path.write_bytes(with_section(hello.read_bytes(), BIG_MB * 1000 * 1000))
        agent = Agent(scratch)
        try:
            run_cmd = [*MOTTE, "run", "--backend", "nil", str(hello)]
            deploy_cmd = [*MOTTE, "deploy", "--agent", agent.url, "--backend", "nil", "--policy", str(policy_path),
                          str(hello)]
            for command in (run_cmd, deploy_cmd):  # warm the caches
                agent.settle()
                to_first_output(command)
            ours, theirs = [], []
            for _ in range(repeats):  # interleaved, so drifting machine load hits both alike
                agent.settle()
                ours.append(to_first_output(deploy_cmd))
                agent.settle()
                theirs.append(to_first_output(run_cmd))
            deployed, ran = statistics.median(ours), statistics.median(theirs)
            print(f"motte deploy vs motte run, nil backend, hello, medians of {repeats}")
            print(f"{'command to first output':<44} deploy {deployed * 1000:7.1f} ms   run {ran * 1000:7.1f} ms   "
                  f"ratio {deployed / ran:5.2f}x")
            stages = _stages(agent, load_package(hello), policy, repeats)
            imports = median_of(repeats, lambda: _timed([sys.executable, "-c", CLIENT_IMPORTS]))
            big = load_package(big_path)
            sends, startups = [], []
            for _ in range(max(3, repeats // 3)):
                agent.settle()
                _, outcome = deploy_in_process(agent, big, policy)
                sends.append(outcome.timings["transfer"])
                startups.append(outcome.timings["transfer"] + outcome.timings["start"])
        finally:
            agent.stop()
    size_mb = len(big.wasm) / 1e6
    send, to_started = statistics.median(sends), statistics.median(startups)
    print(f"{size_mb:.1f} MB module: sent in {send * 1000:6.1f} ms ({size_mb / send:6.1f} MB/s, client side); "
          f"started after {to_started * 1000:6.1f} ms ({size_mb / to_started:6.1f} MB/s, with the keep's hashing, "
          "compiling and starting)")
    print()
    print("where a deploy of hello goes (medians, ms):")
    print(f"  {'client start-up (interpreter, imports)':<40} {imports * 1000:7.1f}")
    for stage in STAGES:
        print(f"  {stage:<40} {stages[stage] * 1000:7.1f}")
    print()
    print(f"start-up ratio     {deployed / ran:5.2f}x  (target <= 2.00x)")
    print(f"throughput         {size_mb / to_started:5.1f} MB/s to started, {size_mb / send:5.1f} MB/s sent  "
          "(target >= 50 MB/s)")


def _stages(agent: Agent, package: Package, policy: TenantPolicy, repeats: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for _ in range(repeats):
        agent.settle()
        launch, outcome = deploy_in_process(agent, package, policy)
        samples["launch"].append(launch)
        for stage, seconds in outcome.timings.items():
            samples[stage].append(seconds)
    return {stage: statistics.median(values) for stage, values in samples.items()}


def _timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
