"""``motte steward``: run the Steward (the attestation CA), make its CA, read its log; and
``motte attest fetch-cert``, which reads what a keep's certificate says was attested.

Heavy imports (aiohttp, the verifier) happen inside the commands, so ``motte --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from motte.outside.user_files import check_user_file, read_user_text
from motte.shared.errors import MotteError
from motte.shared.printable import printable

if TYPE_CHECKING:
    from cryptography import x509

    from motte.shared.steward_certs import Attestation

DEFAULT_PORT = 3000
EXIT_REFUSED = 1
MAX_LOG_SIZE = 1 << 40  # the audit log is SQLite's to read; this only refuses a device posing as one
MAX_PEM_FILE = 1 << 20  # a TLS certificate chain, a key or a CA bundle


@click.group()
def steward() -> None:
    """Run the Steward, the attestation certificate authority for keeps."""


def _default_log() -> Path:
    if base := os.environ.get("MOTTE_STATE_DIR"):
        return Path(base) / "steward" / "steward.db"
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "motte" / "steward" / "steward.db"


def _private_directory(directory: Path) -> None:
    """A directory motte chose (the default log's, the development Steward's) is its own: 0700,
    even if an older motte made it readable. (A directory named with --log is the user's to set;
    the log in it is 0600 either way.)"""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory.chmod(0o700)
    except OSError as exc:
        raise MotteError(f"cannot create {directory}: {exc.strerror or exc}") from exc


@steward.command("serve")
@click.option("--ca-key", type=click.Path(dir_okay=False, path_type=Path), help="The CA's private key (PEM or DER).")
@click.option("--ca-cert", type=click.Path(dir_okay=False, path_type=Path), help="The CA's certificate (PEM or DER).")
@click.option("--policy", type=click.Path(dir_okay=False, path_type=Path), help="The Steward policy (TOML).")
@click.option("--addr", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535), help="0: any free port."
)
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), help="Serve HTTPS with this certificate.")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), help="... and this key.")
@click.option(
    "--log",
    "log_location",
    metavar="PATH|URL",
    envvar="MOTTE_STEWARD_LOG",
    help="The audit log: a SQLite file (a path or sqlite:///PATH), or postgresql://... shared by replicas "
    "(keep a password out of the command line: $MOTTE_STEWARD_LOG). "
    "Default: $XDG_STATE_HOME/motte/steward/steward.db; --dev: its state dir.",
)
@click.option(
    "--workers",
    type=click.IntRange(0, 64),
    help="Worker processes that check and sign; 0: on the event loop. Default: one per CPU (0 on one CPU).",
)
@click.option(
    "--max-body",
    default=64 * 1024,
    show_default=True,
    type=click.IntRange(1024, 1 << 24),
    help="Largest CSR accepted, in bytes (larger: 413).",
)
@click.option(
    "--request-timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.1, 600),
    help="Seconds a client has to send its body (slower: 408).",
)
@click.option(
    "--reuse-port",
    is_flag=True,
    help="Listen with SO_REUSEPORT: replicas on one machine, each started with it (as the same user) and the same "
    "--log, share --addr:--port and the kernel spreads connections among them. (In Kubernetes each pod has its "
    "own address: the Service is the one address.)",
)
@click.option("--dev", is_flag=True, help="Development Steward: own CA and a policy that issues to anything.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), help="--dev: where its CA and log live.")
def serve_command(
    ca_key: Path | None,
    ca_cert: Path | None,
    policy: Path | None,
    addr: str,
    port: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    log_location: str | None,
    workers: int | None,
    max_body: int,
    request_timeout: float,
    reuse_port: bool,
    dev: bool,
    state_dir: Path | None,
) -> None:
    """Serve the Steward protocol: POST / a CSR with evidence, get [CA, certificate] back."""
    import asyncio

    from motte.outside.database import DatabaseUrl, parse_database_url
    from motte.steward import app as steward_app
    from motte.steward.issuer import CertificateAuthority
    from motte.steward.log import AuditLog
    from motte.steward.policy import DEV_POLICY, load_steward_policy, read_steward_policy

    now = datetime.now(UTC)
    if (tls_cert is None) != (tls_key is None):
        raise MotteError("give both --tls-cert and --tls-key, or neither")
    location = None if log_location is None else parse_database_url(log_location)
    if dev:
        from motte.steward.devca import BANNER, dev_state_dir, ensure_dev_ca

        if ca_key or ca_cert or policy:
            raise MotteError("--dev makes its own CA and policy", hint="drop --ca-key/--ca-cert/--policy, or --dev")
        if not steward_app.is_loopback(addr):
            raise MotteError("a development Steward serves on loopback only", hint="--addr 127.0.0.1")
        directory = state_dir or dev_state_dir()
        _private_directory(directory)  # it holds the CA key and the log
        ca, _, cert_path, created = ensure_dev_ca(directory, now=now)
        rules = load_steward_policy(DEV_POLICY, source="built-in development policy")
        location = location or DatabaseUrl("sqlite", path=directory / "steward.db")
        click.echo(BANNER.format(dir=directory), err=True)
        click.echo(f"motte steward: {'created' if created else 'using'} development CA {cert_path}", err=True)
    else:
        if not (ca_key and ca_cert and policy):
            raise MotteError("--ca-key, --ca-cert and --policy are required", hint="or --dev for a development Steward")
        ca = CertificateAuthority.load(ca_key, ca_cert)
        rules = read_steward_policy(policy)
        if location is None:
            location = DatabaseUrl("sqlite", path=_default_log())
            _private_directory(_default_log().parent)
    ssl_context = None
    if tls_cert and tls_key:  # OpenSSL reads them by path: check first they are small regular files
        check_user_file(tls_cert, what="TLS certificate file", limit=MAX_PEM_FILE)
        check_user_file(tls_key, what="TLS key file", limit=MAX_PEM_FILE)
        ssl_context = steward_app.tls_context(tls_cert, tls_key)
    if rules.allow_unattested and not dev:
        click.echo(
            "motte steward: warning: the policy allows UNATTESTED keeps; their certificates prove nothing", err=True
        )
    if location.path is not None and location.path.exists():
        check_user_file(location.path, what="audit log", limit=MAX_LOG_SIZE)
    log = AuditLog(location)
    try:
        service = steward_app.StewardService(
            steward_app.StewardConfig.build(ca, rules),
            log,
            workers=_default_workers() if workers is None else workers,
            max_body=max_body,
            request_timeout=request_timeout,
            dev=dev,
        )

        def ready(url: str) -> None:
            click.echo(f"motte steward: listening on {url} (log {location}, CA {ca.cert.subject.rfc4514_string()})")
            sys.stdout.flush()

        asyncio.run(
            steward_app.serve(
                service, host=addr, port=port, ssl_context=ssl_context, on_ready=ready, reuse_port=reuse_port
            )
        )
    finally:
        log.close()
    click.echo("motte steward: stopped", err=True)


def _default_workers() -> int:
    """One worker per CPU: checking SNP evidence is ~1.3 ms of CPU, and a second core more than
    doubles throughput (bench/bench_steward.py). On one CPU a pool only adds overhead."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cpus < 2 else min(cpus, 8)


@steward.command("new-ca")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for steward-ca.key (mode 0600) and steward-ca.pem.",
)
@click.option("--name", default="motte Steward CA", show_default=True, help="The CA's common name.")
@click.option("--days", default=3650, show_default=True, type=click.IntRange(1, 36500), help="Validity.")
def new_ca_command(out_dir: Path, name: str, days: int) -> None:
    """Make a CA key and self-signed certificate for a Steward."""
    from motte.steward.issuer import new_ca, write_ca

    key, cert = new_ca(name, now=datetime.now(UTC), days=days)
    key_path, cert_path = write_ca(out_dir, key, cert)
    click.echo(f"wrote {key_path} (keep it secret) and {cert_path} (give it to relying parties)")


@steward.command("log")
@click.option("--log", "log_location", metavar="PATH|URL", envvar="MOTTE_STEWARD_LOG",
              help="The audit log: a SQLite file (a path or sqlite:///PATH) or postgresql://...")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1_000_000), help="Most recent N.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def log_command(log_location: str | None, limit: int, as_json: bool) -> None:
    """Show the most recent issuances and refusals."""
    from motte.outside.database import DatabaseUrl, parse_database_url
    from motte.steward.log import read_events

    location = DatabaseUrl("sqlite", path=_default_log()) if log_location is None else parse_database_url(log_location)
    if location.path is not None:
        if not location.path.exists():
            raise MotteError(f"no audit log at {location.path}", hint="pass --log")
        check_user_file(location.path, what="audit log", limit=MAX_LOG_SIZE)
    for event in read_events(location, limit=limit):
        event.pop("certificate", None)
        if as_json:
            click.echo(json.dumps(event, sort_keys=True))  # (ASCII only: every control character escaped)
        else:
            what = (
                f"serial {event['serial']}"
                if event["verdict"] == "issued"
                else f"{event['reason']}: {event['message']}"
            )
            # The reason and message may quote what a client sent (a Content-Type, a CSR's fields).
            line = f"{event['at']}  {event['status']} {event['verdict']:<7} {event['technology'] or '-':<5} {what}"
            click.echo(printable(line))


# --- motte attest fetch-cert ---------------------------------------------------------------------
@click.command("fetch-cert")
@click.argument("address", metavar="HOST:PORT")
@click.option(
    "--ca",
    "ca_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The Steward's CA certificate: the keep's certificate must chain to it.",
)
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, 300), help="Seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def fetch_cert(address: str, ca_path: Path | None, timeout: float, as_json: bool) -> None:
    """Connect to a keep over TLS and show what its certificate says was attested.

    With --ca the certificate must chain to that Steward CA (exit 1 if it does not). Without it
    nothing is verified: a keep's self-signed certificate proves nothing about the keep.
    """
    from cryptography import x509

    from motte.shared.steward_certs import read_attestation
    from motte.shared.steward_protocol import StewardProtocolError

    der, version = _peer_certificate(address, ca_path, timeout, as_json)
    cert = x509.load_der_x509_certificate(der)
    try:
        att = read_attestation(cert)
    except StewardProtocolError as exc:
        _refused(f"the certificate's attestation extensions are malformed: {exc}", as_json)
    result = _describe(address, ca_path, version, der, cert, att)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for line in result["warnings"]:
        click.secho(f"WARNING: {line}", fg="red", bold=True, err=True)
    if ca_path:
        click.secho(f"verified: the certificate chains to the Steward CA in {ca_path} ({version})", fg="green")
    fields = ("subject", "issuer", "serial", "not_before", "not_after", "sha256", "technology", "measurement")
    rows = [
        (key.replace("_", " "), str(result[key]))
        for key in (*fields, "evidence_sha256", "workload_sha256", "launch_sha256", "package")
        if result[key] is not None
    ]
    rows += [("trust anchor", f"{anchor['use']}: sha256 {anchor['sha256']}") for anchor in result["trust_anchors"]]
    for key, value in att.claims.items():
        if key != "technology" and value is not None:
            shown = json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else str(value)
            rows.append((f"claim {key}", shown))
    rows = [(printable(name), printable(value)) for name, value in rows]  # the certificate came from outside
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(printable(f"{name:>{width}}: {value}"))  # the keep's certificate says what it likes


def _peer_certificate(address: str, ca_path: Path | None, timeout: float, as_json: bool) -> tuple[bytes, str | None]:
    """The DER certificate the TLS server at ``address`` presents (chaining to ``ca_path`` if
    given, or refused), and the TLS version spoken."""
    import socket
    import ssl

    host, port = _host_port(address)
    try:
        cadata = read_user_text(ca_path, what="cannot load the CA certificate", limit=MAX_PEM_FILE) if ca_path else None
        context = ssl.create_default_context(cadata=cadata)
    except (OSError, ssl.SSLError) as exc:
        raise MotteError(f"cannot load the CA certificate {ca_path}: {exc}", hint="a PEM file") from exc
    context.check_hostname = False  # a keep is identified by what it attests, not by a DNS name
    if ca_path is None:
        context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as sock,
            context.wrap_socket(sock, server_hostname=None if _is_ip(host) else host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            version = tls.version()
    except ssl.SSLCertVerificationError as exc:
        _refused(f"the keep's certificate does not chain to the Steward CA {ca_path}: {exc.verify_message}", as_json)
    except (OSError, ssl.SSLError) as exc:
        raise MotteError(
            f"cannot fetch a certificate from {address}: {exc}", hint="is the keep listening with TLS?"
        ) from exc
    if der is None:
        raise MotteError(f"{address} sent no certificate")
    return der, version


def _describe(
    address: str, ca_path: Path | None, version: str | None, der: bytes, cert: x509.Certificate, att: Attestation
) -> dict[str, Any]:
    """What fetch-cert reports (its JSON): the certificate, its attestation claims, and warnings."""
    import hashlib

    self_signed = cert.issuer == cert.subject
    warnings = []
    if ca_path is None:
        warnings.append(
            "UNVERIFIED: no --ca given, so nothing below was checked. "
            + ("This is a self-signed keep certificate: it proves nothing about the keep. " if self_signed else "")
            + "Anyone can make a certificate that says this; pass --ca <steward-ca.pem>."
        )
    if not att.attested:
        warnings.append(
            "NOT ATTESTED: the Steward issued this certificate without evidence (its policy allows unattested keeps)."
            + (" Its workload and launch digests are the keep's word only." if att.keep_claims else "")
            if att.technology
            else "NOT ATTESTED: the certificate carries no attestation claims."
        )
    keep = att.keep_claims
    return {
        "address": address,
        "tls": version,
        "verified_against": str(ca_path) if ca_path else None,
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": f"{cert.serial_number:x}",
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "sha256": hashlib.sha256(der).hexdigest(),
        "technology": att.technology or None,
        "measurement": att.measurement.hex() if att.measurement else None,
        "evidence_sha256": att.evidence_sha256.hex() if att.evidence_sha256 else None,
        "workload_sha256": keep.workload_sha256.hex() if keep else None,
        "launch_sha256": keep.launch_sha256.hex() if keep else None,
        "trust_anchors": [{"use": use, "sha256": digest.hex()} for use, digest in keep.trust_anchors] if keep else [],
        "package": keep.package if keep else None,
        "claims": att.claims,
        "warnings": warnings,
    }


def _refused(message: str, as_json: bool) -> NoReturn:
    if as_json:
        click.echo(json.dumps({"verdict": "refused", "reason": message}))
    else:
        click.secho(printable(f"refused: {message}"), fg="red", bold=True)  # it may quote the certificate
    sys.exit(EXIT_REFUSED)


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MotteError(f"{address!r} is not HOST:PORT", hint="e.g. 127.0.0.1:8443 or [::1]:8443")
    return host, int(port)


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
