"""Judge one certificate request: the CSR itself, then its evidence against the policy. Pure.

``check_request`` returns what was attested or raises :class:`Refused` with the HTTP status, a
stable reason code (the verifier's :class:`~motte.tenant.attest.Reason` values, plus the CSR-level
codes below) and one line saying why. It reads no clock and no file: "now" and the trust anchors
are parameters.

The CSR requests its attestation extension first, then any of motte's binding extensions
(:mod:`motte.shared.binding`: the workload and launch digests the keep computed) in OID order, each
once, all non-critical. The evidence's report data must be :func:`~motte.shared.binding.csr_report_data`
of the CSR's key and those extensions, so they are as attested as the key. A KVM (unattested) CSR
proves nothing: its digests are the keep's word only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec

from motte.shared.binding import CLAIM_OIDS, KeepClaims, csr_report_data
from motte.shared.steward_certs import key_curve
from motte.shared.steward_protocol import (
    EXTENSION_REQUEST_OID,
    TECHNOLOGY_BY_OID,
    UNATTESTED,
    CsrExtension,
    StewardProtocolError,
    decode_dcap_evidence,
    decode_snp_evidence,
    read_csr_info,
    read_extensions,
)
from motte.steward.policy import StewardPolicy
from motte.tenant.attest import Claims, VerificationError, evaluate
from motte.tenant.attest.amd_roots import AmdTrust
from motte.tenant.attest.canonical import canonical_evidence
from motte.tenant.attest.evidence import verify_keep_evidence

# CSR-level refusal codes (evidence-level ones are the verifier's Reason values).
MALFORMED_CSR = "malformed_csr"
CSR_SIGNATURE = "csr_signature"
CSR_SUBJECT = "csr_subject"
CSR_ATTRIBUTES = "csr_attributes"
KEY_TYPE = "key_type"
NO_EVIDENCE = "no_evidence"
UNSUPPORTED_EVIDENCE = "unsupported_evidence"
MALFORMED_EVIDENCE = "malformed_evidence"
UNATTESTED_REFUSED = "unattested_refused"
WORKLOAD_NOT_ALLOWED = "workload_not_allowed"
LAUNCH_NOT_ALLOWED = "launch_not_allowed"

EMPTY_NAME = b"\x30\x00"
MEASUREMENT_NAME = {"snp": "measurement", "tdx": "mrtd", "sgx": "mrenclave"}
# What goes into the issued certificate; the chip id and the raw details stay in the log only
# (a chip id in a public certificate would tell everyone which machine the keep runs on).
CERTIFIED_CLAIMS = (
    "product",
    "version",
    "signing_key",
    "debug",
    "policy_bits",
    "measurements",
    "tcb",
    "tcb_status",
    "advisory_ids",
    "signer",
)


class Refused(Exception):
    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        *,
        technology: str | None = None,
        evidence_sha256: str | None = None,
        claims: dict[str, Any] | None = None,
        keep_claims: KeepClaims | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.technology = technology
        self.evidence_sha256 = evidence_sha256
        self.claims = claims
        self.keep_claims = keep_claims  # the digests the CSR carried, when it could be read that far

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


@dataclass(frozen=True)
class Attested:
    technology: str  # "snp" | "tdx" | "sgx" | "none"
    measurement: bytes | None
    claims: dict[str, Any] | None  # the verified claims (Claims.to_dict()); None when unattested
    evidence_sha256: str
    csr: x509.CertificateSigningRequest
    public_key: ec.EllipticCurvePublicKey
    spki: bytes
    keep_claims: KeepClaims | None = None  # the CSR's binding extensions: what the keep says it runs

    def certified_claims(self) -> dict[str, Any]:
        if self.claims is None:
            return {"attested": False}
        return {"technology": self.technology, **{k: self.claims[k] for k in CERTIFIED_CLAIMS if k in self.claims}}


class _Request(NamedTuple):
    csr: x509.CertificateSigningRequest
    spki: bytes
    evidence: CsrExtension
    bound: list[tuple[str, bytes]]  # the binding extensions (OID, extnValue), in CSR order
    keep_claims: KeepClaims | None


def check_request(
    csr_der: bytes, *, policy: StewardPolicy, now: datetime, amd_trust: AmdTrust | None = None
) -> Attested:
    """Check a DER CSR and its evidence. ``amd_trust`` replaces AMD's roots (tests only)."""
    request = _read_csr(csr_der)
    try:
        attested = _attest(request, policy, now, amd_trust)
        _check_pins(attested, policy)
    except Refused as refused:
        refused.keep_claims = request.keep_claims
        raise
    return attested


def _attest(request: _Request, policy: StewardPolicy, now: datetime, amd_trust: AmdTrust | None) -> Attested:
    csr, spki, extension = request.csr, request.spki, request.evidence
    technology = TECHNOLOGY_BY_OID.get(extension.oid)
    digest = evidence_digest(technology, extension.value)
    if technology is None:
        raise Refused(
            400, UNSUPPORTED_EVIDENCE, f"extension {extension.oid} is not an evidence type this Steward knows"
        )
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != key_curve(technology).name:
        raise Refused(
            400,
            KEY_TYPE,
            f"a {technology} keep's key must be EC {key_curve(technology).name}",
            technology=technology,
            evidence_sha256=digest,
        )
    if technology == "kvm":
        if extension.value:
            raise Refused(
                400,
                MALFORMED_EVIDENCE,
                "the KVM extension must be empty",
                technology=UNATTESTED,
                evidence_sha256=digest,
            )
        if not policy.allow_unattested:
            raise Refused(
                401,
                UNATTESTED_REFUSED,
                "the CSR carries no evidence (KVM OID) and this Steward's policy does not allow unattested keeps",
                technology=UNATTESTED,
                evidence_sha256=digest,
            )
        return Attested(UNATTESTED, None, None, digest, csr, public_key, spki, request.keep_claims)
    claims = _verify(technology, extension.value, digest, now, amd_trust)
    verdict = evaluate(claims, policy.attestation, report_data=csr_report_data(spki, technology, request.bound))
    if not verdict.accepted:
        first = verdict.violations[0]
        raise Refused(
            400,
            first.reason.value,
            "; ".join(v.message for v in verdict.violations),
            technology=technology,
            evidence_sha256=digest,
            claims=claims.to_dict(),
        )
    measurement = claims.measurements.get(MEASUREMENT_NAME[technology])
    return Attested(technology, measurement, claims.to_dict(), digest, csr, public_key, spki, request.keep_claims)


def _check_pins(attested: Attested, policy: StewardPolicy) -> None:
    """The policy's ``workloads`` and ``launches``: when set, the CSR must claim a listed digest."""
    keep = attested.keep_claims
    pins = (
        ("workload", policy.workloads, keep.workload_sha256 if keep else None, WORKLOAD_NOT_ALLOWED),
        ("launch", policy.launches, keep.launch_sha256 if keep else None, LAUNCH_NOT_ALLOWED),
    )
    for what, allowed, digest, reason in pins:
        if allowed is None:
            continue
        if digest is None:
            message = f"the CSR carries no {what} digest, and this Steward's policy pins {what}s"
        elif digest.hex() not in allowed:
            message = f"{what} digest {digest.hex()} is not in this Steward's policy's {what}s"
        else:
            continue
        raise Refused(
            400,
            reason,
            message,
            technology=attested.technology,
            evidence_sha256=attested.evidence_sha256,
            claims=attested.claims,
        )


def evidence_digest(technology: str | None, value: bytes) -> str:
    """SHA-256 of the canonical form of the report or quote in an evidence extension: the key of its
    audit-log entry and the certificate's evidenceDigest, one for every variant of that evidence
    (another s, other padding, another VCEK or CRL beside it). Evidence that cannot be read is
    keyed on its bytes."""
    try:
        if technology == "snp":
            return hashlib.sha256(canonical_evidence(decode_snp_evidence(value).report, "snp")).hexdigest()
        if technology in ("tdx", "sgx"):
            return hashlib.sha256(canonical_evidence(decode_dcap_evidence(value).quote, technology)).hexdigest()
    except (StewardProtocolError, VerificationError):
        pass
    return hashlib.sha256(value).hexdigest()


def _read_csr(csr_der: bytes) -> _Request:
    try:
        csr = x509.load_der_x509_csr(csr_der)
        info = read_csr_info(csr.tbs_certrequest_bytes)
    except (ValueError, StewardProtocolError) as exc:
        raise Refused(400, MALFORMED_CSR, f"not a DER PKCS#10 CSR: {exc}") from exc
    try:
        valid = csr.is_signature_valid
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # as bad as a wrong signature
        raise Refused(400, CSR_SIGNATURE, f"the CSR's signature cannot be checked: {exc}") from exc
    if not valid:
        raise Refused(400, CSR_SIGNATURE, "the CSR's signature does not verify with the key it carries")
    if info.subject != EMPTY_NAME:
        raise Refused(400, CSR_SUBJECT, "the CSR's subject must be empty: the Steward certifies a key, not a name")
    requests = [values for oid, values in info.attributes if oid == EXTENSION_REQUEST_OID]
    others = [oid for oid, _ in info.attributes if oid != EXTENSION_REQUEST_OID]
    if others:
        raise Refused(400, CSR_ATTRIBUTES, f"the CSR may carry only extensionRequest, not attribute {others[0]}")
    if not requests:
        raise Refused(401, NO_EVIDENCE, "the CSR carries no attestation extension")
    if len(requests) > 1 or len(requests[0]) != 1:
        raise Refused(400, CSR_ATTRIBUTES, "the CSR must carry exactly one extensionRequest with one value")
    try:
        extensions = read_extensions(requests[0][0])
    except StewardProtocolError as exc:
        raise Refused(400, MALFORMED_CSR, str(exc)) from exc
    if not extensions:
        raise Refused(401, NO_EVIDENCE, "the CSR's extensionRequest is empty: no attestation extension")
    evidence, bound = _split(extensions)
    values = [(ext.oid, ext.value) for ext in bound]
    try:
        keep_claims = KeepClaims.from_extensions(values)
    except StewardProtocolError as exc:
        raise Refused(400, MALFORMED_CSR, str(exc)) from exc
    return _Request(csr, info.spki, evidence, values, keep_claims)


def _split(extensions: list[CsrExtension]) -> tuple[CsrExtension, list[CsrExtension]]:
    """The attestation extension (first) and the binding extensions (the rest, non-critical)."""
    evidence, bound = extensions[0], extensions[1:]
    if evidence.oid in CLAIM_OIDS:
        if not any(ext.oid in TECHNOLOGY_BY_OID for ext in bound):
            raise Refused(401, NO_EVIDENCE, "the CSR carries binding extensions but no attestation extension")
        raise Refused(400, CSR_ATTRIBUTES, "the attestation extension must come first, before the binding extensions")
    if evidence.critical:
        raise Refused(400, MALFORMED_EVIDENCE, "the attestation extension must not be critical")
    for ext in bound:
        if ext.oid not in CLAIM_OIDS:
            message = f"the CSR may request one attestation extension and binding extensions, not also {ext.oid}"
            raise Refused(400, CSR_ATTRIBUTES, message)
        if ext.critical:
            raise Refused(400, CSR_ATTRIBUTES, f"the binding extension {ext.oid} must not be critical")
    return evidence, bound


def _verify(technology: str, value: bytes, digest: str, now: datetime, amd_trust: AmdTrust | None) -> Claims:
    try:
        return verify_keep_evidence(technology, value, now=now, amd_trust=amd_trust)
    except StewardProtocolError as exc:
        raise Refused(400, MALFORMED_EVIDENCE, str(exc), technology=technology, evidence_sha256=digest) from exc
    except VerificationError as exc:
        raise Refused(
            400,
            exc.reason.value,
            exc.message,
            technology=technology,
            evidence_sha256=digest,
            claims=exc.claims.to_dict() if exc.claims else None,
        ) from exc
