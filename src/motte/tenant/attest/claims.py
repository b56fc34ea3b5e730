"""The one result type every verifier returns, and the one error type every verifier raises.

A verifier fills a :class:`Claims` as it goes; when a check fails it raises
:class:`VerificationError` carrying the claims gathered so far, so a caller can show what the
evidence said even when it is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Reason(StrEnum):
    """Why evidence was refused. Stable strings: the CLI prints them and the Steward logs them."""

    MALFORMED = "malformed"
    UNSUPPORTED = "unsupported"
    UNKNOWN_KIND = "unknown_kind"
    MISSING_CERTIFICATE = "missing_certificate"
    UNTRUSTED_ROOT = "untrusted_root"
    CERTIFICATE_SIGNATURE = "certificate_signature"
    CERTIFICATE_NOT_YET_VALID = "certificate_not_yet_valid"
    CERTIFICATE_EXPIRED = "certificate_expired"
    CERTIFICATE_REVOKED = "certificate_revoked"
    CRL_INVALID = "crl_invalid"
    EVIDENCE_SIGNATURE = "evidence_signature"
    TCB_MISMATCH = "tcb_mismatch"
    CHIP_ID_MISMATCH = "chip_id_mismatch"
    PRODUCT_MISMATCH = "product_mismatch"
    RUNTIME_DATA_MISMATCH = "runtime_data_mismatch"
    COLLATERAL_INVALID = "collateral_invalid"
    COLLATERAL_EXPIRED = "collateral_expired"
    TCB_NO_MATCH = "tcb_no_match"
    TCB_STATUS = "tcb_status"
    DOCUMENT_TIME = "document_time"
    DCAP_FAILED = "dcap_failed"
    POLICY_DEBUG = "policy_debug"
    POLICY_MEASUREMENT = "policy_measurement"
    POLICY_SIGNER = "policy_signer"
    POLICY_TCB = "policy_tcb"
    POLICY_REPORT_DATA = "policy_report_data"
    POLICY_PLATFORM = "policy_platform"


@dataclass
class Claims:
    """What verified evidence says about a keep.

    ``verified`` is set only once every cryptographic check has passed; until then the other
    fields are what the evidence *claims*, not what has been proved.
    """

    technology: str  # "snp" | "tdx" | "sgx" | "nitro"
    verified: bool = False
    version: int | None = None  # report / quote / document format version
    product: str | None = None  # e.g. "Milan", "Genoa", "Turin"
    signing_key: str | None = None  # "VCEK", "VLEK", "PCK", "AWS Nitro"
    measurements: dict[str, bytes] = field(default_factory=dict)
    tcb: dict[str, int] = field(default_factory=dict)
    tcb_status: str | None = None
    advisory_ids: list[str] = field(default_factory=list)
    debug: bool | None = None
    policy_bits: int | None = None
    report_data: bytes | None = None
    platform_id: dict[str, bytes | str] = field(default_factory=dict)
    signer: dict[str, bytes] = field(default_factory=dict)
    details: dict[str, int | str | bytes | bool | None] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)

    def passed(self, check: str) -> None:
        self.checks.append(check)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view: bytes become lowercase hex."""
        return {
            "technology": self.technology,
            "verified": self.verified,
            "version": self.version,
            "product": self.product,
            "signing_key": self.signing_key,
            "measurements": _hexmap(self.measurements),
            "tcb": dict(self.tcb),
            "tcb_status": self.tcb_status,
            "advisory_ids": list(self.advisory_ids),
            "debug": self.debug,
            "policy_bits": None if self.policy_bits is None else f"{self.policy_bits:#x}",
            "report_data": None if self.report_data is None else self.report_data.hex(),
            "platform_id": _hexmap(self.platform_id),
            "signer": _hexmap(self.signer),
            "details": _hexmap(self.details),
            "checks": list(self.checks),
        }


def _hexmap(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v.hex() if isinstance(v, bytes) else v for k, v in values.items()}


class VerificationError(Exception):
    """Evidence was refused. ``reason`` says why in a stable code; ``claims`` is what was gathered."""

    def __init__(self, reason: Reason, message: str, *, claims: Claims | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.claims = claims

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.message}"
