"""``motte demo``: demonstrations of what each backend does and does not protect."""

from __future__ import annotations

import hashlib
import json
import os
import threading

import click

from motte.shared.errors import MotteError

SECRET_PREFIX = b"MOTTE-SECRET-"
SECRET_LENGTH = len(SECRET_PREFIX) + 32


@click.group()
def demo() -> None:
    """Demonstrations of what each backend protects."""


@demo.command("secret-search")
@click.option("--backend", type=click.Choice(["auto", "nil", "kvm"]), default="auto", show_default=True,
              help="Where the keep runs.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def secret_search(backend: str, as_json: bool) -> None:
    """Run a workload holding a secret, then search the keep's memory from the host for it.

    The workload makes a random secret and reveals only its SHA-256. The host then reads the
    memory of the process that holds the keep (the keep itself for nil, QEMU for kvm) the way a
    hostile host could, and reports whether it found the secret. On nil and kvm it will: those
    backends protect the host from the workload, not the workload from the host. On SEV-SNP or
    TDX the guest's memory is encrypted and the search finds nothing.
    """
    from motte.cli.run import default_backend
    from motte.demo import SECRET_WASM
    from motte.host.backends import get_backend
    from motte.host.backends.base import LaunchSpec
    from motte.host.memory_scan import scan_process
    from motte.host.session import HostStdio, RunRequest, run_workload
    from motte.shared.enarx_config import default_config

    chosen = default_backend() if backend == "auto" else backend
    keep = get_backend(chosen).launch(LaunchSpec(memory_bytes=256 << 20))
    stdin_read, stdin_write = os.pipe()
    stdout_read, stdout_write = os.pipe()
    outcome: dict[str, object] = {}

    def run() -> None:
        request = RunRequest(SECRET_WASM.read_bytes(), default_config(), memory_limit=64 << 20)
        outcome["result"] = run_workload(keep, request, HostStdio(stdin_read, stdout_write, 2))
        os.close(stdout_write)

    worker = threading.Thread(target=run, daemon=True)
    try:
        worker.start()
        with os.fdopen(stdout_read, "rb", closefd=False) as out:
            line = out.readline().decode().strip()
        if not line.startswith("sha256="):
            raise MotteError(f"the secret workload did not report its digest (got {line!r})")
        digest = line.removeprefix("sha256=")
        pid = keep.memory_pid()
        if pid is None:
            raise MotteError(f"the {chosen} backend gives no host process to search")
        try:
            scan = scan_process(pid, SECRET_PREFIX, SECRET_LENGTH,
                                lambda candidate: hashlib.sha256(candidate).hexdigest() == digest)
        except OSError as exc:
            raise MotteError(f"cannot read the memory of process {pid}: {exc.strerror}",
                             hint="run as the same user as the keep (or root)") from None
    finally:
        os.close(stdin_write)  # the workload ends when its stdin closes
        worker.join(timeout=30)
        keep.close()
        os.close(stdin_read)
        os.close(stdout_read)
    report = {
        "backend": chosen,
        "isolation": keep.isolation,
        "process": pid,
        "secret_found": scan.copies > 0,
        "copies": scan.copies,
        "scanned_mb": round(scan.scanned_bytes / 1e6, 1),
        "seconds": round(scan.seconds, 2),
    }
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(f"backend {chosen}: {keep.isolation}")
    click.echo(f"searched {report['scanned_mb']} MB of process {pid}'s memory in {report['seconds']} s")
    if scan.copies:
        click.echo(f"FOUND the workload's secret ({scan.copies} copies): on the {chosen} backend the host can "
                   "read the keep's memory. Only a confidential backend (SEV-SNP, TDX) protects it.")
    else:
        click.echo("the secret was not found in the keep's memory")
