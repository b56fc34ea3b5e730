"""AMD SEV-SNP verification: every real vector, then the paths only test-only keys can reach."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from motte.tenant.attest import Reason, VerificationError, verify_snp
from motte.tenant.attest.amd_certs import parse_vek_extensions
from motte.tenant.attest.amd_roots import builtin_amd_trust
from motte.tenant.attest.snp import parse_report, product_from_cpuid, tcb_components
from motte.tenant.attest.snp_verify import verify_vek_certificate
from tests.tenant.attest_forge import (
    NOW,
    build_report,
    der,
    fake_amd,
    hcl_report_data,
    later,
    pem,
    sign_report,
    tcb_bytes,
    wrap_hcl,
)
from tests.tenant.conftest import at


@dataclass(frozen=True)
class SnpVector:
    name: str
    report: str
    certs: tuple[str, ...]
    now: str
    expected: str
    signer: str
    product: str


REAL = [
    SnpVector(
        "virtee-sev-milan-v2",
        "report_milan.hex",
        ("vcek_milan.der", "cert_chain_milan"),
        "2024-01-01T00:00:00Z",
        "expected_report_milan.json",
        "VCEK",
        "Milan",
    ),
    SnpVector(
        "trustee-milan-vcek",
        "test-report.bin",
        ("test-vcek.der",),
        "2024-01-01T00:00:00Z",
        "expected_test-report.json",
        "VCEK",
        "Milan",
    ),
    SnpVector(
        "trustee-milan-vlek",
        "test-vlek-report.bin",
        ("test-vlek.der", "../amd-ca/ask_ark_milan_vlek.pem"),
        "2025-06-01T00:00:00Z",
        "expected_test-vlek-report.json",
        "VLEK",
        "Milan",
    ),
    SnpVector(
        "trustee-genoa-e2e-v3",
        "report_reconstructed.bin",
        ("vcek.der",),
        "2025-07-01T00:00:00Z",
        "expected_report_reconstructed.json",
        "VCEK",
        "Genoa",
    ),
]


def load(vectors: Path, v: SnpVector) -> tuple[bytes, list[bytes]]:
    folder = vectors / "snp" / v.name
    raw = (folder / v.report).read_bytes()
    report = bytes.fromhex(raw.decode().strip()) if v.report.endswith(".hex") else raw
    return report, [(folder / c).read_bytes() for c in v.certs]


@pytest.mark.parametrize("v", REAL, ids=lambda v: v.name)
@pytest.mark.parametrize("when", ["vector", "2025-12-06T00:00:00Z"])
def test_real_reports_verify(vectors: Path, v: SnpVector, when: str) -> None:
    report, certs = load(vectors, v)
    expected = json.loads((vectors / "snp" / v.name / v.expected).read_text())
    claims = verify_snp(report, certs=certs, now=at(v.now if when == "vector" else when))
    assert claims.verified
    assert claims.product == v.product
    assert claims.signing_key == v.signer
    assert claims.version == expected["version"]
    assert claims.measurements["measurement"].hex() == expected["measurement"]
    assert claims.policy_bits == int(expected["policy"], 16)
    assert claims.details["vmpl"] == expected["vmpl"]
    assert claims.details["firmware"] == expected["fw"]
    assert claims.details["reported_tcb"] == bytes.fromhex(expected["reported_tcb"])
    ext = expected["vek_extensions"]
    assert (claims.tcb["bootloader"], claims.tcb["tee"], claims.tcb["snp"], claims.tcb["microcode"]) == (
        ext["blSPL"],
        ext["teeSPL"],
        ext["snpSPL"],
        ext["ucodeSPL"],
    )
    assert claims.debug is False
    if v.signer == "VCEK":
        assert claims.platform_id["chip_id"] == bytes.fromhex(ext["hwID"])
        assert any("hwID equals chip_id" in c for c in claims.checks)
    else:
        assert claims.details["vlek_csp_id"] == "CN=cc-us-east-2.amazonaws.com"


def test_genoa_cpuid_names_the_product(vectors: Path) -> None:
    report, certs = load(vectors, REAL[3])
    parsed = parse_report(report)
    assert parsed.cpuid == (0x19, 0xA0, 2)
    assert product_from_cpuid(0x19, 0xA0) == "Genoa"
    claims = verify_snp(report, certs=certs, now=NOW)
    assert any("CPUID family/model is Genoa" in c for c in claims.checks)


@pytest.mark.parametrize("bad", ["test-vcek-invalid-legacy.der", "test-vcek-invalid-new.der"])
def test_tampered_vceks_fail_the_ask_signature(vectors: Path, bad: str) -> None:
    folder = vectors / "snp" / "trustee-milan-vcek"
    with pytest.raises(VerificationError) as err:
        verify_snp((folder / "test-report.bin").read_bytes(), certs=[(folder / bad).read_bytes()], now=NOW)
    assert err.value.reason is Reason.CERTIFICATE_SIGNATURE
    assert "VCEK is not signed by SEV-Milan" in err.value.message
    assert err.value.claims is not None and not err.value.claims.verified


@pytest.mark.parametrize("bad", ["test-vcek-invalid-legacy.der", "test-vcek-invalid-new.der"])
def test_both_hwid_encodings_parse(vectors: Path, bad: str) -> None:
    cert = x509.load_der_x509_certificate((vectors / "snp" / "trustee-milan-vcek" / bad).read_bytes())
    assert parse_vek_extensions(cert).hwid == bytes(range(64))


def test_vlek_expires(vectors: Path) -> None:
    report, certs = load(vectors, REAL[2])
    verify_snp(report, certs=certs, now=at("2025-12-10T22:14:00Z"))
    with pytest.raises(VerificationError) as err:
        verify_snp(report, certs=certs, now=at("2025-12-11T00:00:00Z"))
    assert err.value.reason is Reason.CERTIFICATE_EXPIRED
    assert err.value.message.startswith("VLEK expired at 2025-12-10T22:14:21")


def test_vcek_not_yet_valid(vectors: Path) -> None:
    report, certs = load(vectors, REAL[0])
    with pytest.raises(VerificationError) as err:
        verify_snp(report, certs=certs, now=at("2023-04-01T00:00:00Z"))
    assert err.value.reason is Reason.CERTIFICATE_NOT_YET_VALID


def test_chain_order_does_not_matter(vectors: Path) -> None:
    report, (vcek, chain) = load(vectors, REAL[0])
    ask, ark = x509.load_pem_x509_certificates(chain)
    for certs in ([vcek, pem(ark) + pem(ask)], [pem(ark), vcek, der(ask)], [vcek]):
        assert verify_snp(report, certs=certs, now=NOW).verified


def test_report_signed_by_another_chip(vectors: Path) -> None:
    report, _ = load(vectors, REAL[0])
    other = (vectors / "snp" / "trustee-milan-vcek" / "test-vcek.der").read_bytes()
    with pytest.raises(VerificationError) as err:
        verify_snp(report, certs=[other], now=NOW)
    assert err.value.reason is Reason.EVIDENCE_SIGNATURE


def test_missing_or_wrong_kind_of_certificate(vectors: Path) -> None:
    report, certs = load(vectors, REAL[0])
    with pytest.raises(VerificationError) as err:
        verify_snp(report, now=NOW)
    assert err.value.reason is Reason.MISSING_CERTIFICATE
    vlek_report, _ = load(vectors, REAL[2])
    with pytest.raises(VerificationError) as err:
        verify_snp(vlek_report, certs=certs, now=NOW)
    assert err.value.reason is Reason.MISSING_CERTIFICATE
    assert "VLEK" in err.value.message


def test_turin_vcek_chain_and_layout(vectors: Path) -> None:
    folder = vectors / "snp" / "virtee-sev-turin-vcek-only"
    chain, ext = verify_vek_certificate(
        (folder / "vcek_turin.der").read_bytes(), certs=[(folder / "cert_chain_turin").read_bytes()], now=NOW
    )
    assert (chain.product, chain.kind) == ("Turin", "VCEK")
    assert ext.struct_version == 1 and ext.product_name == "Turin"
    assert ext.hwid is not None and len(ext.hwid) == 8
    assert 9 in ext.spl and 4 not in ext.spl  # fmcSPL present, spl_4 absent
    assert set(ext.tcb()) == {"fmc", "bootloader", "tee", "snp", "microcode"}
    with pytest.raises(VerificationError) as err:
        verify_vek_certificate((folder / "vcek_turin.der").read_bytes(), now=at("2024-11-01T00:00:00Z"))
    assert err.value.reason is Reason.CERTIFICATE_NOT_YET_VALID


def test_builtin_roots_are_the_pinned_ones() -> None:
    trust = builtin_amd_trust()
    assert set(trust.products) == {"Milan", "Genoa", "Turin"}
    assert all(p.asvk is not None for p in trust.products.values())


def test_turin_tcb_layout_differs() -> None:
    raw = bytes([1, 2, 3, 4, 0, 0, 0, 9])
    assert tcb_components(raw, "Turin") == {"fmc": 1, "bootloader": 2, "tee": 3, "snp": 4, "microcode": 9}
    assert tcb_components(raw, "Milan") == {"bootloader": 1, "tee": 2, "snp": 0, "microcode": 9}


def test_hcl_wrapped_real_report_reaches_the_runtime_data_check(vectors: Path) -> None:
    """The real chain and signature verify through the wrapper; this report binds other data."""
    report, certs = load(vectors, REAL[0])
    with pytest.raises(VerificationError) as err:
        verify_snp(wrap_hcl(report, b'{"keys":[]}'), certs=certs, now=NOW)
    assert err.value.reason is Reason.RUNTIME_DATA_MISMATCH
    assert err.value.claims is not None
    assert any("verifies with the VCEK" in c for c in err.value.claims.checks)


# --- test-only roots: paths no public vector reaches --------------------------------------------
MILAN_TCB = {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
TURIN_TCB = {"fmc": 1, "bootloader": 2, "tee": 0, "snp": 4, "microcode": 9}
CHIP = bytes(range(64))


def forged(product: str = "Milan", **kwargs: object) -> tuple[bytes, bytes]:
    """A report and its VCEK (DER) under the test-only hierarchy for ``product``."""
    fake = fake_amd(product)
    tcb = TURIN_TCB if product == "Turin" else MILAN_TCB
    hwid = CHIP[:8] if product == "Turin" else CHIP
    key, vcek = fake.vek(tcb=tcb, hwid=hwid)
    chip = hwid + bytes(64 - len(hwid))
    options: dict[str, object] = {"reported_tcb": tcb_bytes(product, tcb), "chip_id": chip}
    options.update(kwargs)
    return build_report(key, **options), der(vcek)  # type: ignore[arg-type]


def test_test_roots_are_refused_by_default() -> None:
    report, vcek = forged()
    fake = fake_amd("Milan")
    with pytest.raises(VerificationError) as err:
        verify_snp(report, certs=[vcek], now=NOW)
    assert err.value.reason is Reason.CERTIFICATE_SIGNATURE
    with pytest.raises(VerificationError) as err:
        verify_snp(report, certs=[vcek, der(fake.ask)], now=NOW)
    assert err.value.reason is Reason.CERTIFICATE_SIGNATURE
    with pytest.raises(VerificationError) as err:
        verify_snp(report, certs=[vcek, der(fake.ask), der(fake.ark)], now=NOW)
    assert err.value.reason is Reason.UNTRUSTED_ROOT
    assert verify_snp(report, certs=[vcek], now=NOW, trust=fake.trust()).verified


def test_turin_report_uses_turin_tcb_layout() -> None:
    report, vcek = forged("Turin", version=3, cpuid=(0x1A, 0x02, 1))
    claims = verify_snp(report, certs=[vcek], now=NOW, trust=fake_amd("Turin").trust())
    assert claims.product == "Turin"
    assert {k: claims.tcb[k] for k in TURIN_TCB} == TURIN_TCB
    assert any("hwID equals chip_id (8 bytes)" in c for c in claims.checks)


def test_v5_report_mitigation_vectors() -> None:
    report, vcek = forged(version=5, cpuid=(0x19, 0x01, 1), mit_vectors=(0x5, 0x7))
    claims = verify_snp(report, certs=[vcek], now=NOW, trust=fake_amd("Milan").trust())
    assert claims.version == 5
    assert (claims.details["launch_mit_vector"], claims.details["current_mit_vector"]) == ("0x5", "0x7")


def test_unknown_later_version_is_parsed_conservatively() -> None:
    report, vcek = forged(version=9, cpuid=(0x19, 0x01, 1))
    claims = verify_snp(report, certs=[vcek], now=NOW, trust=fake_amd("Milan").trust())
    assert claims.verified and "newer than this verifier knows" in str(claims.details["note"])


def test_version_1_is_unsupported() -> None:
    report, vcek = forged(version=1)
    with pytest.raises(VerificationError) as err:
        verify_snp(report, certs=[vcek], now=NOW, trust=fake_amd("Milan").trust())
    assert err.value.reason is Reason.UNSUPPORTED


def test_debug_policy_bit_is_reported() -> None:
    report, vcek = forged(policy=0x30000 | (1 << 19))
    claims = verify_snp(report, certs=[vcek], now=NOW, trust=fake_amd("Milan").trust())
    assert claims.debug is True


def test_policy_bit_17_must_be_set() -> None:
    report, vcek = forged(policy=0x10000)
    with pytest.raises(VerificationError) as err:
        verify_snp(report, certs=[vcek], now=NOW, trust=fake_amd("Milan").trust())
    assert err.value.reason is Reason.MALFORMED and "bit 17" in err.value.message


def test_masked_chip_key_is_refused() -> None:
    report, vcek = forged(mask_chip_key=True)
    with pytest.raises(VerificationError) as err:
        verify_snp(report, certs=[vcek], now=NOW, trust=fake_amd("Milan").trust())
    assert err.value.reason is Reason.UNSUPPORTED


def test_tcb_extension_mismatch() -> None:
    fake = fake_amd("Milan")
    key, vcek = fake.vek(tcb={**MILAN_TCB, "snp": 9}, hwid=CHIP)
    report = build_report(key, reported_tcb=tcb_bytes("Milan", MILAN_TCB), chip_id=CHIP)
    with pytest.raises(VerificationError) as err:
        verify_snp(report, certs=[der(vcek)], now=NOW, trust=fake.trust())
    assert err.value.reason is Reason.TCB_MISMATCH
    assert "snp SPL is 9" in err.value.message


@pytest.mark.parametrize("wrap", [False, True])
def test_hwid_mismatch(wrap: bool) -> None:
    fake = fake_amd("Milan")
    key, vcek = fake.vek(tcb=MILAN_TCB, hwid=bytes(reversed(CHIP)), wrap_hwid=wrap)
    report = build_report(key, reported_tcb=tcb_bytes("Milan", MILAN_TCB), chip_id=CHIP)
    with pytest.raises(VerificationError) as err:
        verify_snp(report, certs=[der(vcek)], now=NOW, trust=fake.trust())
    assert err.value.reason is Reason.CHIP_ID_MISMATCH


def test_cpuid_product_must_match_the_chain() -> None:
    report, vcek = forged(version=3, cpuid=(0x19, 0x11, 1))  # a Genoa CPU, a Milan chain
    with pytest.raises(VerificationError) as err:
        verify_snp(report, certs=[vcek], now=NOW, trust=fake_amd("Milan").trust())
    assert err.value.reason is Reason.PRODUCT_MISMATCH


def test_vlek_under_test_roots() -> None:
    fake = fake_amd("Genoa")
    key, vlek = fake.vek("VLEK", tcb=MILAN_TCB)
    report = build_report(key, signing_key=1, reported_tcb=tcb_bytes("Genoa", MILAN_TCB), chip_id=bytes(64))
    claims = verify_snp(report, certs=[der(vlek)], now=NOW, trust=fake.trust())
    assert claims.signing_key == "VLEK" and claims.product == "Genoa"


class TestCrl:
    def setup_method(self) -> None:
        self.fake = fake_amd("Milan")
        self.report, self.vcek = forged()

    def run(self, crl: bytes) -> None:
        verify_snp(self.report, certs=[self.vcek], crls=[crl], now=NOW, trust=self.fake.trust())

    def test_current_crl_without_our_serials_passes(self) -> None:
        self.run(self.fake.crl([99]))

    def test_revoked_ask(self) -> None:
        with pytest.raises(VerificationError) as err:
            self.run(self.fake.crl([self.fake.ask.serial_number]))
        assert err.value.reason is Reason.CERTIFICATE_REVOKED

    def test_crl_signed_by_someone_else(self) -> None:
        with pytest.raises(VerificationError) as err:
            self.run(self.fake.crl([], signer=self.fake.ask_key))
        assert err.value.reason is Reason.CRL_INVALID

    def test_expired_crl(self) -> None:
        with pytest.raises(VerificationError) as err:
            self.run(self.fake.crl([], next_update=later(-1)))
        assert err.value.reason is Reason.CRL_INVALID and "not current" in err.value.message

    def test_crl_of_another_product_is_skipped(self) -> None:
        genoa = fake_amd("Genoa")
        trust = type(self.fake.trust())({**self.fake.trust().products, **genoa.trust().products})
        claims = verify_snp(self.report, certs=[self.vcek], crls=[genoa.crl([2])], now=NOW, trust=trust)
        assert any("skipped" in c for c in claims.checks)

    def test_garbage_crl(self) -> None:
        with pytest.raises(VerificationError) as err:
            self.run(b"not a crl")
        assert err.value.reason is Reason.CRL_INVALID


class TestHcl:
    runtime = b'{"keys":[{"kid":"HCLAkPub","kty":"RSA"}],"user-data":"00"}'

    def build(self, hash_name: str = "sha256", hash_type: int = 1, padding: int = 0) -> tuple[bytes, bytes]:
        report, vcek = forged(report_data=hcl_report_data(self.runtime, hash_name))
        return wrap_hcl(report, self.runtime, hash_type=hash_type, padding_bytes=padding), vcek

    @pytest.mark.parametrize(("hash_name", "hash_type"), [("sha256", 1), ("sha384", 2), ("sha512", 3)])
    def test_wrapped_report_verifies(self, hash_name: str, hash_type: int) -> None:
        evidence, vcek = self.build(hash_name, hash_type, padding=100)
        claims = verify_snp(evidence, certs=[vcek], now=NOW, trust=fake_amd("Milan").trust())
        assert claims.details["hcl_runtime_data"] == self.runtime.decode()
        assert any("binds the HCL runtime data" in c for c in claims.checks)

    def test_runtime_data_changed(self) -> None:
        evidence, vcek = self.build()
        tampered = evidence.replace(b'"00"', b'"01"')
        with pytest.raises(VerificationError) as err:
            verify_snp(tampered, certs=[vcek], now=NOW, trust=fake_amd("Milan").trust())
        assert err.value.reason is Reason.RUNTIME_DATA_MISMATCH

    def test_bad_hash_type_and_nonzero_padding(self) -> None:
        evidence, vcek = self.build(hash_type=7)
        with pytest.raises(VerificationError) as err:
            verify_snp(evidence, certs=[vcek], now=NOW)
        assert err.value.reason is Reason.MALFORMED
        evidence, vcek = self.build(padding=8)
        with pytest.raises(VerificationError) as err:
            verify_snp(evidence + b"\x01", certs=[vcek], now=NOW)
        assert err.value.reason is Reason.MALFORMED

    def test_non_snp_report_type(self) -> None:
        evidence, vcek = self.build()
        off = 4 + 16 + 12 + 0x4A0 + 8
        tdx = evidence[:off] + struct.pack("<I", 4) + evidence[off + 4 :]
        with pytest.raises(VerificationError) as err:
            verify_snp(tdx, certs=[vcek], now=NOW)
        assert err.value.reason is Reason.UNSUPPORTED


def test_unsigned_signature_area_must_be_zero() -> None:
    report, vcek = forged()
    tampered = bytearray(report)
    tampered[0x400] = 1
    with pytest.raises(VerificationError) as err:
        verify_snp(bytes(tampered), certs=[vcek], now=NOW, trust=fake_amd("Milan").trust())
    assert err.value.reason is Reason.MALFORMED


def test_resigned_report_still_needs_the_right_key() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    report, vcek = forged()
    forged_again = sign_report(report, ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(VerificationError) as err:
        verify_snp(forged_again, certs=[vcek], now=NOW, trust=fake_amd("Milan").trust())
    assert err.value.reason is Reason.EVIDENCE_SIGNATURE


def test_naive_time_is_a_programming_error() -> None:
    from datetime import datetime

    report, vcek = forged()
    with pytest.raises(ValueError):
        verify_snp(report, certs=[vcek], now=datetime(2025, 1, 1))


def test_every_amd_ca_vector_cert_is_built_in(vectors: Path) -> None:
    """The ARKs, ASKs and ASVKs in amd-ca/ (three sources, several orders) are exactly the built-in ones."""
    builtin = {der(c) for p in builtin_amd_trust().products.values() for c in (p.ark, p.ask, p.asvk) if c is not None}
    seen = set()
    for path in sorted((vectors / "snp" / "amd-ca").rglob("*.pem")):
        for cert in x509.load_pem_x509_certificates(path.read_bytes()):
            assert der(cert) in builtin, path
            seen.add(der(cert))
    assert seen == builtin
