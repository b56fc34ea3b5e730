"""The Steward's policy file: what it issues, for how long, and the attestation policy it applies.

TOML; every key is checked, an unknown one is an error that names it::

    allow_unattested = false     # issue to CSRs carrying the KVM OID (nil/kvm keeps, no evidence)?
    lifetime_days = 28           # validity of issued certificates (0 < days <= 397)
    dns_names = []               # subjectAltName DNS names added to every issued certificate
    workloads = ["<64 hex>"]     # SHA-256 of the workloads (wasm) it certifies; unset: any
    launches = ["<64 hex>"]      # SHA-256 of the launches (LaunchTerms.canonical_bytes()); unset: any

    # The attestation policy (the keys of `motte attest verify --policy`), either embedded ...
    [attestation]
    debug = false
    [attestation.snp]
    measurements = ["<96 hex>"]

    # ... or referenced, relative to this file (not both):
    attestation_policy = "attest-policy.toml"

The embedded or referenced policy is the tenant verifier's, strict by default: it refuses debug
keeps and any measurement it does not pin. The Steward additionally requires that the evidence's
report data binds the CSR's key and its binding extensions (the workload and launch digests the
keep computed; see ``docs/binding.md``).

``workloads`` and ``launches`` pin those digests (hex, either case): when a list is given, a CSR
must carry that digest and it must be listed, or the Steward refuses it (``workload_not_allowed``,
``launch_not_allowed``). An unattested keep's digests are its word only: pinning them proves nothing
unless ``allow_unattested`` is false.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from motte.outside.user_files import read_user_text
from motte.shared.errors import MotteError
from motte.tenant.attest.policy import Policy, PolicyError, load_policy, policy_from_table

DEFAULT_LIFETIME_DAYS = 28
MAX_LIFETIME_DAYS = 397  # the CA/Browser Forum ceiling for TLS certificates
MAX_POLICY_SIZE = 1 << 20
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
KEYS = ("allow_unattested", "lifetime_days", "dns_names", "workloads", "launches", "attestation", "attestation_policy")

# `motte steward serve --dev`: issue to anything that asks, and say what it was.
DEV_POLICY = """\
# Development Steward: issues certificates to unattested (nil/kvm) keeps and to attested keeps of
# any measurement. Its certificates prove nothing about the keep. Never use it in production.
allow_unattested = true
lifetime_days = 1

[attestation]
allow_any_measurement = true
"""


class StewardPolicyError(MotteError):
    """The Steward policy file is wrong; the message names the key."""


@dataclass(frozen=True)
class StewardPolicy:
    attestation: Policy = field(default_factory=Policy)
    allow_unattested: bool = False
    lifetime: timedelta = timedelta(days=DEFAULT_LIFETIME_DAYS)
    dns_names: tuple[str, ...] = ()
    workloads: frozenset[str] | None = None  # lower-case hex SHA-256; None: any workload
    launches: frozenset[str] | None = None  # lower-case hex SHA-256; None: any launch


def load_steward_policy(text: str, *, base_dir: Path | None = None, source: str = "policy") -> StewardPolicy:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StewardPolicyError(f"{source}: not valid TOML: {exc}") from exc
    except RecursionError:  # tomllib recurses once per level of nested arrays and tables
        raise StewardPolicyError(f"{source}: not valid TOML: arrays or tables nested too deeply") from None
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise StewardPolicyError(f"{source}: unknown key {unknown[0]!r}", hint=f"known keys: {', '.join(KEYS)}")
    allow = data.get("allow_unattested", False)
    if not isinstance(allow, bool):
        raise StewardPolicyError(f"{source}: allow_unattested: expected true or false")
    days = data.get("lifetime_days", DEFAULT_LIFETIME_DAYS)
    if isinstance(days, bool) or not isinstance(days, int | float) or not 0 < days <= MAX_LIFETIME_DAYS:
        raise StewardPolicyError(f"{source}: lifetime_days: expected a number of days in (0, {MAX_LIFETIME_DAYS}]")
    names = data.get("dns_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and _dns_name(n) for n in names):
        raise StewardPolicyError(f"{source}: dns_names: expected a list of DNS names")
    return StewardPolicy(
        attestation=_attestation(data, base_dir, source),
        allow_unattested=allow,
        lifetime=timedelta(days=days),
        dns_names=tuple(names),
        workloads=_digests(data, "workloads", source),
        launches=_digests(data, "launches", source),
    )


def read_steward_policy(path: Path) -> StewardPolicy:
    return load_steward_policy(_read(path, "policy file"), base_dir=path.parent, source=str(path))


def _attestation(data: dict[str, Any], base_dir: Path | None, source: str) -> Policy:
    embedded, referenced = data.get("attestation"), data.get("attestation_policy")
    try:
        if embedded is not None and referenced is not None:
            raise StewardPolicyError(f"{source}: give [attestation] or attestation_policy, not both")
        if referenced is not None:
            if not isinstance(referenced, str) or base_dir is None:
                raise StewardPolicyError(f"{source}: attestation_policy: expected a file path")
            path = base_dir / referenced
            try:
                return load_policy(_read(path, "attestation policy file"))
            except PolicyError as exc:
                raise StewardPolicyError(f"{path}: {exc}") from exc
        if embedded is not None:
            if not isinstance(embedded, dict):
                raise StewardPolicyError(f"{source}: attestation: expected a table")
            return policy_from_table(embedded, "attestation")
    except PolicyError as exc:
        raise StewardPolicyError(f"{source}: {exc}") from exc
    return Policy()


def _read(path: Path, what: str) -> str:
    return read_user_text(path, what=what, limit=MAX_POLICY_SIZE, error=StewardPolicyError)


def _digests(data: dict[str, Any], key: str, source: str) -> frozenset[str] | None:
    values = data.get(key)
    if values is None:
        return None
    if not isinstance(values, list) or not all(isinstance(v, str) and _SHA256_HEX.fullmatch(v) for v in values):
        raise StewardPolicyError(f"{source}: {key}: expected a list of SHA-256 digests (64 hex digits each)")
    return frozenset(v.lower() for v in values)


def _dns_name(name: str) -> bool:
    labels = name.rstrip(".").split(".")
    return 0 < len(name) <= 253 and all(
        0 < len(label) <= 63 and label.replace("-", "").replace("*", "").isalnum() and label.isascii()
        for label in labels
    )
