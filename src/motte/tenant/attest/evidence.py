"""Verify the evidence a keep carries in the Steward protocol's DER shapes (its CSR's attestation
extension, or a deploy session's evidence message): one entry point for the Steward and the tenant."""

from __future__ import annotations

from datetime import datetime

from motte.shared.steward_protocol import decode_dcap_evidence, decode_snp_evidence
from motte.tenant.attest.amd_roots import AmdTrust
from motte.tenant.attest.claims import Claims, Reason, VerificationError
from motte.tenant.attest.dcap import verify_dcap
from motte.tenant.attest.snp_verify import verify_snp


def verify_keep_evidence(technology: str, value: bytes, *, now: datetime, amd_trust: AmdTrust | None = None) -> Claims:
    """Verify DER ``SnpEvidence`` or ``DcapEvidence``. ``amd_trust`` replaces AMD's roots (tests only).

    Raises :class:`VerificationError`, or :class:`~motte.shared.steward_protocol.StewardProtocolError`
    for bytes that are not the DER shape."""
    if technology == "snp":
        snp = decode_snp_evidence(value)
        return verify_snp(snp.report, now=now, certs=[snp.vcek], crls=snp.crls, trust=amd_trust)
    if technology in ("tdx", "sgx"):
        dcap = decode_dcap_evidence(value)
        if dcap.collateral is None:
            raise VerificationError(Reason.COLLATERAL_INVALID,
                                    f"{technology.upper()} evidence without DCAP collateral: none is fetched here")
        claims = verify_dcap(dcap.quote, dcap.collateral, now=now)
        if claims.technology != technology:
            raise VerificationError(Reason.UNKNOWN_KIND,
                                    f"the evidence is a {claims.technology.upper()} quote, not {technology.upper()}")
        return claims
    raise VerificationError(Reason.UNKNOWN_KIND, f"no verifier for {technology!r} evidence")
