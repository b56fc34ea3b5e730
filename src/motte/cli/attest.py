"""``motte attest``: verify attestation evidence against a policy (tenant side).

Files are read here and only here; the verifier itself is sans-I/O. Exit status of ``verify``:
0 when the evidence verifies and satisfies the policy, 1 when it is refused, for whatever reason,
malformed evidence included (the claims gathered and the reason are printed; with ``--json``
``{"verdict": "refused", "reason": ...}``), 125 (via MotteError) for motte's own failures only: a
file that cannot be read, a bad flag or policy.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from motte.outside.user_files import read_user_file, read_user_text
from motte.shared.errors import MotteError
from motte.shared.printable import printable

if TYPE_CHECKING:
    from motte.tenant.attest import Claims

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
        text = read_user_text(policy_path, what="policy file", limit=MAX_INPUT)
        try:
            policy = av.load_policy(text)
        except av.PolicyError as exc:
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
        if exc.reason is av.Reason.COLLATERAL_INVALID and collateral is None:
            # A flag is missing: the evidence was not looked at.
            raise MotteError(f"{evidence_path}: {exc.message}", hint=_hint(exc.reason)) from exc
        # Evidence that cannot even be read is refused like any other: a verdict, not an error.
        _report(exc.claims, [(exc.reason.value, exc.message)], [], now, as_json, hint=_hint(exc.reason))
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
    return read_user_file(path, what=f"{what} file", limit=MAX_INPUT)


def _parse_now(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)  # the CLI is the one place that may read the clock
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise MotteError(f"--now {text!r} is not an ISO 8601 time", hint="e.g. 2025-12-06T00:00:00Z") from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _report(claims: Claims | None, violations: list[tuple[str, str]], checks: list[str], now: datetime,
            as_json: bool, hint: str | None = None) -> None:
    verdict = "accepted" if not violations else "refused"
    if as_json:
        out = {
            "verdict": verdict,
            "reason": violations[0][0] if violations else None,
            "violations": [{"reason": r, "message": m} for r, m in violations],
            "now": now.isoformat(),
            "claims": None if claims is None else claims.to_dict(),
            "policy_checks": checks,
        }
        click.echo(json.dumps(out, indent=2))  # (ASCII only: every control character escaped)
        return
    _print_report(claims, violations, checks, hint)
    # The verdict is the one line at column 0 that does not come from the table: every value above
    # came from the evidence, is escaped (no line breaks, no terminal controls) and sits indented in
    # a table cell, so nothing in the evidence can print a line that looks like this one.
    from rich.console import Console
    from rich.text import Text

    style = "bold green" if not violations else "bold red"
    Console(highlight=False).print(Text.assemble((f"verdict: {verdict}", style), f" (at {now.isoformat()})"))


def _print_report(claims: Claims | None, violations: list[tuple[str, str]], checks: list[str],
                  hint: str | None) -> None:
    """The claims, the checks passed and the reasons for refusal: text from the evidence, each value
    escaped and given to rich as text (never as markup) in an indented table cell."""
    from rich.console import Console
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False)
    if claims is not None:
        table = Table(title=f"{claims.technology.upper()} evidence", show_header=False, expand=False)
        table.add_column("claim", style="bold", no_wrap=True)
        table.add_column("value", overflow="fold")
        for name, value in _claim_rows(claims.to_dict()):
            table.add_row(Text(printable(name)), Text(printable(value)))
        console.print(table)
    lines = Table.grid(padding=(0, 1))
    lines.add_column(no_wrap=True)
    lines.add_column(overflow="fold")
    for check in (claims.checks if claims is not None else []) + checks:
        lines.add_row(Text("ok", style="green"), Text(printable(check)))
    for reason, message in violations:
        shown = Text.assemble((printable(reason), "bold"), ": ", printable(message))
        lines.add_row(Text("refused", style="red"), shown)
    if hint is not None:
        lines.add_row(Text("hint"), Text(hint))
    console.print(Padding(lines, (0, 0, 0, 2)))


def _claim_rows(data: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("verified", "yes" if data["verified"] else "no")]
    for key in ("product", "version", "signing_key", "debug", "policy_bits", "tcb_status"):
        if data[key] is not None:
            rows.append((key.replace("_", " "), str(data[key])))
    if data["advisory_ids"]:
        rows.append(("advisories", ", ".join(data["advisory_ids"])))
    for group in ("measurements", "tcb", "signer", "platform_id"):
        for name, value in data[group].items():
            rows.append((f"{group.replace('_', ' ')}: {name}", str(value)))
    if data["report_data"] is not None:
        rows.append(("report data", data["report_data"]))
    for name, value in data["details"].items():
        rows.append((name.replace("_", " "), str(value)))
    return rows


# `motte attest fetch-cert` is defined beside the Steward whose certificates it reads.
from motte.cli.steward import fetch_cert  # noqa: E402

attest.add_command(fetch_cert)
