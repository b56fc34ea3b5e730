"""The canonical form of evidence: every variant anyone can make of one report, quote or document
without a key still verifies (genuine firmware signs with a high s too), and has one canonical form."""

from __future__ import annotations

import base64
from pathlib import Path

import cbor2
import pytest

from motte.tenant.attest import Reason, VerificationError, verify, verify_nitro, verify_snp
from motte.tenant.attest.canonical import P256_ORDER, canonical_evidence, low_s
from motte.tenant.attest.dcap import intel_root_der, parse_quote
from motte.tenant.attest.snp import SIG_S_OFFSET
from motte.tenant.attest.snp_verify import P384_ORDER
from tests.tenant.attest_forge import build_report, der, fake_amd, hcl_report_data, tcb_bytes, wrap_hcl
from tests.tenant.conftest import at

SNP_NOW = at("2025-12-06T00:00:00Z")
DCAP_NOW = at("2025-07-01T00:00:00Z")
NITRO_NOW = at("2024-09-17T20:48:11Z")


def _snp_vector(vectors: Path) -> tuple[bytes, list[bytes]]:
    base = vectors / "snp" / "virtee-sev-milan-v2"
    report = bytes.fromhex((base / "report_milan.hex").read_text().strip())
    return report, [(base / "vcek_milan.der").read_bytes(), (base / "cert_chain_milan").read_bytes()]


def _flip_snp_s(report: bytes) -> bytes:
    s = int.from_bytes(report[SIG_S_OFFSET : SIG_S_OFFSET + 48], "little")
    return report[:SIG_S_OFFSET] + (P384_ORDER - s).to_bytes(48, "little") + report[SIG_S_OFFSET + 48 :]


def test_an_snp_report_with_the_other_s_verifies_and_has_the_same_canonical_form(vectors: Path) -> None:
    report, certs = _snp_vector(vectors)
    flipped = _flip_snp_s(report)
    assert flipped != report
    assert verify_snp(flipped, now=SNP_NOW, certs=certs).verified  # not refused: firmware may sign with either
    assert canonical_evidence(flipped) == canonical_evidence(report) == canonical_evidence(report.hex().encode())
    canonical = canonical_evidence(report)
    s = int.from_bytes(canonical[SIG_S_OFFSET : SIG_S_OFFSET + 48], "little")
    assert s == low_s(s, P384_ORDER) and verify_snp(canonical, now=SNP_NOW, certs=certs).verified


def test_an_hcl_wrapped_report_is_canonically_the_report_alone() -> None:
    tcb = {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    amd = fake_amd("Milan")
    chip = bytes(range(64))
    key, vcek = amd.vek(tcb=tcb, hwid=chip)
    runtime = b'{"keys": []}'
    report = build_report(key, report_data=hcl_report_data(runtime), reported_tcb=tcb_bytes("Milan", tcb),
                          chip_id=chip)
    wrapped = wrap_hcl(report, runtime)
    header_changed = wrapped[:4] + b"\x07" + wrapped[5:]  # the HCL header is not signed
    flipped = wrap_hcl(_flip_snp_s(report), runtime, padding_bytes=32)
    for variant in (wrapped, header_changed, flipped):
        assert verify_snp(variant, now=SNP_NOW, certs=[der(vcek)], trust=amd.trust()).verified
        assert canonical_evidence(variant) == canonical_evidence(report)


def _dcap(vectors: Path) -> tuple[bytes, bytes]:
    base = vectors / "dcap" / "phala-tdx"
    return (base / "tdx_quote").read_bytes(), (base / "tdx_quote_collateral.json").read_bytes()


def _flip_p256_s(data: bytes, signature: bytes) -> bytes:
    at_ = data.index(signature)
    s = int.from_bytes(signature[32:], "big")
    return data[: at_ + 32] + (P256_ORDER - s).to_bytes(32, "big") + data[at_ + 64 :]


def test_dcap_variants_verify_and_have_one_canonical_form(vectors: Path) -> None:
    quote, collateral = _dcap(vectors)
    parsed = parse_quote(quote, intel_root_der())
    assert parsed.padding == 70  # the sample carries trailing zeros
    variants = {
        "no padding": quote[: len(quote) - parsed.padding],
        "more padding": quote + bytes(100),
        "quote signature s": _flip_p256_s(quote, parsed.signature),
        "QE report signature s": _flip_p256_s(quote, parsed.qe_report_signature),
    }
    canonical = canonical_evidence(quote)
    for name, variant in variants.items():
        assert variant != quote
        assert verify(variant, now=DCAP_NOW, collateral=collateral).verified, name
        assert canonical_evidence(variant) == canonical, name
    body_changed = bytearray(quote)
    body_changed[600] ^= 1  # in the report data: another quote (its signature then fails)
    assert canonical_evidence(bytes(body_changed)) != canonical


def test_nitro_variants_have_one_canonical_form(vectors: Path) -> None:
    document = base64.b64decode((vectors / "nitro" / "eternis" / "test_verify_doc.b64").read_text())
    protected, unprotected, payload, signature = cbor2.loads(document)
    s = int.from_bytes(signature[48:], "big")
    flipped = cbor2.dumps([protected, unprotected, payload, signature[:48] + (P384_ORDER - s).to_bytes(48, "big")])
    tagged = cbor2.dumps(cbor2.CBORTag(18, cbor2.loads(document)))
    for variant in (flipped, tagged):
        assert verify_nitro(variant, now=NITRO_NOW).verified
        assert canonical_evidence(variant) == canonical_evidence(document)


def test_evidence_that_cannot_be_parsed_has_no_canonical_form() -> None:
    with pytest.raises(VerificationError) as err:
        canonical_evidence(b"\x00\x01 not evidence")
    assert err.value.reason is Reason.UNKNOWN_KIND
    with pytest.raises(VerificationError):
        canonical_evidence(bytes(1184), "snp")
