"""``motte attest``: verify attestation evidence against a policy (tenant side).

Files are read here and only here; the verifier itself is sans-I/O. Exit status of ``verify``:
0 when the evidence verifies and satisfies the policy, 1 when it is refused (the claims gathered
and the reason are printed), 125 (via MotteError) when the input cannot be read or parsed at all.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from motte.shared.errors import MotteError

EXIT_REFUSED = 1
MAX_INPUT = 4 * 1024 * 1024  # evidence, certificates, collateral and policies are all far smaller


@click.group()
def attest() -> None:
    """Verify attestation evidence and keep certificates."""


@attest.command("verify")
@click.option(
    "--evidence",
    "evidence_path",
    required=True,
    metavar="FILE",
    help="SNP report (raw, hex, or Azure HCL), DCAP quote, or Nitro document (raw or base64).",
)
@click.option(
    "--kind",
    type=click.Choice(["auto", "snp", "tdx", "sgx", "nitro"]),
    default="auto",
    show_default=True,
    help="Evidence kind; auto tells from the bytes.",
)
@click.option(
    "--certs",
    "cert_paths",
    multiple=True,
    metavar="FILE",
    help="SNP: the VCEK/VLEK and optionally its chain (DER or PEM). Repeatable.",
)
@click.option("--crl", "crl_paths", multiple=True, metavar="FILE", help="SNP: an AMD CRL (DER or PEM). Repeatable.")
@click.option(
    "--collateral", "collateral_path", metavar="FILE", help="TDX/SGX: DCAP collateral JSON (dcap-qvl schema)."
)
@click.option("--policy", "policy_path", metavar="FILE", help="Policy TOML. Default: the strict built-in policy.")
@click.option(
    "--now",
    "now_text",
    metavar="TIME",
    help="Verify as of this ISO 8601 time (UTC if no offset). Default: the current time.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the claims and verdict as JSON.")
def verify_command(
    evidence_path: str,
    kind: str,
    cert_paths: tuple[str, ...],
    crl_paths: tuple[str, ...],
    collateral_path: str | None,
    policy_path: str | None,
    now_text: str | None,
    as_json: bool,
) -> None:
    """Verify attestation evidence and apply the policy; print the claims and the verdict."""
    from motte.tenant import attest as av  # imported on use: keeps `motte --help` fast

    now = _parse_now(now_text)
    policy = av.Policy()
    if policy_path is not None:
        try:
            policy = av.load_policy(_read(policy_path, "policy").decode("utf-8"))
        except (av.PolicyError, UnicodeDecodeError) as exc:
            raise MotteError(
                f"policy {policy_path}: {exc}", hint="the policy keys are listed in motte/tenant/attest/policy.py"
            ) from exc
    evidence = _read(evidence_path, "evidence")
    certs = [_read(p, "certificate") for p in cert_paths]
    crls = [_read(p, "CRL") for p in crl_paths]
    collateral = _read(collateral_path, "collateral") if collateral_path else None

    try:
        claims = av.verify(evidence, kind, now=now, certs=certs, crls=crls, collateral=collateral)
    except av.VerificationError as exc:
        if exc.claims is None:
            # Nothing could be read from the input: that is bad input, not a refused keep.
            raise MotteError(f"{evidence_path}: {exc}", hint=_hint(exc.reason)) from exc
        _report(exc.claims, [(exc.reason.value, exc.message)], [], now, as_json)
        sys.exit(EXIT_REFUSED)
    verdict = av.evaluate(claims, policy)
    violations = [(v.reason.value, v.message) for v in verdict.violations]
    _report(claims, violations, verdict.checks, now, as_json)
    if violations:
        sys.exit(EXIT_REFUSED)


def _hint(reason: str) -> str | None:
    return {
        "collateral_invalid": "TDX/SGX quotes need --collateral with the dcap-qvl collateral JSON",
        "unknown_kind": "pass --kind snp|tdx|sgx|nitro",
        "malformed": "is this the right file? evidence may be raw bytes, hex or base64",
    }.get(reason)


def _read(path: str, what: str) -> bytes:
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_INPUT:
            raise MotteError(f"{what} file {path} is {size} bytes; the limit is {MAX_INPUT}")
        return p.read_bytes()
    except FileNotFoundError as exc:
        raise MotteError(f"{what} file not found: {path}", hint="check the path") from exc
    except OSError as exc:
        raise MotteError(f"cannot read {what} file {path}: {exc.strerror or exc}") from exc


def _parse_now(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)  # the CLI is the one place that may read the clock
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise MotteError(f"--now {text!r} is not an ISO 8601 time", hint="e.g. 2025-12-06T00:00:00Z") from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _report(claims: Any, violations: list[tuple[str, str]], checks: list[str], now: datetime, as_json: bool) -> None:
    verdict = "accepted" if not violations else "refused"
    if as_json:
        out = {
            "verdict": verdict,
            "reason": violations[0][0] if violations else None,
            "violations": [{"reason": r, "message": m} for r, m in violations],
            "now": now.isoformat(),
            "claims": claims.to_dict(),
            "policy_checks": checks,
        }
        click.echo(json.dumps(out, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    data = claims.to_dict()
    table = Table(title=f"{data['technology'].upper()} evidence", show_header=False, expand=False)
    table.add_column("claim", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_row("verified", "yes" if data["verified"] else "no")
    for key in ("product", "version", "signing_key", "debug", "policy_bits", "tcb_status"):
        if data[key] is not None:
            table.add_row(key.replace("_", " "), str(data[key]))
    if data["advisory_ids"]:
        table.add_row("advisories", ", ".join(data["advisory_ids"]))
    for group in ("measurements", "tcb", "signer", "platform_id"):
        for name, value in data[group].items():
            table.add_row(f"{group.replace('_', ' ')}: {name}", str(value))
    if data["report_data"] is not None:
        table.add_row("report data", data["report_data"])
    for name, value in data["details"].items():
        table.add_row(name.replace("_", " "), str(value))
    console.print(table)
    for check in data["checks"] + checks:
        console.print(f"  [green]ok[/green] {check}")
    for reason, message in violations:
        console.print(f"  [red]refused[/red] [bold]{reason}[/bold]: {message}")
    style = "bold green" if not violations else "bold red"
    console.print(f"[{style}]verdict: {verdict}[/{style}] (at {now.isoformat()})")


# `motte attest fetch-cert` is defined beside the Steward whose certificates it reads.
from motte.cli.steward import fetch_cert  # noqa: E402

attest.add_command(fetch_cert)
