"""Verify AMD SEV-SNP evidence: report signature, VEK chain, TCB, chip identity, product line."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from motte.tenant.attest import hcl, snp
from motte.tenant.attest.amd_certs import (
    VekChain,
    VekExtensions,
    check_crls,
    parse_vek_extensions,
    vek_kind,
    verify_vek_chain,
)
from motte.tenant.attest.amd_roots import AmdTrust, builtin_amd_trust
from motte.tenant.attest.claims import Claims, Reason, VerificationError
from motte.tenant.attest.x509util import load_certificates, load_crls, require_aware

P384_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973


def verify_snp(
    evidence: bytes,
    *,
    now: datetime,
    certs: Sequence[bytes] = (),
    crls: Sequence[bytes] = (),
    trust: AmdTrust | None = None,
) -> Claims:
    """Verify an SNP report (raw, or wrapped in an Azure HCL report) and return its claims.

    ``certs``: the VCEK or VLEK (DER or PEM), optionally with the ASK/ASVK/ARK; the built-in AMD
    roots are always the anchors. ``crls``: AMD CRLs (DER or PEM) to check when supplied.
    ``trust`` replaces the built-in roots; only tests pass it.
    """
    require_aware(now)
    trust = builtin_amd_trust() if trust is None else trust
    claims = Claims(technology="snp")
    wrapped = None
    raw = evidence
    if hcl.is_hcl(evidence):
        wrapped = hcl.parse_hcl(evidence)
        raw = wrapped.report
        try:
            claims.details["hcl_runtime_data"] = wrapped.runtime_data.decode("utf-8")  # JSON, normally
        except UnicodeDecodeError:
            claims.details["hcl_runtime_data"] = wrapped.runtime_data
        claims.passed("Azure HCL wrapper parsed")
    report = snp.parse_report(raw)
    _report_claims(report, claims)
    claims.passed(f"SNP report v{report.version} parsed")

    if not report.policy & snp.POLICY_RESERVED_ONE_BIT:
        raise VerificationError(Reason.MALFORMED, "SNP guest policy bit 17 must be 1", claims=claims)
    if report.mask_chip_key or report.signing_key_name not in ("VCEK", "VLEK"):
        raise VerificationError(
            Reason.UNSUPPORTED,
            f"SNP report is not signed by a VCEK or VLEK (signing key {report.signing_key_name}"
            f"{', chip key masked' if report.mask_chip_key else ''})",
            claims=claims,
        )

    certificates = load_certificates(certs)
    veks = [c for c in certificates if vek_kind(c) == report.signing_key_name]
    if not veks:
        raise VerificationError(
            Reason.MISSING_CERTIFICATE,
            f"the report is signed by a {report.signing_key_name}; supply that certificate",
            claims=claims,
        )
    if len(veks) > 1:
        raise VerificationError(
            Reason.MALFORMED, f"{len(veks)} {report.signing_key_name} certificates supplied; give one", claims=claims
        )
    chain = verify_vek_chain(veks[0], certificates, now, trust, claims)
    claims.product = chain.product
    check_crls(load_crls(crls), chain, now, trust, claims)

    _check_signature(report, chain, claims)
    _check_product(report, chain, claims)
    _check_vek_extensions(report, chain, claims)
    if wrapped is not None:
        if report.report_data != wrapped.expected_report_data():
            raise VerificationError(
                Reason.RUNTIME_DATA_MISMATCH,
                f"report_data is not {wrapped.hash_name}(HCL runtime data) || zeros",
                claims=claims,
            )
        claims.passed(f"report_data binds the HCL runtime data ({wrapped.hash_name})")
    claims.verified = True
    return claims


def verify_vek_certificate(
    vek: bytes,
    *,
    now: datetime,
    certs: Sequence[bytes] = (),
    crls: Sequence[bytes] = (),
    trust: AmdTrust | None = None,
) -> tuple[VekChain, VekExtensions]:
    """Verify a VCEK/VLEK (DER or PEM) and its chain without a report, e.g. when caching one."""
    require_aware(now)
    trust = builtin_amd_trust() if trust is None else trust
    claims = Claims(technology="snp")
    loaded = load_certificates([vek])
    if len(loaded) != 1:
        raise VerificationError(Reason.MALFORMED, "expected exactly one VCEK/VLEK certificate")
    cert = loaded[0]
    chain = verify_vek_chain(cert, load_certificates(certs), now, trust, claims)
    check_crls(load_crls(crls), chain, now, trust, claims)
    ext = parse_vek_extensions(cert)
    if ext.product_line is not None and ext.product_line != chain.product:
        raise VerificationError(
            Reason.PRODUCT_MISMATCH, f"productName {ext.product_name!r} but the chain is {chain.product}"
        )
    return chain, ext


def _report_claims(report: snp.SnpReport, claims: Claims) -> None:
    claims.version = report.version
    claims.signing_key = report.signing_key_name
    claims.measurements["measurement"] = report.measurement
    claims.debug = report.debug
    claims.policy_bits = report.policy
    claims.report_data = report.report_data
    claims.platform_id["chip_id"] = report.chip_id
    claims.signer["id_key_digest"] = report.id_key_digest
    if report.author_key_en:
        claims.signer["author_key_digest"] = report.author_key_digest
    product = snp.product_from_cpuid(*report.cpuid[:2]) if report.cpuid else None
    _tcb_claims(report, product, claims)
    d = claims.details
    d["vmpl"] = report.vmpl
    d["guest_svn"] = report.guest_svn
    d["platform_info"] = f"{report.platform_info:#x}"
    d["firmware"] = "{}.{}.{}".format(*report.current_fw)
    d["committed_firmware"] = "{}.{}.{}".format(*report.committed_fw)
    d["host_data"] = report.host_data
    d["family_id"] = report.family_id
    d["image_id"] = report.image_id
    d["report_id"] = report.report_id
    d["reported_tcb"] = report.reported_tcb
    d["current_tcb"] = report.current_tcb
    d["committed_tcb"] = report.committed_tcb
    d["launch_tcb"] = report.launch_tcb
    if report.cpuid:
        d["cpuid"] = "family {:#x} model {:#x} stepping {}".format(*report.cpuid)
    if report.launch_mit_vector is not None:
        d["launch_mit_vector"] = f"{report.launch_mit_vector:#x}"
        d["current_mit_vector"] = f"{report.current_mit_vector:#x}"
    if report.version > snp.NEWEST_KNOWN_VERSION:
        d["note"] = f"report version {report.version} is newer than this verifier knows: v5 fields only"


def _tcb_claims(report: snp.SnpReport, product: str | None, claims: Claims) -> None:
    claims.tcb = snp.tcb_components(report.reported_tcb, product)
    claims.tcb["guest_svn"] = report.guest_svn


def _check_signature(report: snp.SnpReport, chain: VekChain, claims: Claims) -> None:
    r, s = report.sig_r, report.sig_s
    if not (0 < r < P384_ORDER and 0 < s < P384_ORDER):
        raise VerificationError(Reason.EVIDENCE_SIGNATURE, "report signature r/s out of range", claims=claims)
    try:
        chain.public_key.verify(encode_dss_signature(r, s), report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as exc:
        raise VerificationError(
            Reason.EVIDENCE_SIGNATURE, f"report signature does not verify with the {chain.kind}", claims=claims
        ) from exc
    claims.passed(f"report signature (ECDSA P-384 SHA-384 over [0, 0x2A0)) verifies with the {chain.kind}")


def _check_product(report: snp.SnpReport, chain: VekChain, claims: Claims) -> None:
    if report.cpuid is None:
        claims.passed(f"product line {chain.product} from the certificate chain (no CPUID in report)")
        return
    from_cpuid = snp.product_from_cpuid(report.cpuid[0], report.cpuid[1])
    if from_cpuid is None:
        claims.passed(f"CPUID {report.cpuid} not in the product table: product from chain ({chain.product})")
    elif from_cpuid != chain.product:
        raise VerificationError(
            Reason.PRODUCT_MISMATCH,
            f"report CPUID says {from_cpuid} but the {chain.kind} chains to ARK-{chain.product}",
            claims=claims,
        )
    else:
        claims.passed(f"CPUID family/model is {from_cpuid}, as the chain")


def _check_vek_extensions(report: snp.SnpReport, chain: VekChain, claims: Claims) -> None:
    ext = parse_vek_extensions(chain.vek)
    if ext.product_line is not None and ext.product_line != chain.product:
        raise VerificationError(
            Reason.PRODUCT_MISMATCH,
            f"{chain.kind} productName {ext.product_name!r} but it chains to ARK-{chain.product}",
            claims=claims,
        )
    # Now that the product line is proved, decode TCB_VERSION with the right layout.
    _tcb_claims(report, chain.product, claims)
    expected = snp.tcb_components(report.reported_tcb, chain.product)
    got = ext.tcb()
    for name, value in expected.items():
        if name not in got:
            raise VerificationError(Reason.TCB_MISMATCH, f"{chain.kind} lacks the {name} SPL extension", claims=claims)
        if got[name] != value:
            raise VerificationError(
                Reason.TCB_MISMATCH,
                f"{chain.kind} {name} SPL is {got[name]} but the report's reported_tcb says {value}",
                claims=claims,
            )
    claims.passed(f"{chain.kind} TCB extensions equal reported_tcb ({_fmt(expected)})")
    if ext.csp_id is not None:
        claims.details["vlek_csp_id"] = ext.csp_id
    if chain.kind == "VLEK":
        claims.passed("VLEK is not chip-bound: no hwID check")
        return
    if ext.hwid is None:
        raise VerificationError(Reason.CHIP_ID_MISMATCH, "VCEK has no hwID extension", claims=claims)
    if not any(report.chip_id):
        # MASK_CHIP_ID hides the chip id; the VCEK signature already ties the report to one chip.
        claims.passed("chip_id masked in the report: hwID not compared")
        return
    n = len(ext.hwid)
    if report.chip_id[:n] != ext.hwid or any(report.chip_id[n:]):
        raise VerificationError(Reason.CHIP_ID_MISMATCH, "VCEK hwID does not equal the report's chip_id", claims=claims)
    claims.passed(f"VCEK hwID equals chip_id ({n} bytes)")


def _fmt(values: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())
