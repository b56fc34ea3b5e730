"""Verify Intel DCAP quotes: TDX (quote v4, v5) and SGX (quote v3) with their collateral.

The signatures, PCK chain, collateral signatures and TCB matching are done by ``dcap-qvl`` against
the built-in Intel SGX Root CA. Around it, this module parses the quote itself with every length
bounded, and refuses what an attacker could add or change without breaking a signature (a different
signature-data length, a non-canonical PEM chain, an embedded root that is not Intel's, non-zero
padding). Some bytes can still vary without any key: trailing zero padding (real quote buffers
carry some), the ``s`` of each ECDSA signature (``n - s`` verifies too) and a PCK certificate Intel
reissued for the same key. What identifies a quote is therefore its canonical form
(:mod:`motte.tenant.attest.canonical`), not its bytes.
"""

from __future__ import annotations

import functools
import json
import warnings
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import dcap_qvl
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from motte.tenant.attest.binreader import Reader
from motte.tenant.attest.claims import Claims, Reason, VerificationError
from motte.tenant.attest.roots import read_root
from motte.tenant.attest.x509util import CERT_ERRORS, parsed, require_aware

HEADER_SIZE = 48
TEE_SGX = 0x00000000
TEE_TDX = 0x00000081
ATT_KEY_ECDSA_P256 = 2
CERT_PCK_CHAIN = 5
CERT_QE_REPORT = 6
SGX_REPORT_SIZE = 384
BODY_SIZES = {1: SGX_REPORT_SIZE, 2: 584, 3: 648}  # v5 body types: SGX, TD report 1.0, TD report 1.5
MAX_SIG_DATA = 64 * 1024
MAX_PADDING = 4096  # some quote buffers carry trailing zeros (the phala TDX sample has 70)
MAX_COLLATERAL = 1024 * 1024
ALLOWED_STATUS_DEFAULT = "UpToDate"


@dataclass(frozen=True)
class Quote:
    version: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes
    body_type: int
    body: bytes
    pck_chain: tuple[x509.Certificate, ...]
    padding: int
    signed: bytes  # header and body: what the attestation key signs
    signature: bytes  # r || s, big-endian, of the attestation key over ``signed``
    attestation_key: bytes
    qe_report: bytes  # the QE's report, signed by the PCK key; it binds the attestation key
    qe_report_signature: bytes
    qe_auth_data: bytes

    @property
    def technology(self) -> str:
        return "tdx" if self.tee_type == TEE_TDX else "sgx"


@functools.lru_cache(maxsize=1)
def intel_root_der() -> bytes:
    return read_root("intel_sgx_root_ca.der")


def parse_quote(data: bytes, root_der: bytes) -> Quote:
    """Parse the quote's structure (no signature checks). Raises VerificationError."""
    r = Reader(data, "DCAP quote")
    version = r.u16("version")
    att_key_type = r.u16("attestation key type")
    tee_type = r.u32("TEE type")
    if version not in (3, 4, 5):
        raise VerificationError(Reason.UNSUPPORTED, f"DCAP quote version {version} is not 3, 4 or 5")
    if tee_type not in (TEE_SGX, TEE_TDX):
        raise VerificationError(Reason.UNSUPPORTED, f"DCAP quote TEE type {tee_type:#x} is not SGX or TDX")
    if version == 3 and tee_type != TEE_SGX:
        raise VerificationError(Reason.MALFORMED, "a version 3 quote must be an SGX quote")
    if att_key_type != ATT_KEY_ECDSA_P256:
        raise VerificationError(Reason.UNSUPPORTED, f"attestation key type {att_key_type} is not ECDSA P-256")
    qe_svn = r.u16("QE SVN")
    pce_svn = r.u16("PCE SVN")
    qe_vendor_id = r.take(16, "QE vendor id")
    user_data = r.take(20, "user data")
    if version == 5:
        body_type = r.u16("body type")
        body_size = r.u32("body size")
        if BODY_SIZES.get(body_type) != body_size:
            raise VerificationError(
                Reason.UNSUPPORTED, f"quote v5 body type {body_type} with size {body_size} is not supported"
            )
    else:
        body_type = 1 if tee_type == TEE_SGX else 2
    if (body_type == 1) != (tee_type == TEE_SGX):
        raise VerificationError(Reason.MALFORMED, "quote body type does not match its TEE type")
    body = r.take(BODY_SIZES[body_type], "report body")
    signed = data[: r.pos]
    sig_len = r.u32("signature data length")
    if sig_len > MAX_SIG_DATA:
        raise VerificationError(Reason.MALFORMED, f"signature data length {sig_len} is too large")
    sig = r.sub(sig_len, "signature data")
    if r.remaining > MAX_PADDING or any(r.take(r.remaining, "padding")):
        raise VerificationError(Reason.MALFORMED, "unexpected bytes after the quote's signature data")
    padding = len(data) - sig.end
    signature = sig.take(64, "quote signature")
    attestation_key = sig.take(64, "attestation key")
    if version == 3:
        qe = sig
    else:
        cert_type = sig.u16("certification data type")
        if cert_type != CERT_QE_REPORT:
            raise VerificationError(
                Reason.UNSUPPORTED, f"certification data type {cert_type} (expected {CERT_QE_REPORT})"
            )
        qe = sig.sub(sig.u32("QE report certification data size"), "QE report certification data")
        sig.expect_end("QE report certification data")
    qe_report = qe.take(SGX_REPORT_SIZE, "QE report")
    qe_report_signature = qe.take(64, "QE report signature")
    qe_auth_data = qe.take(qe.u16("QE authentication data size"), "QE authentication data")
    inner_type = qe.u16("PCK certification data type")
    if inner_type != CERT_PCK_CHAIN:
        raise VerificationError(
            Reason.UNSUPPORTED, f"PCK certification data type {inner_type} (only {CERT_PCK_CHAIN}, PEM chain)"
        )
    pem = qe.take(qe.u32("PCK chain size"), "PCK chain")
    qe.expect_end("PCK certificate chain")
    return Quote(
        version,
        tee_type,
        qe_svn,
        pce_svn,
        qe_vendor_id,
        user_data,
        body_type,
        body,
        _pck_chain(pem, root_der),
        padding,
        signed,
        signature,
        attestation_key,
        qe_report,
        qe_report_signature,
        qe_auth_data,
    )


def _pck_chain(pem: bytes, root_der: bytes) -> tuple[x509.Certificate, ...]:
    text = pem[:-1] if pem.endswith(b"\0") else pem  # the QE NUL-terminates the chain
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a damaged serial number warns before it fails
            certs = x509.load_pem_x509_certificates(text)
    except CERT_ERRORS as exc:
        raise VerificationError(Reason.MALFORMED, f"PCK certificate chain: {exc}") from exc
    certs = [parsed(c, "PCK certificate chain") for c in certs]
    if b"".join(c.public_bytes(Encoding.PEM) for c in certs) != text:
        # PEM parsers skip stray whitespace; insisting on the canonical form leaves no slack.
        raise VerificationError(Reason.MALFORMED, "PCK certificate chain is not canonical PEM")
    if len(certs) < 2 or certs[-1].public_bytes(Encoding.DER) != root_der:
        raise VerificationError(Reason.UNTRUSTED_ROOT, "PCK certificate chain does not end at the Intel SGX Root CA")
    return tuple(certs)


def load_collateral(collateral: str | bytes) -> Any:
    """Parse collateral JSON (dcap-qvl's QuoteCollateralV3 schema) without re-serialising it."""
    if isinstance(collateral, bytes):
        if len(collateral) > MAX_COLLATERAL:
            raise VerificationError(Reason.COLLATERAL_INVALID, "collateral is larger than 1 MiB")
        try:
            collateral = collateral.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise VerificationError(Reason.COLLATERAL_INVALID, "collateral is not UTF-8 JSON") from exc
    if len(collateral) > MAX_COLLATERAL:
        raise VerificationError(Reason.COLLATERAL_INVALID, "collateral is larger than 1 MiB")
    try:
        return dcap_qvl.QuoteCollateralV3.from_json(collateral)
    except (ValueError, TypeError) as exc:
        raise VerificationError(Reason.COLLATERAL_INVALID, f"collateral: {exc}") from exc


def verify_dcap(
    quote: bytes,
    collateral: str | bytes | Any,
    *,
    now: datetime,
    root_der: bytes | None = None,
) -> Claims:
    """Verify an SGX or TDX quote with its collateral at ``now``; return the claims.

    ``collateral`` is the JSON text (or an already loaded ``dcap_qvl.QuoteCollateralV3``, so a
    Steward can parse it once). ``root_der`` replaces the built-in Intel root; only tests pass it.
    The TCB status is returned in the claims, not judged here: the policy decides which statuses
    and advisories are acceptable.
    """
    require_aware(now)
    root = intel_root_der() if root_der is None else root_der
    parsed = parse_quote(quote, root)
    claims = Claims(technology=parsed.technology, version=parsed.version, signing_key="PCK")
    _body_claims(parsed, claims)
    claims.passed(f"{parsed.technology.upper()} quote v{parsed.version} parsed; PCK chain ends at the Intel root")
    if isinstance(collateral, (str, bytes)):
        collateral = load_collateral(collateral)
    now_secs = int(now.timestamp())
    try:
        result = dcap_qvl.verify_with_root_ca(quote, collateral, root, now_secs)
    except ValueError as exc:
        message = str(exc).replace("\n", " ").replace("    ", " ")
        raise VerificationError(_reason_for(message), f"dcap-qvl: {message}", claims=claims) from exc
    claims.passed(
        "quote signature, QE report signature and binding, PCK chain, CRLs, TCB info and QE identity "
        f"signatures verified at {now.isoformat()} (dcap-qvl)"
    )
    claims.tcb_status = str(result.status)
    claims.advisory_ids = [str(a) for a in result.advisory_ids]
    claims.platform_id["ppid"] = bytes(result.ppid)
    _cross_check(json.loads(result.to_json()), claims)
    claims.passed(f"TCB level matched: {claims.tcb_status}")
    claims.verified = True
    return claims


def _body_claims(q: Quote, claims: Claims) -> None:
    claims.tcb["qe_svn"] = q.qe_svn
    claims.tcb["pce_svn"] = q.pce_svn
    claims.details["qe_vendor_id"] = q.qe_vendor_id
    claims.details["user_data"] = q.user_data
    if q.padding:
        claims.details["padding_bytes"] = q.padding
    leaf = q.pck_chain[0]
    claims.details["pck_subject"] = leaf.subject.rfc4514_string()
    b = Reader(q.body, "report body")
    if q.tee_type == TEE_SGX:
        claims.details["cpu_svn"] = b.take(16, "CPUSVN")
        claims.details["misc_select"] = b.u32("MISCSELECT")
        b.take(28, "reserved")
        attributes = b.take(16, "ATTRIBUTES")
        claims.measurements["mrenclave"] = b.take(32, "MRENCLAVE")
        b.take(32, "reserved")
        claims.signer["mrsigner"] = b.take(32, "MRSIGNER")
        b.take(96, "reserved")
        claims.details["isv_prod_id"] = b.u16("ISVPRODID")
        claims.tcb["isv_svn"] = b.u16("ISVSVN")
        b.take(60, "reserved")
        claims.report_data = b.take(64, "REPORTDATA")
        flags = int.from_bytes(attributes[:8], "little")
        claims.policy_bits = flags
        claims.details["xfrm"] = attributes[8:]
        claims.debug = bool(flags & 0x2)  # ATTRIBUTES.DEBUG
        return
    claims.details["tee_tcb_svn"] = b.take(16, "TEE_TCB_SVN")
    claims.measurements["mrseam"] = b.take(48, "MRSEAM")
    claims.signer["mrsignerseam"] = b.take(48, "MRSIGNERSEAM")
    claims.details["seam_attributes"] = b.take(8, "SEAMATTRIBUTES")
    td_attributes = b.take(8, "TDATTRIBUTES")
    claims.details["xfam"] = b.take(8, "XFAM")
    claims.measurements["mrtd"] = b.take(48, "MRTD")
    claims.measurements["mrconfigid"] = b.take(48, "MRCONFIGID")
    claims.measurements["mrowner"] = b.take(48, "MROWNER")
    claims.measurements["mrownerconfig"] = b.take(48, "MROWNERCONFIG")
    for i in range(4):
        claims.measurements[f"rtmr{i}"] = b.take(48, f"RTMR{i}")
    claims.report_data = b.take(64, "REPORTDATA")
    if q.body_type == 3:
        claims.details["tee_tcb_svn2"] = b.take(16, "TEE_TCB_SVN2")
        claims.measurements["mrservicetd"] = b.take(48, "MRSERVICETD")
    flags = int.from_bytes(td_attributes, "little")
    claims.policy_bits = flags
    claims.debug = bool(flags & 0x1)  # TDATTRIBUTES.TUD.DEBUG


def _cross_check(result: dict[str, Any], claims: Claims) -> None:
    """dcap-qvl parsed the same bytes: its view of the verified body must equal ours."""
    (body,) = result["report"].values()
    primary = "mr_enclave" if claims.technology == "sgx" else "mr_td"
    ours = claims.measurements["mrenclave" if claims.technology == "sgx" else "mrtd"]
    if body.get("report_data") != (claims.report_data or b"").hex() or body.get(primary) != ours.hex():
        raise VerificationError(Reason.MALFORMED, "quote body parsed differently by dcap-qvl", claims=claims)


# dcap-qvl reports every failure as ValueError with a message; map the ones a caller acts on.
_REASONS: tuple[tuple[str, Reason], ...] = (
    ("no matching tcb level", Reason.TCB_NO_MATCH),
    ("revoked", Reason.CERTIFICATE_REVOKED),
    ("revocation list expired", Reason.COLLATERAL_EXPIRED),
    ("crlexpired", Reason.COLLATERAL_EXPIRED),
    ("collateral expired", Reason.COLLATERAL_EXPIRED),
    ("tcbinfo expired", Reason.COLLATERAL_EXPIRED),
    ("in the future", Reason.COLLATERAL_EXPIRED),
    ("identity expired", Reason.COLLATERAL_EXPIRED),
    ("certificate expired", Reason.CERTIFICATE_EXPIRED),
    ("notvalidyet", Reason.CERTIFICATE_NOT_YET_VALID),
    ("isv enclave report signature", Reason.EVIDENCE_SIGNATURE),
    ("qe_report", Reason.EVIDENCE_SIGNATURE),
    ("qe report hash", Reason.EVIDENCE_SIGNATURE),
    ("decode quote", Reason.MALFORMED),
    ("fmspc", Reason.COLLATERAL_INVALID),
    ("tcb info", Reason.COLLATERAL_INVALID),
    ("tcbinfo", Reason.COLLATERAL_INVALID),
    ("qe identity", Reason.COLLATERAL_INVALID),
    ("qe ", Reason.COLLATERAL_INVALID),
    ("unsupported", Reason.UNSUPPORTED),
    ("signature", Reason.CERTIFICATE_SIGNATURE),
    ("issuer", Reason.CERTIFICATE_SIGNATURE),
    ("cert", Reason.CERTIFICATE_SIGNATURE),
)


def _reason_for(message: str) -> Reason:
    lowered = message.lower()
    return next((reason for needle, reason in _REASONS if needle in lowered), Reason.DCAP_FAILED)
