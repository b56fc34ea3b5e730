"""The tenant's deploy policy (``motte deploy --policy tenant.toml``): which keeps it trusts.

TOML; every key is checked::

    allow_unattested = false   # accept nil and kvm keeps, which offer no evidence? Their host can
                               # read the workload, its secrets and its output: development only.

    publishers = ["<key thumbprint>"]  # deploying from a registry: the publishers whose signed
    allow_unsigned = false             # tags it accepts, and whether an unsigned tag will do

    [attestation]              # the verifier's policy: the keys of `motte attest verify --policy`
    [attestation.snp]
    measurements = ["<96 hex>"]

Strict by default: no unattested keeps, no debug keeps, no measurement that is not pinned.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import NamedTuple

from motte.outside.user_files import read_user_text
from motte.shared.errors import MotteError
from motte.tenant.attest.policy import Policy, PolicyError, policy_from_table
from motte.tenant.registry.policy import KEYS as REGISTRY_KEYS
from motte.tenant.registry.policy import RegistryPolicy

KEYS = ("allow_unattested", "attestation", *REGISTRY_KEYS)
MAX_POLICY = 1 << 20


class TenantPolicyError(MotteError):
    """The tenant policy file is wrong; the message names the key."""


class TenantPolicy(NamedTuple):
    attestation: Policy
    allow_unattested: bool = False
    registry: RegistryPolicy = RegistryPolicy()


def load_tenant_policy(text: str, source: str = "policy") -> TenantPolicy:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TenantPolicyError(f"{source}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise TenantPolicyError(f"{source}: unknown key {unknown[0]!r}", hint=f"known keys: {', '.join(KEYS)}")
    allow = data.get("allow_unattested", False)
    if not isinstance(allow, bool):
        raise TenantPolicyError(f"{source}: allow_unattested: expected true or false")
    table = data.get("attestation", {})
    if not isinstance(table, dict):
        raise TenantPolicyError(f"{source}: attestation: expected a table")
    try:
        attestation = policy_from_table(table, "attestation")
    except PolicyError as exc:
        raise TenantPolicyError(f"{source}: {exc}") from None
    return TenantPolicy(attestation, allow, RegistryPolicy.from_table(data, source))


def read_tenant_policy(path: Path) -> TenantPolicy:
    text = read_user_text(path, what="policy file", limit=MAX_POLICY, error=TenantPolicyError)
    return load_tenant_policy(text, str(path))
