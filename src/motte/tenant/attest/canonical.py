"""The canonical form of evidence: the same bytes for every variant of one report, quote or document
that anyone can make without a signing key. Key a log or a replay check on it, never on the bytes.

What varies without a key, and what the canonical form does about it:

- the ``s`` of an ECDSA signature: ``(r, n - s)`` verifies as well as ``(r, s)``, and genuine
  firmware signs with either, so neither is refused; the canonical form has the low one;
- SEV-SNP: an Azure HCL wrapper (its unsigned header, its runtime data, whose hash the report
  carries): the canonical form is the report alone;
- DCAP: trailing zero padding, and the PCK certificate chain (supporting material: Intel reissues a
  PCK certificate for the same key, and its signatures are malleable too) with the lengths that
  count it: the canonical form is what the attestation key and the PCK key sign, and the keys;
- Nitro: the COSE_Sign1 tag: the canonical form is untagged.

Pure and sans-I/O; raises :class:`VerificationError` for evidence it cannot parse.
"""

from __future__ import annotations

import struct

import cbor2

from motte.tenant.attest import hcl, snp
from motte.tenant.attest.claims import Reason, VerificationError
from motte.tenant.attest.dcap import intel_root_der, parse_quote
from motte.tenant.attest.detect import decode_text, detect_kind
from motte.tenant.attest.nitro import parse_cose_sign1
from motte.tenant.attest.snp_verify import P384_ORDER

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def canonical_evidence(evidence: bytes, kind: str = "auto") -> bytes:
    """The canonical form of ``evidence`` (raw, hex or base64; ``kind`` as for ``verify``)."""
    data = decode_text(evidence)
    if kind == "auto":
        kind = detect_kind(data)
    if kind == "snp":
        return canonical_snp_report(hcl.parse_hcl(data).report if hcl.is_hcl(data) else data)
    if kind in ("tdx", "sgx"):
        return canonical_dcap_quote(data)
    if kind == "nitro":
        return canonical_nitro_document(data)
    raise VerificationError(Reason.UNKNOWN_KIND, f"unknown evidence kind {kind!r}")


def low_s(s: int, order: int) -> int:
    """The one of ``s`` and ``order - s`` that is at most half the group order."""
    return order - s if s > order // 2 else s


def canonical_snp_report(raw: bytes) -> bytes:
    """The 1184-byte report with its signature's s in low form (little-endian, as the report has it)."""
    report = snp.parse_report(raw)
    s = low_s(report.sig_s, P384_ORDER).to_bytes(snp.SIG_COMPONENT_SIZE, "little")
    return raw[: snp.SIG_S_OFFSET] + s + raw[snp.SIG_S_OFFSET + snp.SIG_COMPONENT_SIZE :]


def canonical_dcap_quote(data: bytes, root_der: bytes | None = None) -> bytes:
    """Header and body, the quote signature (s low), the attestation key, the QE report, its
    signature (s low) and the QE authentication data: every length but the last is fixed.
    ``root_der`` replaces the built-in Intel root, as for ``verify_dcap``."""
    quote = parse_quote(data, intel_root_der() if root_der is None else root_der)
    auth = quote.qe_auth_data
    return b"".join((quote.signed, _p256_low_s(quote.signature), quote.attestation_key, quote.qe_report,
                     _p256_low_s(quote.qe_report_signature), struct.pack("<H", len(auth)), auth))


def canonical_nitro_document(data: bytes) -> bytes:
    """The untagged COSE_Sign1 with its ES384 signature's s in low form."""
    protected, payload, signature = parse_cose_sign1(data)
    s = low_s(int.from_bytes(signature[48:], "big"), P384_ORDER)
    return cbor2.dumps([protected, {}, payload, signature[:48] + s.to_bytes(48, "big")])


def _p256_low_s(signature: bytes) -> bytes:
    return signature[:32] + low_s(int.from_bytes(signature[32:], "big"), P256_ORDER).to_bytes(32, "big")
