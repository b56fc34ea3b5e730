"""Attestation verification, tenant side (the Steward reuses it).

One entry point per technology, one result type (:class:`Claims`), one error type
(:class:`VerificationError` with a :class:`Reason`). Everything is sans-I/O: functions take bytes
and the time to verify at, and never read files or clocks.

    claims = verify(evidence, now=now, certs=[vcek_der])    # kind="auto"
    verdict = evaluate(claims, load_policy(policy_text))
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from motte.tenant.attest.claims import Claims, Reason, VerificationError
from motte.tenant.attest.policy import Policy, PolicyError, Verdict, Violation, evaluate, load_policy

if TYPE_CHECKING:
    from motte.tenant.attest.amd_roots import AmdTrust
    from motte.tenant.attest.dcap import verify_dcap
    from motte.tenant.attest.detect import KINDS
    from motte.tenant.attest.nitro import verify_nitro
    from motte.tenant.attest.snp_verify import verify_snp

#: the verifiers, imported on first use: whoever needs one technology's (or none, for an
#: unattested keep) does not pay for the others' imports
_LAZY = {"AmdTrust": "amd_roots", "verify_dcap": "dcap", "KINDS": "detect", "verify_nitro": "nitro",
         "verify_snp": "snp_verify"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "KINDS",
    "AmdTrust",
    "Claims",
    "Policy",
    "PolicyError",
    "Reason",
    "Verdict",
    "VerificationError",
    "Violation",
    "evaluate",
    "load_policy",
    "verify",
    "verify_dcap",
    "verify_nitro",
    "verify_snp",
]


def verify(
    evidence: bytes,
    kind: str = "auto",
    *,
    now: datetime,
    certs: Sequence[bytes] = (),
    crls: Sequence[bytes] = (),
    collateral: str | bytes | Any | None = None,
) -> Claims:
    """Verify evidence of any supported kind; hex or base64 text is decoded first."""
    from motte.tenant.attest.dcap import verify_dcap
    from motte.tenant.attest.detect import KINDS, decode_text, detect_kind
    from motte.tenant.attest.nitro import verify_nitro
    from motte.tenant.attest.snp_verify import verify_snp

    data = decode_text(evidence)
    if kind == "auto":
        kind = detect_kind(data)
    if kind == "snp":
        return verify_snp(data, now=now, certs=certs, crls=crls)
    if kind in ("tdx", "sgx"):
        if collateral is None:
            raise VerificationError(Reason.COLLATERAL_INVALID, f"{kind.upper()} quotes need DCAP collateral")
        claims = verify_dcap(data, collateral, now=now)
        if claims.technology != kind:
            raise VerificationError(
                Reason.UNKNOWN_KIND,
                f"evidence is a {claims.technology.upper()} quote, not {kind.upper()}",
                claims=claims,
            )
        return claims
    if kind == "nitro":
        return verify_nitro(data, now=now)
    raise VerificationError(Reason.UNKNOWN_KIND, f"unknown evidence kind {kind!r} (one of {', '.join(KINDS)})")
